//! Micro-benchmarks of the per-request work `tollgate-core` does for the filter, one path at a
//! time: ns per operation, heap allocations and bytes per operation (a counting allocator).
//!
//! Native:  CARGO_TARGET_DIR=target/bench cargo run --release --manifest-path bench/micro/Cargo.toml
//! Wasm/V8: cargo build --release --target wasm32-wasip1 --manifest-path bench/micro/Cargo.toml
//!          node bench/micro/run-wasm.mjs target/bench/wasm32-wasip1/release/tollgate-bench-micro.wasm
//! An argument filters the cases by substring. Inputs are real emulator traffic (data/).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tollgate_core::accounting::totals::CasTotals;
use tollgate_core::accounting::{pricing, totals};
use tollgate_core::config::Config;
use tollgate_core::exchange::{self, Admission, Effect, Exchange};
use tollgate_core::quota::counters::CasCounters;
use tollgate_core::request::{auth, body as request_body};
use tollgate_core::store::memory::MemoryStore;
use tollgate_core::upstream::signing::{self, SigningKeyCache};
use tollgate_core::Operation;

/// The filter's own stat naming, so the end of an exchange costs what it costs in the filter.
#[allow(dead_code)]
#[path = "../../../filter/src/stats.rs"]
mod stats;

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(l.size() as u64, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(n as u64, Ordering::Relaxed);
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static A: Counting = Counting;

const BODY_1K: &[u8] = include_bytes!("../data/body-converse-1k.json");
const BODY_10K: &[u8] = include_bytes!("../data/body-converse-10k.json");
const BODY_STREAM: &[u8] = include_bytes!("../data/body-stream-64.json");
const RESP_CONVERSE: &[u8] = include_bytes!("../data/response-converse.json");
const RESP_STREAM: &[u8] = include_bytes!("../data/response-stream-64.bin");

/// The emulator's odd chunk sizes, so frames straddle chunks as they do through Envoy.
const CHUNKS: &[usize] = &[1, 7, 13, 64, 3, 29, 2, 101, 5, 17, 256, 11, 4096, 37, 1500, 9, 16_384];

const KEY: &str = "tg-bench-key";
const ALIAS_PATH_1K: &str = "/model/claude-fast/converse";
const ALIAS_PATH_STREAM: &str = "/model/claude-fast/converse-stream";
const MODEL_ID: &str = "us.anthropic.claude-haiku-4-5-20251001-v1:0";

fn config() -> Config {
    let doc = format!(
        r#"{{"region":"us-east-1","upstream_host":"127.0.0.1:9100",
            "aliases":{{"claude-fast":"{MODEL_ID}"}},
            "api_keys":[{{"id":"bench","sha256":"{}","models":["*"]}}],
            "credentials":{{"type":"inline","access_key_id":"AKIDTOLLGATEBENCH","secret_access_key":"tollgate-bench-secret"}}}}"#,
        hex(&auth::hash_key(KEY))
    );
    Config::parse(doc.as_bytes(), &|_| None).expect("config")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The request headers Envoy hands the filter for the driver's request.
fn client_headers(path: &str, len: usize) -> Vec<(String, String)> {
    vec![
        (":authority".into(), "127.0.0.1:10000".into()),
        (":path".into(), path.into()),
        (":method".into(), "POST".into()),
        (":scheme".into(), "http".into()),
        ("content-length".into(), len.to_string()),
        ("authorization".into(), format!("Bearer {KEY}")),
        ("content-type".into(), "application/json".into()),
        ("x-forwarded-proto".into(), "http".into()),
        ("x-request-id".into(), "6f1c9d2e-8f0a-4b7e-9c2d-3a4b5c6d7e8f".into()),
    ]
}

fn admit(cfg: &Config, h: &[(String, String)], path: &str) -> Box<Exchange> {
    let pairs: Vec<(&str, &str)> = h.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    match exchange::admit(cfg, "POST", path, &pairs, 1_790_000_000_000) {
        Admission::Forward(ex) => ex,
        _ => panic!("not admitted"),
    }
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_790_000_000)
}

