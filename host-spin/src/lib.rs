//! Tollgate as a Spin HTTP component (spin-sdk 7, `wasi:http/handler@0.3.0`, Spin >= 4.1):
//! adapts one Spin request to `tollgate_core`, as `filter/` adapts Envoy's callbacks. Every
//! gateway rule lives in core; this crate only moves bytes, headers, time and store calls.
//!
//! Spin runs every request in a fresh instance, so nothing is kept between requests except in
//! the key-value store (label `default`): quota counters and usage totals, all of them atomic
//! increments (see `kv`).

mod admin;
mod credentials;
mod kv;

use std::convert::Infallible;
use std::pin::pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::channel::{mpsc, oneshot};
use futures::future::{select, Either};
use futures::{FutureExt, SinkExt, StreamExt};
use http_body::Frame;
use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{box_body, BoxBody, FullBody, Request, Response};
use spin_sdk::wasip3::http::types::ErrorCode;
use spin_sdk::wasip3::http_compat::{IncomingRequestBody, IncomingResponseBody};
use tollgate_core::accounting::totals::IncrementTotals;
use tollgate_core::admin::keys::{RuntimeKeys, StoredKeys};
use tollgate_core::config::{Config, UpstreamAuth, ENVIRONMENT_NAMES};
use tollgate_core::endpoints;
use tollgate_core::error::{ErrorKind, GatewayError, Reply};
use tollgate_core::exchange::{self, Admission, Callers, Effect, Exchange, Outbound, Verdict};
use tollgate_core::quota::counters::IncrementCounters;
use tollgate_core::quota::settlement::ATTEMPTS_WITHIN_A_REQUEST;
use tollgate_core::quota::{Retried, Unsettled};
use tollgate_core::upstream::request::{is_hop_by_hop, UpstreamRequest};
use tollgate_core::upstream::signing::SigningKeyCache;

use kv::Kv;

/// The Spin variable holding the configuration document (JSON, as for Envoy).
const CONFIG_VARIABLE: &str = "tollgate_config";
/// The key-value store label (`key_value_stores` in spin.toml).
pub(crate) const STORE_LABEL: &str = "default";
/// Response chunks buffered between the upstream and the client before the relay waits.
const RELAY_BUFFER_CHUNKS: usize = 16;
/// Longest the relay waits, once the upstream has ended, for the client to be handed the rest
/// of the response before the exchange is finished anyway (see [`relay`]).
const DELIVERY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// Most request body bytes read and discarded before a refusal is sent (see [`drain`]).
const DRAIN_MAX_BYTES: u64 = 8 << 20;

