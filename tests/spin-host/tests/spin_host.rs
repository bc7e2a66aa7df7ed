//! Integration tests: the built `tollgate-spin-host` running the built probe component
//! (`probe/`, spin-sdk 7). See `common/mod.rs` for the helpers; every wait is bounded.

mod common;

use common::*;
use std::collections::HashSet;
use std::time::{Duration, Instant};

#[test]
fn kv_persists_across_requests_with_fresh_instances() {
    let h = Host::start(&["--key-value-store", "default=memory"]);
    // Every request gets a fresh instance: guest statics start over each time.
    for _ in 0..3 {
        let r = h.get("/instance");
        assert_eq!((r.status, r.text().as_str()), (200, "1"));
    }
    assert_eq!(h.get("/kv?key=greeting").status, 404);
    assert_eq!(h.get("/kv?key=greeting&set=hello%20world").text(), "ok");
    let r = h.get("/kv?key=greeting");
    assert_eq!((r.status, r.text().as_str()), (200, "hello world"));
    assert_eq!(h.get("/kv?key=other&set=x").text(), "ok");
    assert_eq!(h.get("/keys").text(), "greeting,other");
    // wasi:keyvalue batch ops on the same store.
    assert_eq!(
        h.post("/batch").text(),
        "batch:a=1,batch:b=2,batch:missing=<none> exists_after_delete=false"
    );
}

#[test]
fn kv_allow_list_denies_unconfigured_labels() {
    let h = Host::start(&["--key-value-store", "cache=memory"]);
    assert_eq!(h.get("/open?store=cache").text(), "ok");
    assert_eq!(h.get("/wopen?store=cache").text(), "ok");
    // `default` is not implicitly available, and unknown labels are denied.
    for label in ["default", "other"] {
        let r = h.get(&format!("/open?store={label}"));
        assert_eq!(
            (r.status, r.text().as_str()),
            (403, "Error::AccessDenied"),
            "spin:key-value {label}"
        );
        let r = h.get(&format!("/wopen?store={label}"));
        assert_eq!(
            (r.status, r.text().as_str()),
            (403, "Error::AccessDenied"),
            "wasi:keyvalue {label}"
        );
    }
    // Labels are separate stores on the memory backend.
    let h2 = Host::start(&[
        "--key-value-store",
        "a=memory",
        "--key-value-store",
        "b=memory",
    ]);
    assert_eq!(h2.get("/kv?key=k&set=1&store=a").text(), "ok");
    assert_eq!(h2.get("/kv?key=k&store=b").status, 404);
}

#[test]
fn variables_from_flags_and_environment() {
    let h = Host::start_with_env(
        &[
            "--variable",
            "greeting=hello",
            "--variable",
            "both=from-flag",
        ],
        &[
            ("SPIN_VARIABLE_API_TOKEN", "tok-123"),
            ("SPIN_VARIABLE_BOTH", "from-env"),
        ],
    );
    assert_eq!(h.get("/var?name=greeting").text(), "hello");
    assert_eq!(h.get("/var?name=api_token").text(), "tok-123");
    assert_eq!(h.get("/var?name=both").text(), "from-flag");
    let r = h.get("/var?name=missing");
    assert_eq!(r.status, 404);
    assert!(r.text().starts_with("Error::Undefined("), "{}", r.text());
    for bad in ["Greeting", "1abc", "a__b", "a-b", "x_", ""] {
        let r = h.get(&format!("/var?name={}", pct(bad)));
        assert_eq!(r.status, 400, "{bad:?}: {}", r.text());
        assert!(
            r.text().starts_with("Error::InvalidName("),
            "{bad:?}: {}",
            r.text()
        );
    }
}

fn exact_increments(h: &Host, key: &str, n: usize) {
    let addr = h.addr.clone();
    let k = key.to_string();
    let t0 = Instant::now();
    let rs = concurrent(n, move |_| {
        request(&addr, "POST", &format!("/incr?key={k}&by=1"))
    });
    eprintln!("{n} concurrent increments took {:?}", t0.elapsed());
    let mut seen = HashSet::new();
    for r in &rs {
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            seen.insert(r.text().parse::<i64>().unwrap()),
            "duplicate value {}",
            r.text()
        );
    }
    assert_eq!(seen, (1..=n as i64).collect::<HashSet<_>>());
    assert_eq!(
        h.post(&format!("/incr?key={key}&by=0")).text(),
        n.to_string()
    );
}

