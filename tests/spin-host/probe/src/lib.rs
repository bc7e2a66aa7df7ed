//! Probe component for `tollgate-spin-host`: a spin-sdk 7 HTTP component whose routes
//! exercise every import the host provides. Routes (query strings are
//! percent-decoded; `store` defaults to `default`):
//!
//! * `GET  /kv?key=K[&set=V][&store=L][&hex=1]`  spin:key-value get (404 if absent) or set
//! * `GET  /open?store=L`                spin:key-value open -> `ok` or the error
//! * `GET  /wopen?store=L`               wasi:keyvalue open -> `ok` or the error
//! * `GET  /keys[?store=L]`              spin:key-value get-keys (sorted, comma separated)
//! * `POST /incr?key=K&by=N[&store=L]`   wasi:keyvalue atomics increment -> new value
//! * `POST /cas?key=K[&store=L]`         +1 on a decimal counter with a cas/swap retry loop
//!                                       -> `<new value> <attempts>`
//! * `POST /batch[?store=L]`             set-many/get-many/delete-many round trip
//! * `GET  /var?name=N`                  spin:variables get -> value, or 404/400 + error
//! * `GET  /proxy?url=U[&store=L][&sethost=H]`  outbound GET (optionally with a forbidden
//!                                       `host` header), streams the upstream body back and,
//!                                       after the stream ends (spawned task), writes the
//!                                       byte count to KV key `last_len`
//! * `GET  /log?msg=M`                   println!/eprintln! the message (stdio forwarding)
//! * `GET  /instance`                    requests served by this instance so far (1 = fresh)
//! * `GET  /headers`                     the request headers the component received

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use spin_sdk::experimental::wasi::keyvalue::{atomics, batch, store as wkv};
use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{box_body, BoxBody, FullBody, Request, Response};
use spin_sdk::key_value::Store;

fn reply(status: u16, body: impl Into<String>) -> Response<BoxBody> {
    http::Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(box_body(FullBody::new(Bytes::from(body.into()))))
        .unwrap()
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Self {
        Query(
            q.unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (pct_decode(k), pct_decode(v)),
                    None => (pct_decode(p), String::new()),
                })
                .collect(),
        )
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(kk, _)| kk == k)
            .map(|(_, v)| v.as_str())
    }
}

#[spin_sdk::http_service]
async fn handle(req: Request) -> Response<BoxBody> {
    let path = req.uri().path().to_string();
    let q = Query::parse(req.uri().query());
    let label = q.get("store").unwrap_or("default").to_string();
    let method = req.method().clone();
    let headers = req.headers().clone();
    let uri = req.uri().to_string();
    // Drain the (small) request body so the host sees it consumed.
    let _ = req.into_body().bytes().await;
    match (method.as_str(), path.as_str()) {
        ("GET", "/kv") => kv(&q, &label).await,
        ("GET", "/open") => match Store::open(&label).await {
            Ok(_) => reply(200, "ok"),
            Err(e) => reply(403, format!("{e:?}")),
        },
        ("GET", "/wopen") => match wkv::open(&label) {
            Ok(_) => reply(200, "ok"),
            Err(e) => reply(403, format!("{e:?}")),
        },
        ("GET", "/keys") => match Store::open(&label).await {
            Ok(s) => match s.get_keys().await.collect().await {
                Ok(mut keys) => {
                    keys.sort();
                    reply(200, keys.join(","))
                }
                Err(e) => reply(500, format!("{e:?}")),
            },
            Err(e) => reply(403, format!("{e:?}")),
        },
        ("POST", "/incr") => incr(&q, &label),
        ("POST", "/cas") => cas(&q, &label),
        ("POST", "/batch") => batch_roundtrip(&label),
        ("GET", "/var") => {
            let name = q.get("name").unwrap_or("");
            match spin_sdk::variables::get(name).await {
                Ok(v) => reply(200, v),
                Err(e @ spin_sdk::variables::Error::Undefined(_)) => reply(404, format!("{e:?}")),
                Err(e) => reply(400, format!("{e:?}")),
            }
        }
        ("GET", "/proxy") => proxy(&q, label).await,
        ("GET", "/instance") => {
            static SERVED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = SERVED.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            reply(200, n.to_string())
        }
        ("GET", "/headers") => {
            let mut lines: Vec<String> = headers
                .iter()
                .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("<binary>")))
                .collect();
            lines.sort();
            lines.push(format!("uri: {uri}"));
            reply(200, lines.join("\n"))
        }
        ("GET", "/log") => {
            let msg = q.get("msg").unwrap_or("");
            println!("probe stdout: {msg}");
            eprintln!("probe stderr: {msg}");
            reply(200, "logged")
        }
        _ => reply(404, "no such route"),
    }
}