#[spin_sdk::http_service]
async fn handle(request: Request) -> Response<BoxBody> {
    let (parts, body) = request.into_parts();
    let config = match load_config().await {
        Ok(c) => c,
        Err(why) => {
            // Fail closed, like the filter: every request gets the same 500; the reason (naming
            // the field) goes to the log only.
            log_err(&format!(
                "tollgate: {why}; answering every request with 500"
            ));
            drain(body.stream()).await;
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let pairs: Vec<(&str, &str)> = parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.to_str().unwrap_or("")))
                .collect();
            return reply(&GatewayError::not_configured_reply(path, &pairs));
        }
    };
    // Spin's own `spin-*` request metadata (full URL, client address...) stays here: it is not
    // the client's, and Bedrock has no use for it.
    // Values are decoded with invalid bytes replaced, as in the filter: every name reaches
    // admission; what goes upstream is picked by name from the original bytes (`forward`).
    let mut headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter(|(n, _)| !n.as_str().starts_with("spin-"))
        .map(|(n, v)| {
            (
                n.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    // Envoy gives every request an `x-request-id` (records carry it, Bedrock sees it); so does
    // this component when the client sent none.
    let generated_id = (!headers.iter().any(|(n, _)| n == "x-request-id")).then(new_request_id);
    if let Some(id) = &generated_id {
        headers.push(("x-request-id".to_string(), id.clone()));
    }
    // The client's headers as sent (the allowlist picks from these), for the upstream request.
    let mut original: Vec<(&str, &[u8])> = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    if let Some(id) = &generated_id {
        original.push(("x-request-id", id.as_bytes()));
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    if tollgate_core::admin::is_admin_path(path) {
        return admin::serve(&config, parts.method.as_str(), path, &pairs, body).await;
    }
    // Keys created at runtime live in the store, which only a document with admin keys opens
    // for them: one read per request whose key the document does not hold.
    let kv = (!config.admin_keys.is_empty()).then(|| Kv::open(STORE_LABEL));
    let admitted = {
        let runtime_keys = kv.as_ref().map(StoredKeys);
        let callers = Callers {
            caller: None,
            runtime_keys: runtime_keys.as_ref().map(|k| k as &dyn RuntimeKeys),
        };
        exchange::admit_with(
            &config,
            parts.method.as_str(),
            path,
            &pairs,
            callers,
            now_ms(SystemTime::now()),
        )
    };
    let kv = || kv.unwrap_or_else(|| Kv::open(STORE_LABEL));
    match admitted {
        Admission::Refused { error, dialect, .. } => {
            drain(body.stream()).await;
            reply(&error.to_reply(dialect))
        }
        Admission::Reply(r) => {
            drain(body.stream()).await;
            reply(&r)
        }
        Admission::Usage { key, now_ms } => {
            drain(body.stream()).await;
            let kv = kv();
            reply(&endpoints::usage(
                &IncrementTotals(&kv),
                &IncrementCounters(&kv),
                &key,
                now_ms,
                config.lease,
            ))
        }
        Admission::Forward(ex) => {
            let flight = Flight {
                config,
                ex,
                kv: kv(),
            };
            forward(flight, parts.method.clone(), &pairs, &original, body).await
        }
    }
}

/// Reads the configuration document and the credentials it may name from Spin variables.
/// `AWS_ACCESS_KEY_ID` is variable `aws_access_key_id`, and so on (Spin variable names are
/// lower case).
async fn load_config() -> Result<Config, String> {
    let doc = spin_sdk::variables::get(CONFIG_VARIABLE)
        .await
        .map_err(|e| format!("no configuration: Spin variable `{CONFIG_VARIABLE}`: {e:?}"))?;
    let values = futures::future::join_all(
        ENVIRONMENT_NAMES
            .iter()
            .map(|name| spin_sdk::variables::get(name.to_ascii_lowercase())),
    )
    .await;
    let env: Vec<(&str, String)> = ENVIRONMENT_NAMES
        .iter()
        .zip(values)
        .filter_map(|(name, value)| Some((*name, value.ok()?)))
        .collect();
    let lookup = |name: &str| env.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
    let config = Config::parse(doc.as_bytes(), &lookup).map_err(|e| e.to_string())?;
    if config.upstream_auth == UpstreamAuth::Envoy {
        return Err(tollgate_core::upstream::credentials::envoy_signing_unavailable().to_string());
    }
    Ok(config)
}

/// One admitted exchange and what it needs to end: [`Flight::finish`] runs on every path (the
/// filter's `on_log`), and on drop if a path forgot it.
struct Flight {
    config: Config,
    ex: Box<Exchange>,
    kv: Kv,
}

impl Flight {
    /// Answers the request itself (an error after admission) and ends the exchange.
    fn refuse(mut self, error: &GatewayError) -> Response<BoxBody> {
        let r = error.to_reply(self.ex.dialect);
        self.ex.replied_locally(r.status);
        self.finish();
        reply(&r)
    }

    /// Answers in Bedrock's place once the request was on its way, and ends the exchange:
    /// `reached` says whether Bedrock may have run it (then its estimate is billed).
    fn upstream_failed(mut self, error: &GatewayError, reached: bool) -> Response<BoxBody> {
        let r = error.to_reply(self.ex.dialect);
        self.ex.upstream_failed(r.status, reached);
        self.finish();
        reply(&r)
    }

    /// Ends the exchange (core settles the reservation and adds the usage to the key's
    /// totals), then writes what core returns: the record to stdout, warnings to stderr. A
    /// settlement the store failed is retried by a task of its own ([`settle_later`]).
    fn finish(&mut self) {
        // `None` once it has ended: an exchange ends once, whichever path gets here first.
        let Some(mut ending) = self.ex.end(
            &self.config,
            &IncrementCounters(&self.kv),
            &IncrementTotals(&self.kv),
            now_ms(SystemTime::now()),
        ) else {
            return;
        };
        for effect in ending.effects() {
            match effect {
                Effect::Record(line) => log_out(&line),
                Effect::Log(_, line) => log_err(&line),
                // No metrics on Spin: the records are its usage data.
                Effect::Metric(_) => {}
            }
        }
        if let Some(unsettled) = ending.take_unsettled() {
            spin_sdk::wasip3::spawn(settle_later(unsettled));
        }
    }
}

/// Retries a settlement the store failed, with core's back-off, within the request (the
/// instance lives until its tasks end): bounded, then left to the lease, and logged either way.
async fn settle_later(mut unsettled: Unsettled) {
    let kv = Kv::open(STORE_LABEL);
    loop {
        let wait = unsettled
            .next_at_ms()
            .saturating_sub(now_ms(SystemTime::now()));
        spin_sdk::time::sleep(Duration::from_millis(wait)).await;
        let outcome = unsettled.retry(
            &IncrementCounters(&kv),
            now_ms(SystemTime::now()),
            ATTEMPTS_WITHIN_A_REQUEST,
        );
        if let Some(line) = unsettled.log_line(outcome) {
            log_err(&line);
        }
        if !matches!(outcome, Retried::Again { .. }) {
            return;
        }
    }
}

/// Renews the exchange's lease whenever core says it is due (never returns: the caller races it
/// against what the exchange waits for). Store calls are synchronous: the instance's other
/// tasks wait for the few that a renewal makes, once per half lease.
async fn keep_lease(ex: &mut Exchange, kv: &Kv) -> Infallible {
    loop {
        match ex.renewal_due_in_ms(now_ms(SystemTime::now())) {
            Some(ms) => spin_sdk::time::sleep(Duration::from_millis(ms)).await,
            None => futures::future::pending::<()>().await,
        }
        if let Some(line) = ex.renew(&IncrementCounters(kv), now_ms(SystemTime::now())) {
            log_err(&line);
            // A failed renewal is due again at once: not in a tight loop.
            spin_sdk::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.finish();
    }
}

async fn forward(
    mut flight: Flight,
    method: http::Method,
    client_headers: &[(&str, &str)],
    original_headers: &[(&str, &[u8])],
    body: IncomingRequestBody,
) -> Response<BoxBody> {
    let mut body = body.stream();
    if let Err(e) = flight.ex.check_declared_body_size() {
        if declared_length(client_headers).is_some_and(|n| n <= DRAIN_MAX_BYTES) {
            drain(body).await;
        }
        return flight.refuse(&e);
    }
    let body = match read_body(&mut flight.ex, &mut body).await {
        Ok(b) => b,
        Err(e) => {
            drain(body).await;
            return flight.refuse(&e);
        }
    };
    let fetched = match &flight.config.upstream_auth {
        UpstreamAuth::Fetched(source) => credentials::current(&flight.kv, source).await,
        _ => None,
    };
    let counters = IncrementCounters(&flight.kv);
    // An instance serves one request: a key derived now is not asked for again.
    let keys = &mut SigningKeyCache::default();
    let mut up = match flight.ex.upstream_request_with(
        &flight.config,
        &counters,
        keys,
        &body,
        SystemTime::now(),
        fetched.as_ref(),
    ) {
        Ok(Outbound::Upstream(up)) => up,
        Ok(Outbound::Reply(r)) => {
            flight.finish();
            return reply(&r);
        }
        Err(e) => return flight.refuse(&e),
    };
    if flight.ex.test_trap_after_admission() {
        // The test hook: the instance traps, as a crash does, and nothing settles.
        log_err("tollgate: test hook: trapping the instance after admission");
        std::process::abort();
    }
    // Each attempt, until one answers: a 429, a 5xx or no response moves on to the alias's
    // next target (core's rule), before anything reaches the client.
    let response = loop {
        let url = format!(
            "{}://{}{}",
            flight.config.upstream_scheme, up.authority, up.path
        );
        // The rewritten body (output cap, guardrail) if core made one, else the client's.
        let out = match outbound(&method, &url, &mut up, original_headers, &body) {
            Ok(r) => r,
            Err(e) => return flight.refuse(&e),
        };
        // The lease is renewed while Bedrock works on the answer, however long that takes.
        let sent = {
            let send = pin!(spin_sdk::http::send(out));
            let keep = pin!(keep_lease(&mut flight.ex, &flight.kv));
            match select(send, keep).await {
                Either::Left((sent, _)) => sent,
                Either::Right((never, _)) => match never {},
            }
        };
        let (status, sent) = match sent {
            Ok(r) => (Some(r.status().as_u16()), Ok(r)),
            Err(code) => {
                log_err(&format!(
                    "tollgate: upstream request to {url} failed: {code:?}"
                ));
                (None, Err(code))
            }
        };
        let next = flight.ex.fall_back(
            &flight.config,
            status,
            keys,
            SystemTime::now(),
            fetched.as_ref(),
        );
        match (next, sent) {
            (None, Ok(r)) => break r,
            (None, Err(code)) => {
                return flight.upstream_failed(
                    &GatewayError::new(
                        ErrorKind::UpstreamUnavailable,
                        format!("the gateway could not reach the model endpoint: {code}"),
                    ),
                    may_have_reached_upstream(&code),
                )
            }
            // The failed attempt's answer (if any) is dropped unread: only the last is relayed.
            (Some(Ok(next)), _) => up = next,
            (Some(Err(e)), _) => return flight.refuse(&e),
        }
    };

    let status = response.status();
    let (parts, upstream) = response.into_parts();
    let head = flight.ex.on_response_headers(
        status.as_u16(),
        parts
            .headers
            .iter()
            .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?))),
    );
    let mut to_client = http::Response::builder().status(head.status.unwrap_or(status.as_u16()));
    for (name, value) in &parts.headers {
        // Framing is the host's: the body may change length (budget cut-off, a dialect).
        let name = name.as_str();
        let changed = head.remove.contains(&name) || head.set.iter().any(|(n, _)| *n == name);
        if !is_hop_by_hop(name) && !changed {
            to_client = to_client.header(name, value);
        }
    }
    for (name, value) in &head.set {
        to_client = to_client.header(*name, value.as_str());
    }
    let (tx, rx) = mpsc::channel(RELAY_BUFFER_CHUNKS);
    let (delivered_tx, delivered) = oneshot::channel();
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let body = ClientBody {
        frames: http_body_util::StreamBody::new(rx),
        taken: taken.clone(),
        _delivered: delivered_tx,
    };
    match to_client.body(box_body(body)) {
        Ok(resp) => {
            spin_sdk::wasip3::spawn(relay(flight, upstream, tx, delivered, taken));
            resp
        }
        Err(e) => flight.refuse(&GatewayError::new(
            ErrorKind::Internal,
            format!("could not build the response: {e}"),
        )),
    }
}

/// The outbound request of one attempt: `up`'s path, headers and body (the client's `body`
/// when core made none), with its exact length (the signature covers the body: never chunked).
fn outbound(
    method: &http::Method,
    url: &str,
    up: &mut UpstreamRequest,
    client_headers: &[(&str, &[u8])],
    body: &Bytes,
) -> Result<http::Request<FullBody<Bytes>>, GatewayError> {
    let out_body = up.body.take().map_or_else(|| body.clone(), Bytes::from);
    let mut out = http::Request::builder().method(method.clone()).uri(url);
    for (name, value) in up.headers_from(client_headers.iter().copied()) {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(&value),
        ) {
            out = out.header(n, v);
        }
    }
    out = out.header(http::header::CONTENT_LENGTH, out_body.len());
    out.body(FullBody::new(out_body)).map_err(|e| {
        GatewayError::new(
            ErrorKind::Internal,
            format!("could not build the upstream request: {e}"),
        )
    })
}

