//! Test helpers: start the built host on the built probe, a minimal blocking HTTP/1.1 client
//! that timestamps body chunks, a chunk-pacing upstream server, and a throw-away redis-server.
//! Every wait is bounded.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

pub fn host_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tollgate-spin-host"))
}

/// `$SPIN_PROBE_WASM`, else `<target dir>/wasm32-wasip2/release/spin_probe.wasm` next to the
/// host binary's target dir.
pub fn probe_wasm() -> PathBuf {
    if let Ok(p) = std::env::var("SPIN_PROBE_WASM") {
        return PathBuf::from(p);
    }
    let bin = host_bin();
    let target = bin.parent().and_then(|p| p.parent()).expect("target dir");
    let wasm = target.join("wasm32-wasip2/release/spin_probe.wasm");
    assert!(
        wasm.exists(),
        "probe component not built: {} is missing.\nBuild it first with\n  \
         CARGO_TARGET_DIR={} cargo build --target wasm32-wasip2 --release \
         --manifest-path tests/spin-host/probe/Cargo.toml\n(or run tests/spin-host/run-tests.sh)",
        wasm.display(),
        target.display()
    );
    wasm
}

/// A running `tollgate-spin-host`; killed on drop.
pub struct Host {
    child: Child,
    pub addr: String,
}

impl Host {
    pub fn start(args: &[&str]) -> Host {
        Host::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Host {
        let wasm = probe_wasm();
        let mut cmd = Command::new(host_bin());
        cmd.arg("--component")
            .arg(&wasm)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn tollgate-spin-host");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let mut r = BufReader::new(stdout);
            let _ = r.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the host never blocks on a full pipe.
            let mut sink = Vec::new();
            let _ = r.read_to_end(&mut sink);
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("host did not print `listening on` within 60 s");
            }
        };
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("unexpected first stdout line {line:?}")
            })
            .to_string();
        Host { child, addr }
    }

    pub fn get(&self, path: &str) -> Resp {
        request(&self.addr, "GET", path)
    }

    pub fn post(&self, path: &str) -> Resp {
        request(&self.addr, "POST", path)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Each body chunk as it was read from the socket, with its arrival time relative to
    /// when the request was sent.
    pub chunks: Vec<(Duration, Vec<u8>)>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One HTTP/1.1 request with `connection: close`; decodes chunked bodies and records when
/// each decoded chunk arrived.
pub fn request(addr: &str, method: &str, path: &str) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    let t0 = Instant::now();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?} for {method} {path}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).expect("header line");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let hdr = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    let mut chunks = Vec::new();
    if hdr("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            line.clear();
            r.read_line(&mut line).expect("chunk size");
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
            if size == 0 {
                break;
            }
            let mut buf = vec![0; size];
            r.read_exact(&mut buf).expect("chunk data");
            chunks.push((t0.elapsed(), buf.clone()));
            body.extend_from_slice(&buf);
            line.clear();
            r.read_line(&mut line).expect("chunk crlf");
        }
    } else if let Some(len) = hdr("content-length").and_then(|v| v.parse::<usize>().ok()) {
        let mut buf = vec![0; len];
        r.read_exact(&mut buf).expect("body");
        chunks.push((t0.elapsed(), buf.clone()));
        body = buf;
    } else {
        r.read_to_end(&mut body).expect("body");
        chunks.push((t0.elapsed(), body.clone()));
    }
    Resp {
        status,
        headers,
        body,
        chunks,
    }
}

/// Poll `f` until it returns `Some`, at most `limit`.
pub fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if t0.elapsed() > limit {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Run `n` requests from `n` threads at once (released together by a barrier).
pub fn concurrent(n: usize, f: impl Fn(usize) -> Resp + Send + Sync + 'static) -> Vec<Resp> {
    let f = Arc::new(f);
    let barrier = Arc::new(std::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let f = f.clone();
            let b = barrier.clone();
            thread::spawn(move || {
                b.wait();
                f(i)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("request thread"))
        .collect()
}

/// Upstream test server: answers every request with `chunks`, `gap` apart, chunked encoding.
/// Records each request head it received.
pub struct Upstream {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    pub fn start(chunks: Vec<&'static str>, gap: Duration) -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let reqs = requests.clone();
        thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut s) = conn else { continue };
                let chunks = chunks.clone();
                let reqs = reqs.clone();
                thread::spawn(move || {
                    s.set_read_timeout(Some(IO_TIMEOUT)).ok();
                    let mut r = BufReader::new(s.try_clone().unwrap());
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push_str(&line);
                    }
                    reqs.lock().unwrap().push(head);
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
                    );
                    for (i, c) in chunks.iter().enumerate() {
                        if i > 0 {
                            thread::sleep(gap);
                        }
                        let _ = write!(s, "{:x}\r\n{c}\r\n", c.len());
                        let _ = s.flush();
                    }
                    let _ = s.write_all(b"0\r\n\r\n");
                    let _ = s.shutdown(Shutdown::Write);
                });
            }
        });
        Upstream { port, requests }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private redis-server on a random port (no persistence); killed on drop.
pub struct Redis {
    child: Child,
    pub port: u16,
    _dir: PathBuf,
}

impl Redis {
    /// `None` (with a message) if `redis-server` is not on PATH.
    pub fn start() -> Option<Redis> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!(
                "SKIPPED: redis-server not on PATH (apt-get install -y redis-server); \
                 redis-backed checks not run"
            );
            return None;
        }
        for _ in 0..5 {
            let port = free_port();
            let dir =
                std::env::temp_dir().join(format!("spin-host-redis-{port}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--dir"])
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            let up = eventually(Duration::from_secs(10), || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
                s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
                s.write_all(b"PING\r\n").ok()?;
                let mut buf = [0u8; 7];
                s.read_exact(&mut buf).ok()?;
                (&buf == b"+PONG\r\n").then_some(())
            });
            if up.is_some() {
                return Some(Redis {
                    child,
                    port,
                    _dir: dir,
                });
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start redis-server");
    }

    pub fn url(&self, db: u8) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

/// A throw-away CA and a server certificate for `localhost` / `127.0.0.1` (the repository's
/// `tests/make-certs.sh`, which needs `openssl`): `(ca.pem, cert.pem, key.pem)`.
pub fn make_certs(name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("spin-host-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../make-certs.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(&dir)
        .output()
        .expect("run tests/make-certs.sh");
    assert!(
        out.status.success(),
        "make-certs.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

/// One HTTPS GET with `connection: close`, trusting only `ca`; the raw response text, or the
/// error that stopped it (handshake refused, no TLS server...).
pub fn https_get(addr: &str, ca: &std::path::Path, path: &str) -> Result<String, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| e.to_string())? {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(IO_TIMEOUT)).ok();
    sock.set_write_timeout(Some(IO_TIMEOUT)).ok();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // A server that closes without close_notify after a complete response.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Sends a plain HTTP/1.1 GET and returns whatever came back before the server closed (or the
/// read timed out); never panics on a refused or garbled exchange.
pub fn plain_get_raw(addr: &str, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    );
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}
