//! `tollgate-bench-driver`: a small HTTP/1.1 load generator for the Tollgate benchmark.
//!
//! Why a driver of our own rather than `wrk`/`oha`: we need time-to-first-byte *and* the
//! arrival time of each AWS EventStream frame of a stream (time to first event, per-event
//! gaps), exact percentiles over every sample (no histogram buckets), and an open-loop mode
//! whose latency counts from the *scheduled* send time (no coordinated omission). With
//! blocking sockets and one thread per connection the timestamps are taken right at the
//! `write`/`read` system calls; there is no async runtime between the socket and the clock.
//!
//! ```text
//! tollgate-bench-driver --target http://127.0.0.1:PORT/model/claude-fast/converse
//!     --header 'authorization: Bearer KEY' [--header ...] --body-file body.json
//!     (--concurrency N | --rate RPS --connections N)
//!     --duration SECONDS [--warmup SECONDS] [--requests MAX] [--stream|--sse --min-frames N]
//!     [--timeout SECONDS] [--json OUT.json]
//! ```
//!
//! Closed loop (`--concurrency N`): N connections, each sends its next request as soon as the
//! previous answer ended. Open loop (`--rate R`): request i is scheduled at start + i/R and
//! sent by whichever of the `--connections` threads is free; its latency counts from the
//! scheduled time, so a gateway that falls behind is charged for the queueing it causes.
//! Every wait is bounded: socket timeouts, `--duration`, `--requests`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

extern "C" {
    fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
}
const PR_SET_TIMERSLACK: i32 = 29;

#[derive(Clone)]
enum Mode {
    Closed { concurrency: usize },
    Rate { rate: f64, connections: usize },
}

#[derive(Clone)]
struct Args {
    addr: SocketAddr,
    host_header: String,
    path: String,
    headers: Vec<String>,
    body: Vec<u8>,
    mode: Mode,
    duration: Duration,
    warmup: Duration,
    max_requests: u64,
    stream: bool,
    /// The stream is server-sent events (a translated route), not AWS EventStream.
    sse: bool,
    min_frames: u64,
    timeout: Duration,
    json: Option<String>,
    label: String,
}

fn usage() -> ! {
    eprintln!(
        "usage: tollgate-bench-driver --target http://HOST:PORT/PATH --body-file F \
         (--concurrency N | --rate RPS [--connections N]) --duration S [--warmup S] \
         [--requests MAX] [--header 'name: value']... [--stream|--sse [--min-frames N]] \
         [--timeout S] [--json OUT] [--label TEXT]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut target = None;
    let mut headers = Vec::new();
    let mut body = None;
    let mut concurrency = None;
    let mut rate = None;
    let mut connections = 64usize;
    let mut duration = 5.0f64;
    let mut warmup = 0.5f64;
    let mut max_requests = u64::MAX;
    let mut stream = false;
    let mut sse = false;
    let mut min_frames = 0u64;
    let mut timeout = 10.0f64;
    let mut json = None;
    let mut label = String::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--target" => target = Some(val()),
            "--header" => headers.push(val()),
            "--body-file" => {
                let p = val();
                body = Some(std::fs::read(&p).unwrap_or_else(|e| {
                    eprintln!("cannot read {p}: {e}");
                    std::process::exit(2)
                }))
            }
            "--body" => body = Some(val().into_bytes()),
            "--concurrency" => concurrency = val().parse().ok(),
            "--rate" => rate = val().parse().ok(),
            "--connections" => connections = val().parse().unwrap_or_else(|_| usage()),
            "--duration" => duration = val().parse().unwrap_or_else(|_| usage()),
            "--warmup" => warmup = val().parse().unwrap_or_else(|_| usage()),
            "--requests" => max_requests = val().parse().unwrap_or_else(|_| usage()),
            "--stream" => stream = true,
            "--sse" => {
                stream = true;
                sse = true
            }
            "--min-frames" => min_frames = val().parse().unwrap_or_else(|_| usage()),
            "--timeout" => timeout = val().parse().unwrap_or_else(|_| usage()),
            "--json" => json = Some(val()),
            "--label" => label = val(),
            _ => usage(),
        }
    }
    let target = target.unwrap_or_else(|| usage());
    let rest = target.strip_prefix("http://").unwrap_or_else(|| usage());
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = hostport
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| usage());
    let mode = match (concurrency, rate) {
        (Some(c), None) if c > 0 => Mode::Closed { concurrency: c },
        (None, Some(r)) if r > 0.0 => Mode::Rate {
            rate: r,
            connections: connections.max(1),
        },
        _ => usage(),
    };
    if !(duration > 0.0 && duration <= 3600.0 && (0.0..=600.0).contains(&warmup)) {
        usage()
    }
    Args {
        addr,
        host_header: hostport.to_string(),
        path: path.to_string(),
        headers,
        body: body.unwrap_or_default(),
        mode,
        duration: Duration::from_secs_f64(duration),
        warmup: Duration::from_secs_f64(warmup),
        max_requests,
        stream,
        sse,
        min_frames,
        timeout: Duration::from_secs_f64(timeout.clamp(0.1, 600.0)),
        json,
        label,
    }
}