fn feed_chunks(ex: &mut Exchange, bytes: &[u8]) {
    let mut off = 0;
    let mut i = 0;
    while off < bytes.len() {
        let n = CHUNKS[i % CHUNKS.len()].min(bytes.len() - off);
        black_box(ex.on_response_body(&bytes[off..off + n]));
        off += n;
        i += 1;
    }
}

/// The end of an exchange as the filter's `on_log` executes it (minus host calls): settled,
/// counted, then the log line and the metrics, each stat named as the filter names it.
fn end(cfg: &Config, store: &MemoryStore, ex: &mut Exchange, now_ms: u64) {
    let ending = ex
        .end(cfg, &CasCounters(store), &CasTotals(store), now_ms)
        .expect("record");
    let mut name = String::new();
    for effect in ending.effects() {
        match effect {
            Effect::Record(line) | Effect::Log(_, line) => {
                black_box(line);
            }
            Effect::Metric(update) => {
                stats::write_name(&update, &mut name);
                black_box(&name);
            }
        }
    }
}

/// One whole exchange as the filter drives it (minus host calls): admit, sign, observe the
/// answer, finish, log line, totals, metric updates.
#[allow(clippy::too_many_arguments)]
fn whole(
    cfg: &Config,
    store: &MemoryStore,
    keys: &mut SigningKeyCache,
    body: &[u8],
    path: &str,
    resp: &[u8],
    stream: bool,
) {
    let h = client_headers(path, body.len());
    let mut ex = admit(cfg, &h, path);
    let up = ex
        .upstream_request(cfg, &CasCounters(store), keys, body, now())
        .expect("signed");
    black_box(&up);
    ex.on_response_headers(
        200,
        [(
            "content-type",
            if stream { "application/vnd.amazon.eventstream" } else { "application/json" },
        )],
    );
    if stream {
        feed_chunks(&mut ex, resp);
    } else {
        black_box(ex.on_response_body(resp));
    }
    end(cfg, store, &mut ex, 1_790_000_000_100);
}

fn bench(filter: &str, name: &str, mut f: impl FnMut()) {
    if !name.contains(filter) {
        return;
    }
    // BENCH_ITERS: exactly that many iterations, no warm-up (for instruction counts under
    // valgrind, which timing on a shared machine cannot replace).
    let fixed = std::env::var("BENCH_ITERS").ok().and_then(|n| n.parse::<u64>().ok());
    let iters = match fixed {
        Some(n) => n,
        None => {
            for _ in 0..200 {
                f();
            }
            // About 0.3 s per case, at least 200 iterations.
            let t = Instant::now();
            let mut probe = 0u64;
            while t.elapsed() < Duration::from_millis(30) {
                f();
                probe += 1;
            }
            (probe * 10).max(200)
        }
    };
    let a0 = ALLOCS.load(Ordering::Relaxed);
    let b0 = BYTES.load(Ordering::Relaxed);
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    let ns = t.elapsed().as_nanos() as f64 / iters as f64;
    let allocs = (ALLOCS.load(Ordering::Relaxed) - a0) as f64 / iters as f64;
    let bytes = (BYTES.load(Ordering::Relaxed) - b0) as f64 / iters as f64;
    println!("{name:<44} {:>10.2} µs  {allocs:>8.1} allocs  {bytes:>10.0} B", ns / 1000.0);
}