type RequestChunks = http_body_util::BodyDataStream<IncomingRequestBody>;

/// Reads the request body, refusing it as soon as it is over the limit.
async fn read_body(ex: &mut Exchange, chunks: &mut RequestChunks) -> Result<Bytes, GatewayError> {
    let mut buf = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| {
            GatewayError::new(
                ErrorKind::BadRequest,
                format!("the request body could not be read: {e}"),
            )
        })?;
        ex.check_body_size((buf.len() + chunk.len()) as u64)?;
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

/// Reads and discards what is left of the request body, up to [`DRAIN_MAX_BYTES`], before a
/// refusal is sent. A reply sent while the client is still uploading is otherwise often lost:
/// the HTTP server (hyper, in Spin) closes a connection whose request was
/// not read, and the unread bytes make the kernel reset it under the client's feet.
pub(crate) async fn drain(mut chunks: RequestChunks) {
    let mut seen = 0u64;
    while let Some(Ok(chunk)) = chunks.next().await {
        seen = seen.saturating_add(chunk.len() as u64);
        if seen > DRAIN_MAX_BYTES {
            break;
        }
    }
}

fn declared_length(headers: &[(&str, &str)]) -> Option<u64> {
    headers
        .iter()
        .find(|(n, _)| *n == "content-length")
        .and_then(|(_, v)| v.trim().parse().ok())
}