fn request_bytes(a: &Args) -> Vec<u8> {
    let mut r = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n",
        a.path,
        a.host_header,
        a.body.len()
    );
    let mut has_ct = false;
    for h in &a.headers {
        if h.to_ascii_lowercase().starts_with("content-type:") {
            has_ct = true;
        }
        r.push_str(h);
        r.push_str("\r\n");
    }
    if !has_ct {
        r.push_str("content-type: application/json\r\n");
    }
    r.push_str("\r\n");
    let mut v = r.into_bytes();
    v.extend_from_slice(&a.body);
    v
}

/// One finished exchange.
struct Outcome {
    status: u16,
    /// From the start (send, or scheduled send) to the first response byte.
    ttfb: Duration,
    /// To the last byte of the body.
    total: Duration,
    /// Streams: to the first complete EventStream frame, and to the last.
    first_frame: Option<Duration>,
    last_frame: Option<Duration>,
    frames: u64,
    exceptions: u64,
    body_bytes: u64,
    request_id: bool,
    keep_alive: bool,
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// Counts AWS EventStream frames (or server-sent events) in a byte stream as they complete.
struct Frames {
    sse: bool,
    pending: Vec<u8>,
    frames: u64,
    exceptions: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Frames {
    fn new(sse: bool) -> Self {
        Frames {
            sse,
            pending: Vec::new(),
            frames: 0,
            exceptions: 0,
            first: None,
            last: None,
        }
    }
    fn feed(&mut self, data: &[u8], now: Instant) -> Result<(), String> {
        self.pending.extend_from_slice(data);
        if self.sse {
            // One event per blank line; OpenAI's `data: {"error"` and Anthropic's `event: error`
            // are the stream's exception.
            let mut off = 0;
            while let Some(end) = find(&self.pending[off..], b"\n\n") {
                let event = &self.pending[off..off + end];
                if event.starts_with(b"data: {\"error\"") || event.starts_with(b"event: error") {
                    self.exceptions += 1;
                }
                self.frames += 1;
                self.first.get_or_insert(now);
                self.last = Some(now);
                off += end + 2;
            }
            self.pending.drain(..off);
            return Ok(());
        }
        let mut off = 0;
        while self.pending.len() - off >= 12 {
            let p = &self.pending[off..];
            let total = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
            let hlen = u32::from_be_bytes([p[4], p[5], p[6], p[7]]) as usize;
            if !(16..=16 << 20).contains(&total) || hlen + 16 > total {
                return Err(format!("bad EventStream frame (length {total})"));
            }
            if p.len() < total {
                break;
            }
            // Headers: name_len u8, name, type u8 (7 = string), value_len u16, value.
            let mut h = &p[12..12 + hlen];
            while h.len() >= 4 {
                let nl = h[0] as usize;
                if h.len() < 1 + nl + 1 {
                    break;
                }
                let name = &h[1..1 + nl];
                let ty = h[1 + nl];
                let rest = &h[2 + nl..];
                if ty != 7 || rest.len() < 2 {
                    break;
                }
                let vl = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                if rest.len() < 2 + vl {
                    break;
                }
                if name == b":message-type" && &rest[2..2 + vl] == b"exception" {
                    self.exceptions += 1;
                }
                h = &rest[2 + vl..];
            }
            self.frames += 1;
            self.first.get_or_insert(now);
            self.last = Some(now);
            off += total;
        }
        self.pending.drain(..off);
        Ok(())
    }
}

enum BodyMode {
    Length(u64),
    Chunked,
    UntilClose,
}

struct Conn {
    sock: TcpStream,
    buf: Vec<u8>,
}

fn connect(a: &Args) -> Result<Conn, String> {
    let sock = TcpStream::connect_timeout(&a.addr, a.timeout).map_err(|e| format!("connect: {e}"))?;
    let _ = sock.set_nodelay(true);
    let _ = sock.set_read_timeout(Some(a.timeout));
    let _ = sock.set_write_timeout(Some(a.timeout));
    Ok(Conn {
        sock,
        buf: vec![0u8; 256 * 1024],
    })
}

/// Sends one request on `conn` (opening it if needed) and reads the whole answer. Times count
/// from `origin`.
fn exchange(
    a: &Args,
    conn: &mut Option<Conn>,
    req: &[u8],
    origin: Instant,
) -> Result<Outcome, String> {
    for attempt in 0..2 {
        let reused = conn.is_some();
        if conn.is_none() {
            *conn = Some(connect(a)?);
        }
        let c = conn.as_mut().unwrap();
        match one(a, c, req, origin) {
            Ok(o) => {
                if !o.keep_alive {
                    *conn = None;
                }
                return Ok(o);
            }
            // A kept-alive connection the server closed meanwhile: retry once on a new one.
            Err((e, nothing_read)) => {
                *conn = None;
                if !(reused && nothing_read && attempt == 0) {
                    return Err(e);
                }
            }
        }
    }
    Err("unreachable".into())
}

fn one(a: &Args, c: &mut Conn, req: &[u8], origin: Instant) -> Result<Outcome, (String, bool)> {
    c.sock
        .write_all(req)
        .map_err(|e| (format!("write: {e}"), true))?;
    let mut head: Vec<u8> = Vec::with_capacity(1024);
    let mut ttfb = None;
    let head_end = loop {
        let n = c
            .sock
            .read(&mut c.buf)
            .map_err(|e| (format!("read: {e}"), head.is_empty()))?;
        if n == 0 {
            return Err(("connection closed before a response".into(), head.is_empty()));
        }
        ttfb.get_or_insert_with(Instant::now);
        head.extend_from_slice(&c.buf[..n]);
        if let Some(p) = find(&head, b"\r\n\r\n") {
            break p;
        }
        if head.len() > 1 << 20 {
            return Err(("response head too large".into(), false));
        }
    };
    let ttfb = ttfb.unwrap();
    let text = String::from_utf8_lossy(&head[..head_end]).into_owned();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| (format!("bad status line {status_line:?}"), false))?;
    let mut mode = BodyMode::UntilClose;
    let mut keep_alive = !status_line.starts_with("HTTP/1.0");
    let mut request_id = false;
    for l in lines {
        let Some((n, v)) = l.split_once(':') else { continue };
        let n = n.trim().to_ascii_lowercase();
        let v = v.trim();
        match n.as_str() {
            "content-length" => {
                if let Ok(len) = v.parse() {
                    if !matches!(mode, BodyMode::Chunked) {
                        mode = BodyMode::Length(len)
                    }
                }
            }
            "transfer-encoding" if v.to_ascii_lowercase().contains("chunked") => {
                mode = BodyMode::Chunked
            }
            "connection" if v.eq_ignore_ascii_case("close") => keep_alive = false,
            "connection" if v.eq_ignore_ascii_case("keep-alive") => keep_alive = true,
            "x-amzn-requestid" | "x-amzn-request-id" => request_id = true,
            _ => {}
        }
    }
    if matches!(mode, BodyMode::UntilClose) {
        keep_alive = false;
    }
    let mut frames = Frames::new(a.sse);
    let mut body_bytes = 0u64;
    let mut sink = |data: &[u8], now: Instant| -> Result<(), (String, bool)> {
        body_bytes += data.len() as u64;
        if a.stream && status == 200 {
            frames.feed(data, now).map_err(|e| (e, false))?;
        }
        Ok(())
    };
    let mut pending: Vec<u8> = head[head_end + 4..].to_vec();
    let mut now = ttfb;
    match mode {
        BodyMode::Length(mut left) => {
            let take = (pending.len() as u64).min(left) as usize;
            sink(&pending[..take], now)?;
            left -= take as u64;
            while left > 0 {
                let n = c.sock.read(&mut c.buf).map_err(|e| (format!("read body: {e}"), false))?;
                if n == 0 {
                    return Err(("connection closed mid-body".into(), false));
                }
                now = Instant::now();
                let take = (n as u64).min(left) as usize;
                sink(&c.buf[..take], now)?;
                left -= take as u64;
            }
        }
        BodyMode::UntilClose => {
            sink(&pending, now)?;
            loop {
                let n = c.sock.read(&mut c.buf).map_err(|e| (format!("read body: {e}"), false))?;
                if n == 0 {
                    break;
                }
                now = Instant::now();
                sink(&c.buf[..n], now)?;
            }
        }
        BodyMode::Chunked => {
            // States: 0 = size line, 1 = data (left), 2 = CRLF after data, 3 = trailers.
            let mut state = 0u8;
            let mut left = 0usize;
            let mut pos = 0usize;
            'outer: loop {
                loop {
                    match state {
                        0 => {
                            let Some(e) = find(&pending[pos..], b"\r\n") else { break };
                            let line = String::from_utf8_lossy(&pending[pos..pos + e]).into_owned();
                            let hex = line.split(';').next().unwrap_or("").trim();
                            let size = usize::from_str_radix(hex, 16)
                                .map_err(|_| (format!("bad chunk size {line:?}"), false))?;
                            pos += e + 2;
                            if size == 0 {
                                state = 3;
                            } else {
                                left = size;
                                state = 1;
                            }
                        }
                        1 => {
                            let avail = pending.len() - pos;
                            if avail == 0 {
                                break;
                            }
                            let take = avail.min(left);
                            sink(&pending[pos..pos + take], now)?;
                            pos += take;
                            left -= take;
                            if left == 0 {
                                state = 2;
                            }
                        }
                        2 => {
                            if pending.len() - pos < 2 {
                                break;
                            }
                            pos += 2;
                            state = 0;
                        }
                        _ => {
                            let Some(e) = find(&pending[pos..], b"\r\n") else { break };
                            pos += e + 2;
                            if e == 0 {
                                break 'outer;
                            }
                        }
                    }
                }
                pending.drain(..pos);
                pos = 0;
                let n = c.sock.read(&mut c.buf).map_err(|e| (format!("read body: {e}"), false))?;
                if n == 0 {
                    return Err(("connection closed mid-chunked-body".into(), false));
                }
                now = Instant::now();
                pending.extend_from_slice(&c.buf[..n]);
            }
        }
    }
    let end = now;
    Ok(Outcome {
        status,
        ttfb: ttfb.saturating_duration_since(origin),
        total: end.saturating_duration_since(origin),
        first_frame: frames.first.map(|t| t.saturating_duration_since(origin)),
        last_frame: frames.last.map(|t| t.saturating_duration_since(origin)),
        frames: frames.frames,
        exceptions: frames.exceptions,
        body_bytes,
        request_id,
        keep_alive,
    })
}