async fn kv(q: &Query, label: &str) -> Response<BoxBody> {
    let Some(key) = q.get("key") else {
        return reply(400, "key required");
    };
    let store = match Store::open(label).await {
        Ok(s) => s,
        Err(e) => return reply(403, format!("{e:?}")),
    };
    if let Some(v) = q.get("set") {
        return match store.set(key, v.as_bytes()).await {
            Ok(()) => reply(200, "ok"),
            Err(e) => reply(500, format!("{e:?}")),
        };
    }
    match store.get(key).await {
        Ok(Some(v)) if q.get("hex").is_some() => reply(
            200,
            v.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        ),
        Ok(Some(v)) => reply(200, String::from_utf8_lossy(&v).into_owned()),
        Ok(None) => reply(404, "not found"),
        Err(e) => reply(500, format!("{e:?}")),
    }
}

fn incr(q: &Query, label: &str) -> Response<BoxBody> {
    let Some(key) = q.get("key") else {
        return reply(400, "key required");
    };
    let by: i64 = q.get("by").and_then(|s| s.parse().ok()).unwrap_or(1);
    let bucket = match wkv::open(label) {
        Ok(b) => b,
        Err(e) => return reply(403, format!("{e:?}")),
    };
    match atomics::increment(&bucket, key, by) {
        Ok(v) => reply(200, v.to_string()),
        Err(e) => reply(500, format!("{e:?}")),
    }
}

fn cas(q: &Query, label: &str) -> Response<BoxBody> {
    let Some(key) = q.get("key") else {
        return reply(400, "key required");
    };
    let bucket = match wkv::open(label) {
        Ok(b) => b,
        Err(e) => return reply(403, format!("{e:?}")),
    };
    let mut handle = match atomics::Cas::new(&bucket, key) {
        Ok(c) => c,
        Err(e) => return reply(500, format!("{e:?}")),
    };
    for attempt in 1..=10_000u32 {
        let current = match handle.current() {
            Ok(v) => v,
            Err(e) => return reply(500, format!("{e:?}")),
        };
        let n: i64 = current
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let next = n + 1;
        match atomics::swap(handle, next.to_string().as_bytes()) {
            Ok(()) => return reply(200, format!("{next} {attempt}")),
            Err(atomics::CasError::CasFailed(fresh)) => handle = fresh,
            Err(atomics::CasError::StoreError(e)) => return reply(500, format!("{e:?}")),
        }
    }
    reply(500, "cas: too many attempts")
}

fn batch_roundtrip(label: &str) -> Response<BoxBody> {
    let bucket = match wkv::open(label) {
        Ok(b) => b,
        Err(e) => return reply(403, format!("{e:?}")),
    };
    let kvs = vec![
        ("batch:a".to_string(), b"1".to_vec()),
        ("batch:b".to_string(), b"2".to_vec()),
    ];
    if let Err(e) = batch::set_many(&bucket, &kvs) {
        return reply(500, format!("set_many {e:?}"));
    }
    let keys = vec![
        "batch:a".to_string(),
        "batch:b".to_string(),
        "batch:missing".to_string(),
    ];
    let got = match batch::get_many(&bucket, &keys) {
        Ok(g) => g,
        Err(e) => return reply(500, format!("get_many {e:?}")),
    };
    let mut parts: Vec<String> = got
        .into_iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={}", String::from_utf8_lossy(&v)),
            None => format!("{k}=<none>"),
        })
        .collect();
    parts.sort();
    if let Err(e) = batch::delete_many(&bucket, &keys[..2]) {
        return reply(500, format!("delete_many {e:?}"));
    }
    let after = bucket
        .exists("batch:a")
        .map(|b| b.to_string())
        .unwrap_or_else(|e| format!("{e:?}"));
    reply(
        200,
        format!("{} exists_after_delete={after}", parts.join(",")),
    )
}

async fn proxy(q: &Query, label: String) -> Response<BoxBody> {
    let Some(url) = q.get("url") else {
        return reply(400, "url required");
    };
    let mut out = http::Request::get(url).header("x-probe", "1");
    if let Some(h) = q.get("sethost") {
        // `host` is a forbidden header in wasi:http; this shows what the guest gets.
        out = out.header("host", h);
    }
    let out = out.body(spin_sdk::http::EmptyBody::new()).unwrap();
    let resp = match spin_sdk::http::send(out).await {
        Ok(r) => r,
        Err(e) => return reply(502, format!("{e:?}")),
    };
    let status = resp.status();
    let mut upstream = resp.into_body().stream();
    let (mut tx, body) = spin_sdk::http::body::stream::<Bytes>();
    spin_sdk::wasip3::spawn(async move {
        let mut total = 0usize;
        while let Some(chunk) = upstream.next().await {
            match chunk {
                Ok(chunk) => {
                    total += chunk.len();
                    if tx.send(chunk).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    eprintln!("probe: upstream body error {e:?}");
                    break;
                }
            }
        }
        drop(tx); // ends the client response
                  // Post-response work: runs after the client has seen the end of the body.
        if let Ok(store) = Store::open(&label).await {
            let _ = store.set("last_len", total.to_string().as_bytes()).await;
        }
    });
    http::Response::builder()
        .status(status)
        .body(box_body(body))
        .unwrap()
}