#[test]
fn increments_are_exact_under_concurrency_memory() {
    let h = Host::start(&["--key-value-store", "default=memory"]);
    exact_increments(&h, "hits", 200);
    // Memory mimics Spin's SQLite store: counter = i64 little-endian, 8 bytes.
    assert_eq!(h.get("/kv?key=hits&hex=1").text(), "c800000000000000");
    assert_eq!(h.post("/incr?key=hits&by=-200").text(), "0");
    // Incrementing a non-counter value is an error, not a crash.
    assert_eq!(h.get("/kv?key=text&set=abc").text(), "ok");
    let r = h.post("/incr?key=text&by=1");
    assert_eq!(r.status, 500);
    assert!(r.text().starts_with("Error::Other("), "{}", r.text());
}

#[test]
fn increments_are_exact_under_concurrency_redis() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url(0);
    let h = Host::start(&["--key-value-store", &format!("default={url}")]);
    exact_increments(&h, "hits", 200);
    // Redis uses INCRBY: the stored value is a decimal string.
    assert_eq!(h.get("/kv?key=hits").text(), "200");
    assert_eq!(h.post("/incr?key=hits&by=-50").text(), "150");
}

#[test]
fn two_hosts_sharing_redis_count_exactly() {
    let Some(redis) = Redis::start() else { return };
    let store = format!("default={}", redis.url(3));
    let a = Host::start(&["--key-value-store", &store]);
    let b = Host::start(&["--key-value-store", &store]);
    let addrs = [a.addr.clone(), b.addr.clone()];
    let rs = concurrent(200, move |i| {
        request(&addrs[i % 2], "POST", "/incr?key=shared&by=3")
    });
    let values: HashSet<i64> = rs
        .iter()
        .map(|r| {
            assert_eq!(r.status, 200, "{}", r.text());
            r.text().parse().unwrap()
        })
        .collect();
    assert_eq!(values, (1..=200).map(|i| i * 3).collect::<HashSet<i64>>());
    assert_eq!(a.post("/incr?key=shared&by=0").text(), "600");
    assert_eq!(b.post("/incr?key=shared&by=0").text(), "600");
    // spin:key-value data is shared too.
    assert_eq!(a.get("/kv?key=cfg&set=v1").text(), "ok");
    assert_eq!(b.get("/kv?key=cfg").text(), "v1");
}

fn cas_counts_exactly(h: &Host, n: usize) -> u32 {
    let addr = h.addr.clone();
    let rs = concurrent(n, move |_| request(&addr, "POST", "/cas?key=casctr"));
    let mut values = HashSet::new();
    let mut retries = 0;
    for r in &rs {
        assert_eq!(r.status, 200, "{}", r.text());
        let t = r.text();
        let (v, attempts) = t.split_once(' ').unwrap();
        assert!(values.insert(v.parse::<i64>().unwrap()), "duplicate {t}");
        retries += attempts.parse::<u32>().unwrap() - 1;
    }
    assert_eq!(values, (1..=n as i64).collect::<HashSet<_>>());
    assert_eq!(h.get("/kv?key=casctr").text(), n.to_string());
    retries
}

#[test]
fn cas_swap_is_exact_memory_and_redis() {
    let h = Host::start(&["--key-value-store", "default=memory"]);
    let retries = cas_counts_exactly(&h, 60);
    eprintln!("memory cas: 60 concurrent increments, {retries} retries");
    drop(h);
    let Some(redis) = Redis::start() else { return };
    let store = format!("default={}", redis.url(1));
    let a = Host::start(&["--key-value-store", &store]);
    let retries = cas_counts_exactly(&a, 60);
    eprintln!("redis cas: 60 concurrent increments, {retries} retries");
}

