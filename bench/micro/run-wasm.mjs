// Runs the wasm32-wasip1 build of the micro-benchmarks under Node's V8 (WASI preview 1).
//   node bench/micro/run-wasm.mjs target/bench/wasm32-wasip1/release/tollgate-bench-micro.wasm [filter]
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";
import { argv } from "node:process";
const wasi = new WASI({ version: "preview1", args: ["micro", ...argv.slice(3)], env: {} });
const module = await WebAssembly.compile(await readFile(argv[2]));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
wasi.start(instance);
