#!/usr/bin/env python3
"""Where Tollgate's cost inside Envoy goes: an ablation run (not part of `make bench`).

    bench/.venv/bin/python bench/profile.py [--rounds 2] [--perf]

Starts the emulator and, on the gateway core, one Envoy per layer:

  envoy           bare Envoy (no filter)
  noop..shared    bench/ablation's filter: the callbacks and host calls Tollgate makes, layer by
                  layer, without tollgate-core's work (see bench/ablation/src/lib.rs)
  tollgate-nolog  Tollgate with Envoy at log level `warning` (the usage record line is not written)
  tollgate-bearer Tollgate sending a Bedrock API key upstream instead of signing (no SigV4)
  tollgate-quota  Tollgate with a budget, rpm, tpm and concurrency limit on the key (never reached)
  --extra NAME    Tollgate built differently (e.g. at opt-level 3)
  tollgate        Tollgate as shipped

and measures gateway CPU-µs per request (c=16) for the three request kinds and latency at c=1
for 1 KB, in interleaved rounds. With --perf, samples Tollgate's Envoy with `perf` and splits
its CPU between the kernel, Envoy's own code (V8's runtime included) and JIT code (the Wasm).
Writes bench/.work/profile/profile.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402

ABLATION = B.ROOT / "target/bench/wasm32-wasip1/release/tollgate_bench_ablation.wasm"
LAYERS = ["noop", "headers", "buffer", "log", "shared"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--perf", action="store_true")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=WASM",
                    help="also measure Tollgate built differently (e.g. o3=path/to/tollgate_filter.wasm)")
    args = ap.parse_args()
    if not ABLATION.exists():
        subprocess.run(["cargo", "build", "--release", "--quiet", "--target", "wasm32-wasip1",
                        "--manifest-path", str(B.BENCH / "ablation/Cargo.toml")],
                       env={**__import__("os").environ, "CARGO_TARGET_DIR": str(B.ROOT / "target/bench")},
                       check=True, timeout=900)
    wd = B.BENCH / ".work/profile"
    if wd.exists():
        import shutil
        shutil.rmtree(wd)
    wd.mkdir(parents=True)
    qos = B.hold_pm_qos()
    out: dict = {"runs": [], "wasm": str(B.WASM)}
    try:
        bodies = B.write_bodies(wd)
        emu = B.Emulator(wd)
        r = B.Runner(wd, emu, bodies)
        r.quiet_budget_s = 300
        direct = f"/model/{urllib.parse.quote(B.MODEL_ID, safe='')}"
        bearer = f"authorization: Bearer {B.BEDROCK_API_KEY}"
        targets = []
        e = B.Envoy(wd, "envoy", False, emu.port)
        targets.append(B.Target("envoy", e.url, direct, bearer, e.p.pid, "bearer"))
        for layer in LAYERS:
            e = B.Envoy(wd, layer, True, emu.port, wasm=ABLATION, plugin_value=layer)
            targets.append(B.Target(layer, e.url, direct, bearer, e.p.pid, "bearer"))
        e = B.Envoy(wd, "tollgate-nolog", True, emu.port, log_level="warning")
        targets.append(B.Target("tollgate-nolog", e.url, f"/model/{B.ALIAS}",
                                f"authorization: Bearer {B.TOLLGATE_KEY}", e.p.pid, "sigv4"))
        extras = []
        # Tollgate without SigV4: a Bedrock API key upstream instead (the emulator accepts it).
        cfg = B.plugin_config(emu.port)
        cfg["credentials"] = {"type": "bedrock_api_key", "api_key": B.BEDROCK_API_KEY}
        e = B.Envoy(wd, "tollgate-bearer", True, emu.port, plugin_value=json.dumps(cfg))
        targets.append(B.Target("tollgate-bearer", e.url, f"/model/{B.ALIAS}",
                                f"authorization: Bearer {B.TOLLGATE_KEY}", e.p.pid, "bearer"))
        # Tollgate with every quota on the key (limits far above the load): what enforcement costs.
        cfg = B.plugin_config(emu.port)
        cfg["api_keys"][0]["limits"] = {"budget": {"usd": "1000000", "period": "daily"},
                                        "requests_per_minute": 10**12, "tokens_per_minute": 10**15,
                                        "max_concurrent_requests": 10**6}
        e = B.Envoy(wd, "tollgate-quota", True, emu.port, plugin_value=json.dumps(cfg))
        targets.append(B.Target("tollgate-quota", e.url, f"/model/{B.ALIAS}",
                                f"authorization: Bearer {B.TOLLGATE_KEY}", e.p.pid, "sigv4"))
        for spec in args.extra:
            name, path = spec.split("=", 1)
            e = B.Envoy(wd, name, True, emu.port, wasm=Path(path))
            targets.append(B.Target(name, e.url, f"/model/{B.ALIAS}",
                                    f"authorization: Bearer {B.TOLLGATE_KEY}", e.p.pid, "sigv4"))
            extras.append(name)
        tg = B.Envoy(wd, "tollgate", True, emu.port)
        targets.append(B.Target("tollgate", tg.url, f"/model/{B.ALIAS}",
                                f"authorization: Bearer {B.TOLLGATE_KEY}", tg.p.pid, "sigv4"))
        for rnd in range(args.rounds):
            # Rotate the order: this VM has slow phases tens of seconds long.
            k = rnd * len(targets) // max(args.rounds, 1)
            for t in targets[k:] + targets[:k]:
                for m, *_ in B.MIX:
                    r.drive(t, m, concurrency=16, duration=3.0, warmup=0.5, phase=f"c16-r{rnd + 1}")
                r.drive(t, "converse-1k", concurrency=1, duration=1.5, warmup=0.3, phase=f"c1-r{rnd + 1}")
        if args.perf:
            data = wd / "perf.data"
            perf = subprocess.Popen(["perf", "record", "-F", "4000", "-e", "cpu-clock", "-p", str(tg.p.pid),
                                     "-o", str(data), "--", "sleep", "3"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            r.drive(next(t for t in targets if t.name == "tollgate"), "converse-1k", concurrency=16,
                    duration=3.0, warmup=0.2, phase="perf")
            perf.wait(timeout=60)
            rep = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso",
                                  "--stdio"], capture_output=True, text=True, timeout=120).stdout
            out["perf_dso"] = [l.strip() for l in rep.splitlines() if l.strip() and not l.startswith("#")][:12]
        out["runs"] = r.runs
    finally:
        B.stop_all()
        if qos is not None:
            import os
            os.close(qos)

    def med(name, mix, key, phase="c16-"):
        xs = [x[key] if key != "p50" and key != "p99" else x["latency_us"][key]
              for x in out["runs"] if x["target"] == name and x["mix"] == mix and x["phase"].startswith(phase)
              and not x.get("contended")]
        xs = xs or [x[key] if key not in ("p50", "p99") else x["latency_us"][key]
                    for x in out["runs"] if x["target"] == name and x["mix"] == mix and x["phase"].startswith(phase)]
        return statistics.median(xs) if xs else None

    names = ["envoy"] + LAYERS + ["tollgate-nolog"] + [t.name for t in targets if t.name not in
                                                         ["envoy", "tollgate", "tollgate-nolog", *LAYERS]] + ["tollgate"]
    summary = {}
    lines = ["| Envoy with | CPU-µs/req 1 KB | 10 KB | stream 64 | Δ 1 KB vs previous row | c=1 p50 µs | c=1 p99 µs |",
             "|---|---|---|---|---|---|---|"]
    prev = None
    for n in names:
        c1k, c10k, cst = (med(n, m, "cpu_us_per_request") for m in ("converse-1k", "converse-10k", "stream-64"))
        p50, p99 = med(n, "converse-1k", "p50", "c1-"), med(n, "converse-1k", "p99", "c1-")
        summary[n] = {"cpu_us_1k": c1k, "cpu_us_10k": c10k, "cpu_us_stream": cst, "c1_p50_us": p50, "c1_p99_us": p99}
        delta = f"{c1k - prev:+.1f}" if prev is not None and c1k is not None else ""
        lines.append(f"| {n} | {c1k:.1f} | {c10k:.1f} | {cst:.1f} | {delta} | {p50} | {p99} |")
        prev = c1k
    out["summary"] = summary
    (wd / "profile.json").write_text(json.dumps(out, indent=1))
    print("\n".join(lines))
    if "perf_dso" in out:
        print("\nperf, Tollgate's Envoy at c=16, 1 KB, by DSO:\n  " + "\n  ".join(out["perf_dso"]))
    return 0


if __name__ == "__main__":
    import signal
    signal.signal(signal.SIGTERM, lambda *_: (B.stop_all(), sys.exit(143)))
    try:
        sys.exit(main())
    finally:
        B.stop_all()