#[test]
fn outbound_streams_and_post_stream_kv_write_lands() {
    let up = Upstream::start(
        vec!["first;", "second;", "third."],
        Duration::from_millis(200),
    );
    let allowed = format!("http://127.0.0.1:{}", up.port);
    let h = Host::start(&[
        "--key-value-store",
        "default=memory",
        "--allowed-outbound-host",
        &allowed,
    ]);
    let url = format!("http://127.0.0.1:{}/model/x/converse-stream?q=1", up.port);
    let r = h.get(&format!("/proxy?url={}", pct(&url)));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "first;second;third.");
    assert!(
        r.chunks.len() >= 3,
        "expected >= 3 chunks, got {:?}",
        r.chunks
    );
    let first = r.chunks.first().unwrap().0;
    let last = r.chunks.last().unwrap().0;
    eprintln!(
        "chunk arrival: {:?}",
        r.chunks
            .iter()
            .map(|(t, c)| (t.as_millis(), String::from_utf8_lossy(c).into_owned()))
            .collect::<Vec<_>>()
    );
    assert!(
        last - first >= Duration::from_millis(300),
        "body was not streamed: first chunk at {first:?}, last at {last:?}"
    );
    // The spawned task writes the byte count after the stream ended.
    let len = eventually(Duration::from_secs(10), || {
        let r = h.get("/kv?key=last_len");
        (r.status == 200).then(|| r.text())
    });
    assert_eq!(len.as_deref(), Some("19"));
    // The upstream saw one request with the guest's header and a single host header.
    let reqs = up.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let head = reqs[0].to_ascii_lowercase();
    assert!(
        head.starts_with("get /model/x/converse-stream?q=1 http/1.1"),
        "{head}"
    );
    assert!(head.contains("x-probe: 1"), "{head}");
    assert_eq!(head.matches("\nhost: ").count(), 1, "{head}");
    assert!(
        head.contains(&format!("\nhost: 127.0.0.1:{}", up.port)),
        "{head}"
    );
}

#[test]
fn outbound_to_unlisted_host_is_denied() {
    let up = Upstream::start(vec!["nope"], Duration::from_millis(1));
    let other = Upstream::start(vec!["nope"], Duration::from_millis(1));
    let h = Host::start(&[
        "--key-value-store",
        "default=memory",
        "--allowed-outbound-host",
        &format!("http://127.0.0.1:{}", other.port),
    ]);
    for url in [
        format!("http://127.0.0.1:{}/", up.port), // port not listed
        format!("https://127.0.0.1:{}/", other.port), // scheme differs
        format!("http://localhost:{}/", other.port), // host differs
    ] {
        let r = h.get(&format!("/proxy?url={}", pct(&url)));
        assert_eq!(
            (r.status, r.text().as_str()),
            (502, "ErrorCode::HttpRequestDenied"),
            "{url}"
        );
    }
    assert!(up.requests.lock().unwrap().is_empty());
    // No allow-list at all: everything is denied.
    let h2 = Host::start(&[]);
    let r = h2.get(&format!(
        "/proxy?url={}",
        pct(&format!("http://127.0.0.1:{}/", other.port))
    ));
    assert_eq!(r.text(), "ErrorCode::HttpRequestDenied");
    assert!(other.requests.lock().unwrap().is_empty());
}

#[test]
fn outbound_forbidden_host_header() {
    let up = Upstream::start(vec!["ok"], Duration::from_millis(1));
    let allowed = format!("http://127.0.0.1:{}", up.port);
    let h = Host::start(&["--allowed-outbound-host", &allowed]);
    let url = format!("http://127.0.0.1:{}/", up.port);
    let r = h.get(&format!("/proxy?url={}&sethost=evil.example", pct(&url)));
    eprintln!("guest set `host`: {} {}", r.status, r.text());
    // spin-sdk itself refuses a `host` that differs from the URI authority (the request
    // never reaches the host's wasi:http implementation).
    assert_eq!(r.status, 502);
    assert!(
        r.text()
            .contains("Host header does not match URI authority"),
        "{}",
        r.text()
    );
    assert!(up.requests.lock().unwrap().is_empty());
    // A `host` equal to the authority is accepted; the upstream sees exactly one Host.
    let r = h.get(&format!(
        "/proxy?url={}&sethost={}",
        pct(&url),
        pct(&format!("127.0.0.1:{}", up.port))
    ));
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    let reqs = up.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].to_ascii_lowercase().matches("\nhost: ").count(),
        1,
        "{}",
        reqs[0]
    );
}