type ClientFrame = Result<Frame<Bytes>, std::io::Error>;

/// The client's response body: the relay's frames. The SDK pumps it into Spin from a task of
/// its own and drops it once Spin has taken the end of the body (or the client is gone), which
/// drops `_delivered`: the relay learns the client has everything.
struct ClientBody {
    frames: http_body_util::StreamBody<mpsc::Receiver<ClientFrame>>,
    /// Frames the SDK has taken from the relay.
    taken: std::sync::Arc<std::sync::atomic::AtomicU64>,
    _delivered: oneshot::Sender<()>,
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<ClientFrame>> {
        let this = self.get_mut();
        let frame = std::pin::Pin::new(&mut this.frames).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(_))) = &frame {
            this.taken
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        frame
    }
}

/// Streams the upstream body to the client chunk by chunk, as core decides for each, then
/// ends the exchange: when the upstream ends or fails, or the client goes away. Runs after the
/// handler has returned the response head (a spawned task; the instance lives until it ends).
async fn relay(
    mut flight: Flight,
    upstream: IncomingResponseBody,
    mut client: mpsc::Sender<ClientFrame>,
    delivered: oneshot::Receiver<()>,
    taken: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let mut upstream = upstream.stream();
    let mut upstream_ended = false;
    let mut sent = 0u64;
    loop {
        // The lease is renewed between chunks too, however long Bedrock pauses.
        let next = {
            let keep = pin!(keep_lease(&mut flight.ex, &flight.kv));
            match select(upstream.next(), keep).await {
                Either::Left((next, _)) => next,
                Either::Right((never, _)) => match never {},
            }
        };
        if let Some(line) = flight
            .ex
            .renew(&IncrementCounters(&flight.kv), now_ms(SystemTime::now()))
        {
            log_err(&line);
        }
        let chunk = match next {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                log_err(&format!("tollgate: upstream response body failed: {e:?}"));
                // The client sees the response fail, as with a reset, not a clean end.
                let _ = client
                    .send(Err(std::io::Error::other(format!("upstream: {e}"))))
                    .await;
                break;
            }
            None => {
                upstream_ended = true;
                break;
            }
        };
        let relayed = flight.ex.on_response_body(&chunk);
        let (bytes, last) = match relayed.verdict {
            Verdict::Pass => (chunk.clone(), false),
            Verdict::Replace => (Bytes::from(relayed.bytes.into_owned()), false),
            // The response ends here (a budget cut-off's terminal frame); dropping the
            // upstream body below stops Bedrock.
            Verdict::End { .. } => (Bytes::from(relayed.bytes.into_owned()), true),
        };
        // An empty replacement (a dialect holding bytes back) is no frame at all.
        if !bytes.is_empty() {
            if client.send(Ok(Frame::data(bytes))).await.is_err() {
                break; // the client went away
            }
            sent += 1;
        }
        if last {
            break;
        }
    }
    if upstream_ended && flight.ex.upstream_ended_inside_a_message() {
        // Bedrock's body ended inside a frame: fail the client's response rather than end it
        // cleanly, so its SDK reports an error instead of a short, whole stream.
        log_err("tollgate: the upstream response ended inside an EventStream message");
        // The error ends the response at once, and Spin drops what it has not written yet:
        // first let the SDK take the whole frames sent (bounded, for a client that stopped
        // reading). Best effort: the last of them can still be lost to the client.
        for _ in 0..200 {
            if taken.load(std::sync::atomic::Ordering::Relaxed) >= sent {
                break;
            }
            spin_sdk::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let _ = client
            .send(Err(std::io::Error::other(
                "the upstream response ended inside an EventStream message",
            )))
            .await;
    } else if upstream_ended {
        // The upstream body has ended: what the client's dialect still holds.
        let tail = flight.ex.on_response_end();
        if !tail.is_empty() {
            let _ = client.send(Ok(Frame::data(Bytes::from(tail)))).await;
        }
    }
    // Dropping the upstream body closes its connection if it was not finished (Bedrock stops
    // generating); dropping the sender ends the client's response once the record is written.
    drop(upstream);
    drop(client);
    // The store calls that finish the exchange are synchronous: while they run, no other task
    // of this instance does, the SDK's body pump included, so the client's response would not
    // end before the totals were written (four to five store round trips a scope). Let the pump
    // hand Spin the rest first, as Envoy logs an exchange once the client has it all; bounded,
    // for a client that stops reading but stays connected.
    futures::select! {
        _ = delivered.fuse() => {}
        () = spin_sdk::time::sleep(DELIVERY_WAIT).fuse() => {}
    }
    flight.finish();
}