fn main() {
    let filter = std::env::args().nth(1).unwrap_or_default();
    let cfg = config();
    let store = MemoryStore::default();
    // Kept across requests, as the filter keeps one per VM.
    let mut keys = SigningKeyCache::default();
    totals::ensure(&store, ["bench"]).unwrap();
    let h1k = client_headers(ALIAS_PATH_1K, BODY_1K.len());
    let hstream = client_headers(ALIAS_PATH_STREAM, BODY_STREAM.len());
    println!(
        "{:<44} {:>13} {:>15} {:>12}",
        format!("case ({})", if cfg!(target_arch = "wasm32") { "wasm32-wasip1" } else { "native" }),
        "time/op",
        "allocs/op",
        "bytes/op"
    );

    bench(&filter, "auth::hash_key (SHA-256 of the API key)", || {
        black_box(auth::hash_key(black_box(KEY)));
    });
    bench(&filter, "exchange::admit (route, auth, alias)", || {
        black_box(admit(&cfg, &h1k, ALIAS_PATH_1K));
    });
    bench(&filter, "request_body::output_limit 1 KB (JSON parse)", || {
        let _ = black_box(
            request_body::scan(BODY_1K, Operation::Converse)
                .map(|r| r.output_limit(BODY_1K, MODEL_ID, None)),
        );
    });
    bench(&filter, "request_body::output_limit 10 KB", || {
        let _ = black_box(
            request_body::scan(BODY_10K, Operation::Converse)
                .map(|r| r.output_limit(BODY_10K, MODEL_ID, None)),
        );
    });
    bench(&filter, "pricing::quote", || {
        black_box(pricing::quote("us-east-1", MODEL_ID));
    });
    for (label, body) in [("0 B", &b""[..]), ("1 KB", BODY_1K), ("10 KB", BODY_10K)] {
        bench(&filter, &format!("signing::upstream_auth_headers {label}"), || {
            black_box(
                signing::upstream_auth_headers(
                    &mut keys,
                    &cfg.upstream_auth,
                    "us-east-1",
                    "127.0.0.1:9100",
                    "/model/us.anthropic.claude-haiku-4-5-20251001-v1%3A0/converse",
                    body,
                    now(),
                )
                .unwrap(),
            );
        });
    }
    for (label, body) in [("1 KB", BODY_1K), ("10 KB", BODY_10K)] {
        bench(&filter, &format!("admit + upstream_request {label}"), || {
            let mut ex = admit(&cfg, &h1k, ALIAS_PATH_1K);
            black_box(
                ex.upstream_request(&cfg, &CasCounters(&store), &mut keys, body, now())
                    .unwrap(),
            );
        });
    }
    bench(&filter, "response: converse body (meter)", || {
        let mut ex = admit(&cfg, &h1k, ALIAS_PATH_1K);
        ex.on_response_headers(200, [("content-type", "application/json")]);
        black_box(ex.on_response_body(RESP_CONVERSE));
        black_box(ex.finish(&cfg, &CasCounters(&store), 1));
    });
    bench(&filter, "response: stream 64 events, odd chunks (meter)", || {
        let mut ex = admit(&cfg, &hstream, ALIAS_PATH_STREAM);
        ex.on_response_headers(200, [("content-type", "application/vnd.amazon.eventstream")]);
        feed_chunks(&mut ex, RESP_STREAM);
        black_box(ex.finish(&cfg, &CasCounters(&store), 1));
    });
    bench(&filter, "response: stream 64 events, one chunk (meter)", || {
        let mut ex = admit(&cfg, &hstream, ALIAS_PATH_STREAM);
        ex.on_response_headers(200, [("content-type", "application/vnd.amazon.eventstream")]);
        black_box(ex.on_response_body(RESP_STREAM));
        black_box(ex.finish(&cfg, &CasCounters(&store), 1));
    });
    bench(&filter, "finish + log_line + totals::add + metrics", || {
        let mut ex = admit(&cfg, &h1k, ALIAS_PATH_1K);
        ex.on_response_headers(200, [("content-type", "application/json")]);
        black_box(ex.on_response_body(RESP_CONVERSE));
        end(&cfg, &store, &mut ex, 1);
    });
    bench(&filter, "  of which admit + meter + finish only", || {
        let mut ex = admit(&cfg, &h1k, ALIAS_PATH_1K);
        ex.on_response_headers(200, [("content-type", "application/json")]);
        black_box(ex.on_response_body(RESP_CONVERSE));
        black_box(ex.finish(&cfg, &CasCounters(&store), 1).unwrap());
    });
    bench(&filter, "WHOLE exchange, converse 1 KB", || {
        whole(&cfg, &store, &mut keys, BODY_1K, ALIAS_PATH_1K, RESP_CONVERSE, false)
    });
    bench(&filter, "WHOLE exchange, converse 10 KB", || {
        whole(&cfg, &store, &mut keys, BODY_10K, ALIAS_PATH_1K, RESP_CONVERSE, false)
    });
    bench(&filter, "WHOLE exchange, stream 64 events", || {
        whole(&cfg, &store, &mut keys, BODY_STREAM, ALIAS_PATH_STREAM, RESP_STREAM, true)
    });
}