#[test]
fn incoming_request_looks_like_spin() {
    let h = Host::start(&[]);
    let r = h.get("/headers?x=1");
    let t = r.text();
    assert!(t.contains("spin-full-url: http://127.0.0.1:"), "{t}");
    assert!(t.contains("spin-path-info: /headers"), "{t}");
    assert!(t.contains("spin-matched-route: /..."), "{t}");
    assert!(
        t.contains(&format!("uri: http://{}/headers?x=1", h.addr)),
        "{t}"
    );
    assert_eq!(h.get("/log?msg=hello").text(), "logged");
    assert_eq!(h.get("/nope").status, 404);
}

/// Not a correctness test: prints per-request latency (run with `--ignored --nocapture`).
#[test]
#[ignore]
fn bench_per_request_overhead() {
    let h = Host::start(&["--key-value-store", "default=memory"]);
    for path in ["/instance", "/kv?key=a", "/nope"] {
        let mut lat: Vec<Duration> = (0..300)
            .map(|_| {
                let t = Instant::now();
                let r = h.get(path);
                assert!(r.status == 200 || r.status == 404);
                t.elapsed()
            })
            .collect();
        lat.sort();
        eprintln!(
            "{path}: 300 sequential requests, p50 {:?}, p90 {:?}, p99 {:?}",
            lat[150], lat[270], lat[297]
        );
    }
    let addr = h.addr.clone();
    let t0 = Instant::now();
    let _ = concurrent(200, move |_| request(&addr, "GET", "/instance"));
    eprintln!(
        "200 concurrent /instance requests: {:?} total",
        t0.elapsed()
    );
}

#[test]
fn incoming_tls_like_spin_up_tls_cert() {
    let (ca, cert, key) = make_certs("incoming");
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    // `--tls-cert`/`--tls-key`: HTTPS only, as `spin up` serves it.
    let h = Host::start(&["--tls-cert", cert, "--tls-key", key]);
    let r = https_get(&h.addr, &ca, "/headers").expect("HTTPS request");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(
        r.contains(&format!("spin-full-url: https://{}/headers", h.addr)),
        "{r}"
    );
    assert!(
        !plain_get_raw(&h.addr, "/headers").contains("HTTP/1.1 200"),
        "plain HTTP must not be served on a TLS listener"
    );
    // A client that does not trust the CA is refused.
    let (other_ca, _, _) = make_certs("other");
    assert!(https_get(&h.addr, &other_ca, "/headers").is_err());

    // The test convenience: both on one port.
    let h = Host::start(&["--tls-cert", cert, "--tls-key", key, "--accept-plain-http"]);
    let r = https_get(&h.addr, &ca, "/instance").expect("HTTPS request");
    // Chunked: one chunk holding `1` (a fresh instance).
    assert!(
        r.starts_with("HTTP/1.1 200") && r.contains("\r\n\r\n1\r\n1\r\n0\r\n"),
        "{r}"
    );
    let r = h.get("/headers");
    assert_eq!(r.status, 200);
    assert!(
        r.text()
            .contains(&format!("spin-full-url: http://{}/headers", h.addr)),
        "{}",
        r.text()
    );

    // Half a TLS configuration is an error at start, not a silent HTTP listener.
    for args in [
        vec!["--tls-cert", cert],
        vec!["--tls-key", key],
        vec!["--accept-plain-http"],
    ] {
        let out = std::process::Command::new(host_bin())
            .args(["--component", probe_wasm().to_str().unwrap()])
            .args(["--listen", "127.0.0.1:0"])
            .args(&args)
            .output()
            .expect("run host");
        assert!(!out.status.success(), "{args:?} was accepted");
    }
}