/// Whether a failed upstream call may have reached Bedrock: not when no connection was made
/// (DNS, refused, TLS, a denied host, an invalid request); otherwise (a reset, a timeout after
/// sending, an incomplete answer, anything unknown) it may have.
fn may_have_reached_upstream(code: &ErrorCode) -> bool {
    !matches!(
        code,
        ErrorCode::DnsTimeout
            | ErrorCode::DnsError(_)
            | ErrorCode::DestinationNotFound
            | ErrorCode::DestinationUnavailable
            | ErrorCode::DestinationIpProhibited
            | ErrorCode::DestinationIpUnroutable
            | ErrorCode::ConnectionRefused
            | ErrorCode::ConnectionTimeout
            | ErrorCode::ConnectionLimitReached
            | ErrorCode::TlsProtocolError
            | ErrorCode::TlsCertificateError
            | ErrorCode::TlsAlertReceived(_)
            | ErrorCode::HttpRequestDenied
            | ErrorCode::HttpRequestLengthRequired
            | ErrorCode::HttpRequestMethodInvalid
            | ErrorCode::HttpRequestUriInvalid
            | ErrorCode::HttpRequestUriTooLong
            | ErrorCode::LoopDetected
            | ErrorCode::ConfigurationError
    )
}

pub(crate) fn reply(r: &Reply) -> Response<BoxBody> {
    let mut b = http::Response::builder().status(r.status);
    for (name, value) in &r.headers {
        b = b.header(*name, value.as_str());
    }
    b.body(box_body(FullBody::new(Bytes::from(r.body.clone()))))
        .unwrap_or_else(|_| {
            let mut fallback = http::Response::new(box_body(FullBody::new(Bytes::new())));
            *fallback.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            fallback
        })
}