#[derive(Default)]
struct Samples {
    total: Vec<u32>,
    service: Vec<u32>,
    ttfb: Vec<u32>,
    first_frame: Vec<u32>,
    per_event: Vec<f64>,
    frames_min: Option<u64>,
    frames_max: u64,
    ok: u64,
    warmup_ok: u64,
    errors: BTreeMap<String, u64>,
    statuses: BTreeMap<u16, u64>,
    with_request_id: u64,
    body_bytes: u64,
    last_end: Option<Instant>,
}

fn us(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

impl Samples {
    fn add(&mut self, a: &Args, o: Outcome, offset: Duration, in_window: bool, end: Instant) {
        // `offset`: scheduled-to-sent delay (open loop); latencies count from the schedule.
        *self.statuses.entry(o.status).or_default() += 1;
        let good = o.status == 200
            && (!a.stream || (o.frames >= a.min_frames.max(1) && o.exceptions == 0));
        if !good {
            let why = if o.status != 200 {
                format!("status {}", o.status)
            } else if o.exceptions > 0 {
                "stream exception frame".to_string()
            } else {
                format!("stream had {} frames", o.frames)
            };
            *self.errors.entry(why).or_default() += 1;
            return;
        }
        if !in_window {
            self.warmup_ok += 1;
            return;
        }
        self.ok += 1;
        self.body_bytes += o.body_bytes;
        if o.request_id {
            self.with_request_id += 1;
        }
        self.total.push(us(o.total + offset));
        self.service.push(us(o.total));
        self.ttfb.push(us(o.ttfb + offset));
        if let (Some(f), Some(l)) = (o.first_frame, o.last_frame) {
            self.first_frame.push(us(f + offset));
            if o.frames > 1 {
                self.per_event
                    .push((l - f).as_secs_f64() * 1e6 / (o.frames - 1) as f64);
            }
        }
        if a.stream {
            self.frames_min = Some(self.frames_min.map_or(o.frames, |m| m.min(o.frames)));
            self.frames_max = self.frames_max.max(o.frames);
        }
        self.last_end = Some(self.last_end.map_or(end, |e| e.max(end)));
    }
    fn merge(&mut self, o: Samples) {
        self.total.extend(o.total);
        self.service.extend(o.service);
        self.ttfb.extend(o.ttfb);
        self.first_frame.extend(o.first_frame);
        self.per_event.extend(o.per_event);
        self.frames_min = match (self.frames_min, o.frames_min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.frames_max = self.frames_max.max(o.frames_max);
        self.ok += o.ok;
        self.warmup_ok += o.warmup_ok;
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in o.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        self.with_request_id += o.with_request_id;
        self.body_bytes += o.body_bytes;
        self.last_end = match (self.last_end, o.last_end) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

fn pct_json(v: &mut [u32]) -> String {
    if v.is_empty() {
        return "null".into();
    }
    v.sort_unstable();
    let p = |q: f64| v[(((v.len() as f64) * q).ceil() as usize).clamp(1, v.len()) - 1];
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    format!(
        "{{\"n\":{},\"min\":{},\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{},\"mean\":{:.1}}}",
        v.len(),
        v[0],
        p(0.50),
        p(0.90),
        p(0.99),
        p(0.999),
        v[v.len() - 1],
        mean
    )
}

fn pct_f_json(v: &mut [f64]) -> String {
    if v.is_empty() {
        return "null".into();
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p = |q: f64| v[(((v.len() as f64) * q).ceil() as usize).clamp(1, v.len()) - 1];
    format!(
        "{{\"n\":{},\"p50\":{:.2},\"p90\":{:.2},\"p99\":{:.2},\"max\":{:.2}}}",
        v.len(),
        p(0.5),
        p(0.9),
        p(0.99),
        v[v.len() - 1]
    )
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn main() {
    let a = Arc::new(parse_args());
    unsafe {
        // Timer slack 1 ns: open-loop sends wake when scheduled, not up to 50 µs late.
        prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0);
    }
    let req = Arc::new(request_bytes(&a));
    let (threads, rate) = match a.mode {
        Mode::Closed { concurrency } => (concurrency, None),
        Mode::Rate { rate, connections } => (connections, Some(rate)),
    };
    let start = Instant::now() + Duration::from_millis(20);
    let window_start = start + a.warmup;
    let window_end = window_start + a.duration;
    let issued = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let merged = Arc::new(Mutex::new(Samples::default()));
    let mut handles = Vec::new();
    for _ in 0..threads {
        let (a, req, issued, stop, merged) = (
            a.clone(),
            req.clone(),
            issued.clone(),
            stop.clone(),
            merged.clone(),
        );
        handles.push(std::thread::spawn(move || {
            let mut s = Samples::default();
            let mut conn: Option<Conn> = None;
            let mut consecutive_errors = 0u32;
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let i = issued.fetch_add(1, Ordering::Relaxed);
                if i >= a.max_requests {
                    break;
                }
                let (origin, offset) = match rate {
                    None => {
                        let now = Instant::now();
                        if now < start {
                            std::thread::sleep(start - now);
                        }
                        (Instant::now(), Duration::ZERO)
                    }
                    Some(r) => {
                        let sched = start + Duration::from_secs_f64(i as f64 / r);
                        if sched >= window_end {
                            break;
                        }
                        let now = Instant::now();
                        if sched > now {
                            std::thread::sleep(sched - now);
                        }
                        let sent = Instant::now();
                        (sent, sent.saturating_duration_since(sched))
                    }
                };
                let in_window = origin - offset >= window_start && origin - offset < window_end;
                if rate.is_none() && origin >= window_end {
                    break;
                }
                match exchange(&a, &mut conn, &req, origin) {
                    Ok(o) => {
                        consecutive_errors = 0;
                        let end = origin + o.total;
                        s.add(&a, o, offset, in_window, end);
                    }
                    Err(e) => {
                        let key = e.split(" (os error").next().unwrap_or(&e).to_string();
                        *s.errors.entry(key).or_default() += 1;
                        consecutive_errors += 1;
                        if consecutive_errors >= 50 {
                            // Nothing is answering: stop this run rather than spin.
                            stop.store(true, Ordering::Relaxed);
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            merged.lock().unwrap().merge(s);
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    let mut s = std::mem::take(&mut *merged.lock().unwrap());
    let elapsed = s
        .last_end
        .map(|e| e.saturating_duration_since(window_start))
        .unwrap_or(a.duration)
        .max(a.duration.min(Duration::from_millis(1)));
    // Closed loop: requests in the window / window length. Open loop: the window's requests
    // over the time it took to finish them (lower than the offered rate if the target lags).
    let window_s = match rate {
        None => a.duration.as_secs_f64(),
        Some(_) => elapsed.as_secs_f64().max(a.duration.as_secs_f64()),
    };
    let throughput = s.ok as f64 / window_s;
    let errors: Vec<String> = s
        .errors
        .iter()
        .map(|(k, v)| format!("\"{}\":{}", esc(k), v))
        .collect();
    let statuses: Vec<String> = s
        .statuses
        .iter()
        .map(|(k, v)| format!("\"{}\":{}", k, v))
        .collect();
    let (mode, conc, rate_v) = match a.mode {
        Mode::Closed { concurrency } => ("closed", concurrency, 0.0),
        Mode::Rate { rate, connections } => ("rate", connections, rate),
    };
    let error_total: u64 = s.errors.values().sum();
    let out = format!(
        "{{\"label\":\"{}\",\"mode\":\"{}\",\"concurrency\":{},\"offered_rps\":{},\"duration_s\":{:.3},\
         \"ok\":{},\"warmup_ok\":{},\"errors\":{},\"error_kinds\":{{{}}},\"statuses\":{{{}}},\
         \"with_request_id\":{},\"throughput_rps\":{:.1},\"body_bytes\":{},\
         \"frames_min\":{},\"frames_max\":{},\"latency_us\":{},\"service_us\":{},\"ttfb_us\":{},\
         \"first_event_us\":{},\"event_gap_us\":{}}}",
        esc(&a.label),
        mode,
        conc,
        rate_v,
        window_s,
        s.ok,
        s.warmup_ok,
        error_total,
        errors.join(","),
        statuses.join(","),
        s.with_request_id,
        throughput,
        s.body_bytes,
        s.frames_min.map_or("null".into(), |v| v.to_string()),
        s.frames_max,
        pct_json(&mut s.total),
        pct_json(&mut s.service),
        pct_json(&mut s.ttfb),
        pct_json(&mut s.first_frame),
        pct_f_json(&mut s.per_event),
    );
    match &a.json {
        Some(p) => {
            if let Err(e) = std::fs::write(p, &out) {
                eprintln!("cannot write {p}: {e}");
                std::process::exit(1);
            }
        }
        None => println!("{out}"),
    }
    let _ = std::io::stdout().flush();
}