/// One line to stdout (usage records). Unlike `println!`, a failed write is ignored rather than
/// a panic: a trap would turn the exchange into a 500 and lose its record.
pub(crate) fn log_out(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// One line to stderr (warnings and errors); failures ignored, as for [`log_out`].
fn log_err(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

pub(crate) fn now_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A random UUID (version 4), as Envoy generates for `x-request-id`. The randomness is the
/// host's per-instance seed (`wasi:random/insecure-seed`, which Rust's std already imports).
fn new_request_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    let state = RandomState::new();
    let hi = state.hash_one(0u8);
    let lo = state.hash_one(1u8);
    let b = ((u128::from(hi) << 64) | u128::from(lo)).to_be_bytes();
    let mut bytes = b;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_random_uuid4() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        for id in [&a, &b] {
            let groups: Vec<_> = id.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
            assert!(id.bytes().all(|c| c == b'-' || c.is_ascii_hexdigit()));
            assert_eq!(&id[14..15], "4", "{id}");
            assert!("89ab".contains(&id[19..20]), "{id}");
        }
    }

    #[test]
    fn failed_upstream_calls_that_may_have_reached_bedrock() {
        for code in [
            ErrorCode::ConnectionTerminated,
            ErrorCode::ConnectionReadTimeout,
            ErrorCode::HttpResponseIncomplete,
            ErrorCode::HttpResponseTimeout,
            ErrorCode::HttpProtocolError,
            ErrorCode::InternalError(None),
        ] {
            assert!(may_have_reached_upstream(&code), "{code:?}");
        }
        for code in [
            ErrorCode::ConnectionRefused,
            ErrorCode::DnsTimeout,
            ErrorCode::ConnectionTimeout,
            ErrorCode::HttpRequestDenied,
            ErrorCode::TlsCertificateError,
        ] {
            assert!(!may_have_reached_upstream(&code), "{code:?}");
        }
    }

    #[test]
    fn declared_length_is_read_leniently() {
        assert_eq!(declared_length(&[("content-length", " 42 ")]), Some(42));
        assert_eq!(declared_length(&[("content-length", "x")]), None);
        assert_eq!(declared_length(&[("content-type", "1")]), None);
    }

    #[test]
    fn replies_keep_status_headers_and_body() {
        let r = GatewayError::new(ErrorKind::BudgetExhausted, "spent")
            .retry_after(5)
            .to_bedrock_reply();
        let resp = reply(&r);
        assert_eq!(resp.status(), 429);
        assert_eq!(
            resp.headers()["x-amzn-errortype"],
            "ServiceQuotaExceededException"
        );
        assert_eq!(resp.headers()["retry-after"], "5");
    }
}
