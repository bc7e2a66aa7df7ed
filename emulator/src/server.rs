//! The HTTP/1.1 server (tokio + hyper 1): Bedrock runtime routes, authentication, directives,
//! streaming, and the `/_emulator/*` control endpoints.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use percent_encoding::percent_decode_str;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::credentials::{self as rotating, Rotation};
use crate::directives::{Directives, Fault};
use crate::families::Family;
use crate::guardrails::GuardrailEcho;
use crate::ledger::{now_ms, Entry, Ledger, Ticket};
use crate::responses::{
    converse_body, encode_event, error_body, invoke_body, invoke_headers, message_id, request_id,
    stream_events, Operation, Plan, StreamContext, StreamEvent,
};
use crate::sigv4_verify::{self, Credentials, VerifyError};

#[path = "credentials_server.rs"]
mod rotating_server;

/// Bedrock's SigV4 signing name (the runtime endpoint signs as `bedrock`).
pub const SIGNING_NAME: &str = "bedrock";

/// Default cap on a request body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// Sizes a stream body is cut into, in turn: odd, so frames straddle chunks and several small
/// frames sometimes share one.
const CHUNK_SIZES: &[usize] = &[
    1, 7, 13, 64, 3, 29, 2, 101, 5, 17, 256, 11, 4096, 37, 1500, 9, 16_384,
];

/// Chunks buffered between a stream's task and the connection: small, so a client that stops
/// reading (or goes away) is noticed promptly.
const STREAM_CHANNEL_CAPACITY: usize = 2;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ResponseBody = BoxBody<Bytes, BoxError>;

/// A body chunk, or the error that aborts the connection mid-body (`[[emu:reset-after]]`).
type BodyItem = Result<Bytes, BoxError>;

/// The connection is aborted mid-body, as an upstream that resets (`[[emu:reset-after]]`).
#[derive(Clone, Copy, Debug)]
pub struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the emulator reset the connection mid-body ([[emu:reset-after]])")
    }
}

impl std::error::Error for Reset {}

/// What the emulator accepts.
#[derive(Clone, Debug)]
pub struct Config {
    pub region: String,
    /// The SigV4 signing name requests must be scoped to (`bedrock`).
    pub service: String,
    pub credentials: Credentials,
    /// A Bedrock API key accepted as `Authorization: Bearer <key>` instead of SigV4.
    pub bearer_token: Option<String>,
    pub max_body_bytes: usize,
    /// One line per model API request on stderr.
    pub log: bool,
    /// Rotating credentials, served on the instance metadata and container paths and accepted
    /// (besides `credentials`) while valid.
    pub rotation: Option<Rotation>,
    /// The `Authorization` value the container credentials paths require, if any.
    pub container_token: Option<String>,
}

impl Config {
    pub fn new(region: impl Into<String>, credentials: Credentials) -> Self {
        Config {
            region: region.into(),
            service: SIGNING_NAME.to_string(),
            credentials,
            bearer_token: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            log: false,
            rotation: None,
            container_token: None,
        }
    }
}

struct State {
    config: Config,
    ledger: Ledger,
    endpoints: rotating_server::Endpoints,
    /// `/_emulator/faults`: the next calls to a model fail.
    faults: std::sync::Mutex<Vec<Scheduled>>,
}

/// A fault scheduled for the next `remaining` calls to `model`.
#[derive(Debug)]
struct Scheduled {
    model: String,
    fault: Fault,
    remaining: u64,
}

impl State {
    /// The scheduled fault of a call to `model_id`, counted.
    fn take_fault(&self, model_id: &str) -> Option<Fault> {
        let model = model_id.to_ascii_lowercase();
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        let i = faults
            .iter()
            .position(|f| f.model == model && f.remaining > 0)?;
        let f = faults.get_mut(i)?;
        f.remaining -= 1;
        Some(f.fault.clone())
    }

    fn clear_faults(&self) {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// The emulator: cheap to clone (shared state).
#[derive(Clone)]
pub struct Emulator {
    state: Arc<State>,
}

/// A running emulator started with [`Emulator::start`].
pub struct Running {
    pub addr: SocketAddr,
    pub emulator: Emulator,
    pub task: JoinHandle<()>,
}

impl Emulator {
    pub fn new(config: Config) -> Self {
        Emulator {
            state: Arc::new(State {
                config,
                ledger: Ledger::new(),
                endpoints: rotating_server::Endpoints::default(),
                faults: std::sync::Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn ledger(&self) -> &Ledger {
        &self.state.ledger
    }

    /// Binds `addr` (port 0 for any) and serves on a spawned task.
    pub async fn start(self, addr: SocketAddr) -> io::Result<Running> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let emulator = self.clone();
        let task = tokio::spawn(self.serve(listener));
        Ok(Running {
            addr,
            emulator,
            task,
        })
    }

    /// Serves connections from `listener` until the task is dropped or the process ends.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and the like: wait a moment rather than spin.
                    eprintln!("tollgate-emulator: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let state = self.state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(state.clone(), req));
                // A `HangUp` from the service closes the connection without an answer.
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}

fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// A non-stream body delivered with faults: one byte at a time `trickle` apart, and/or cut
/// off by a reset after `reset_after` bytes.
fn faulty_body(body: Bytes, trickle: Option<Duration>, reset_after: Option<u64>) -> ResponseBody {
    let (tx, rx) = mpsc::channel::<BodyItem>(STREAM_CHANNEL_CAPACITY);
    tokio::spawn(async move {
        let keep = reset_after.map_or(body.len(), |n| body.len().min(n as usize));
        let step = if trickle.is_some() { 1 } else { keep.max(1) };
        let mut at = 0;
        while at < keep {
            let end = (at + step).min(keep);
            if tx.send(Ok(body.slice(at..end))).await.is_err() {
                return;
            }
            at = end;
            if let Some(d) = trickle {
                tokio::time::sleep(d).await;
            }
        }
        if reset_after.is_some() {
            let _ = tx.send(Err(Box::new(Reset))).await;
        }
    });
    ChannelBody { rx }.boxed()
}

/// Adds `"p":"ppp…"` (`n` bytes of padding) as the first member of a JSON object body.
fn pad_json(body: &[u8], n: usize) -> Vec<u8> {
    match body.split_first() {
        Some((b'{', rest)) => {
            let mut out = Vec::with_capacity(body.len() + n + 8);
            out.extend_from_slice(b"{\"p\":\"");
            out.resize(out.len() + n, b'p');
            out.extend_from_slice(b"\"");
            if rest.first() != Some(&b'}') {
                out.push(b',');
            }
            out.extend_from_slice(rest);
            out
        }
        _ => body.to_vec(),
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response<ResponseBody> {
    let mut r = Response::new(full(value.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// The connection is closed without an answer (`[[emu:hang-up]]`): the service's error,
/// which makes hyper drop the connection.
#[derive(Clone, Copy, Debug)]
pub struct HangUp;

impl std::fmt::Display for HangUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the emulator hung up ([[emu:hang-up]])")
    }
}

impl std::error::Error for HangUp {}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, HangUp> {
    let path = req.uri().path();
    if let Some(rotation) = &state.config.rotation {
        if rotating_server::is_credentials_path(path) {
            return Ok(rotating_server::answer(
                &state.endpoints,
                rotation,
                state.config.container_token.as_deref(),
                &req,
            ));
        }
    }
    if let Some(control) = path.strip_prefix("/_emulator/credentials") {
        return Ok(rotating_server::control(
            &state.endpoints,
            state.config.rotation.as_ref(),
            req.method().as_str(),
            control,
        ));
    }
    if let Some(control) = path.strip_prefix("/_emulator/") {
        return Ok(match (req.method().as_str(), control) {
            ("GET", "health") => json_response(StatusCode::OK, &json!({ "status": "ok" })),
            ("GET", "ledger") => {
                // Serialized straight from the entries, so fields keep their documented order.
                let entries = state.ledger.entries();
                let mut r = Response::new(full(
                    serde_json::to_vec(&entries).unwrap_or_else(|_| b"[]".to_vec()),
                ));
                r.headers_mut().insert(
                    "content-type",
                    hyper::header::HeaderValue::from_static("application/json"),
                );
                r
            }
            ("POST", "reset") => {
                state.ledger.reset();
                state.clear_faults();
                json_response(StatusCode::OK, &json!({ "status": "reset" }))
            }
            ("DELETE", "faults") => {
                state.clear_faults();
                json_response(StatusCode::OK, &json!({ "status": "cleared" }))
            }
            ("POST", "faults") => schedule_fault(&state, req).await,
            _ => json_response(
                StatusCode::NOT_FOUND,
                &json!({ "message": "unknown emulator control endpoint" }),
            ),
        });
    }
    let response = api(state, req).await;
    if response.extensions().get::<HangUp>().is_some() {
        return Err(HangUp);
    }
    Ok(response)
}

/// `POST /_emulator/faults` `{"model": ID, "fault": "throttle" | "503" | "reset" |
/// "reset-after-N", "times": N}`: the next N calls to that model fail so.
async fn schedule_fault(state: &State, req: Request<Incoming>) -> Response<ResponseBody> {
    let bad = |why: &str| json_response(StatusCode::BAD_REQUEST, &json!({ "message": why }));
    let Ok(body) = Limited::new(req.into_body(), 64 * 1024).collect().await else {
        return bad("unreadable body");
    };
    let Ok(v) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
        return bad("the body must be JSON");
    };
    let model = v.get("model").and_then(Value::as_str).unwrap_or("");
    let fault = v
        .get("fault")
        .and_then(Value::as_str)
        .and_then(Fault::parse);
    let times = v.get("times").and_then(Value::as_u64).unwrap_or(1);
    let Some(fault) = fault.filter(|_| !model.is_empty()) else {
        return bad("needs a model and a fault: throttle, 500..599, reset, reset-after-N");
    };
    state
        .faults
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Scheduled {
            model: model.to_ascii_lowercase(),
            fault,
            remaining: times,
        });
    json_response(StatusCode::OK, &json!({ "status": "scheduled" }))
}

/// An answer that is not a stream: status, error (type and message) or body, extra headers.
struct Answer {
    status: u16,
    error: Option<(String, String)>,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
    /// Instead of `application/json` (`[[emu:content-type]]`).
    content_type: Option<String>,
}

impl Answer {
    fn error(status: u16, error_type: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Answer {
            status,
            body: error_body(&message),
            error: Some((error_type.to_string(), message)),
            headers: vec![],
            content_type: None,
        }
    }
}

fn build_response(answer: &Answer, request_id: &str) -> Response<ResponseBody> {
    let mut r = Response::new(full(answer.body.clone()));
    *r.status_mut() =
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = r.headers_mut();
    let mut add = |name: &'static str, value: &str| {
        if let Ok(v) = hyper::header::HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    add(
        "content-type",
        answer.content_type.as_deref().unwrap_or("application/json"),
    );
    add("x-amzn-requestid", request_id);
    if let Some((error_type, _)) = &answer.error {
        add("x-amzn-errortype", error_type);
    }
    for (name, value) in &answer.headers {
        add(name, value);
    }
    r
}

/// `/model/{modelId}/{operation}` → (raw label, operation). The label must be one segment.
fn parse_route(method: &str, path: &str) -> (Option<String>, Option<Operation>) {
    let Some(rest) = path.strip_prefix("/model/") else {
        return (None, None);
    };
    let Some((label, segment)) = rest.split_once('/') else {
        return (None, None);
    };
    if label.is_empty() {
        return (None, None);
    }
    let model_id = percent_decode_str(label).decode_utf8_lossy().into_owned();
    match Operation::from_path_segment(segment) {
        Some(op) if method == "POST" => (Some(model_id), Some(op)),
        _ => (Some(model_id), None),
    }
}

/// The outcome of authentication: (auth kind, error if rejected, rotating set used).
fn authenticate(
    config: &Config,
    method: &str,
    raw_path: &str,
    raw_query: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> (&'static str, Option<Answer>, Option<u64>) {
    // A rotating set is accepted only while valid; any other key is the configured one's.
    let now = SystemTime::now();
    let rotating = config.rotation.as_ref().and_then(|rotation| {
        let authorization = headers.iter().find(|(n, _)| n == "authorization")?;
        let key = sigv4_verify::parse_authorization(authorization.1.trim())
            .ok()?
            .access_key_id;
        key.starts_with(rotating::KEY_PREFIX)
            .then(|| rotation.valid(&key, rotating::ms(now)))
    });
    let set = match rotating {
        None => None,
        Some(Some(set)) => Some(set),
        Some(None) => {
            return (
                "sigv4",
                Some(Answer::error(
                    403,
                    "ExpiredTokenException",
                    "The security token included in the request is expired",
                )),
                None,
            )
        }
    };
    let credentials = set.as_ref().map_or(&config.credentials, |s| &s.credentials);
    let (auth, rejection) = authenticate_with(
        config,
        credentials,
        method,
        raw_path,
        raw_query,
        headers,
        body,
        now,
    );
    (auth, rejection, set.map(|s| s.generation))
}

#[allow(clippy::too_many_arguments)]
fn authenticate_with(
    config: &Config,
    credentials: &Credentials,
    method: &str,
    raw_path: &str,
    raw_query: &str,
    headers: &[(String, String)],
    body: &[u8],
    now: SystemTime,
) -> (&'static str, Option<Answer>) {
    let authorization = headers
        .iter()
        .find(|(n, _)| n == "authorization")
        .map(|(_, v)| v.trim());
    let Some(authorization) = authorization else {
        let e = VerifyError::MissingAuthentication;
        return (
            "none",
            Some(Answer::error(e.status(), e.error_type(), e.to_string())),
        );
    };
    if let Some((scheme, token)) = authorization.split_once(' ') {
        if scheme.eq_ignore_ascii_case("bearer") {
            let ok = config.bearer_token.as_deref().is_some_and(|expected| {
                constant_time_eq(expected.as_bytes(), token.trim().as_bytes())
            });
            return if ok {
                ("bearer", None)
            } else {
                (
                    "bearer",
                    Some(Answer::error(
                        403,
                        "UnrecognizedClientException",
                        "The security token included in the request is invalid.",
                    )),
                )
            };
        }
    }
    match sigv4_verify::verify(
        method,
        raw_path,
        raw_query,
        headers,
        body,
        credentials,
        &config.region,
        &config.service,
        now,
    ) {
        Ok(()) => ("sigv4", None),
        Err(e) => (
            "sigv4",
            Some(Answer::error(e.status(), e.error_type(), e.to_string())),
        ),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The ledger entry of a request being answered. If the request's future is dropped before
/// the answer is built (the client hung up, e.g. a gateway timing out during `slow`), the entry
/// is still recorded, with status 499 and `client_disconnected: true`.
struct Pending {
    state: Arc<State>,
    ticket: Ticket,
    entry: Entry,
    armed: bool,
}

impl Pending {
    /// Records a non-stream answer and builds its response.
    fn finish(mut self, answer: Answer) -> Response<ResponseBody> {
        self.armed = false;
        let mut entry = std::mem::take(&mut self.entry);
        entry.status = answer.status;
        if let Some((error_type, message)) = &answer.error {
            entry.error = Some(format!("{error_type}: {message}"));
            entry.error_type = Some(error_type.clone());
        }
        entry.completed_at_ms = now_ms();
        let response = build_response(&answer, &entry.request_id);
        log(&self.state, &entry);
        self.state.ledger.record(self.ticket, entry);
        response
    }

    /// Hands the entry over to a stream task, which records it.
    fn into_stream(mut self) -> (Arc<State>, Ticket, Entry) {
        self.armed = false;
        (
            self.state.clone(),
            self.ticket,
            std::mem::take(&mut self.entry),
        )
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut entry = std::mem::take(&mut self.entry);
        entry.status = 499;
        entry.client_disconnected = Some(true);
        entry.error = Some("client disconnected before the answer was sent".into());
        entry.completed_at_ms = now_ms();
        log(&self.state, &entry);
        self.state.ledger.record(self.ticket, entry);
    }
}

async fn api(state: Arc<State>, req: Request<Incoming>) -> Response<ResponseBody> {
    let received = Instant::now();
    let ticket = state.ledger.begin();
    let method = req.method().as_str().to_string();
    let raw_path = req.uri().path().to_string();
    let raw_query = req.uri().query().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let (model_id, operation) = parse_route(&method, &raw_path);
    let mut pending = Pending {
        state: state.clone(),
        ticket,
        entry: Entry {
            request_id: request_id(ticket.seq),
            method: method.clone(),
            operation: operation.map(|o| o.as_str().to_string()),
            raw_path: raw_path.clone(),
            raw_query: raw_query.clone(),
            model_id: model_id.clone(),
            auth: "none".into(),
            headers: headers.clone(),
            received_at_ms: now_ms(),
            ..Entry::default()
        },
        armed: true,
    };

    let body = match Limited::new(req.into_body(), state.config.max_body_bytes)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            let answer = if e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Answer::error(
                    413,
                    "ValidationException",
                    "Input is too long for requested model.",
                )
            } else {
                Answer::error(
                    400,
                    "ValidationException",
                    format!("could not read the request body: {e}"),
                )
            };
            return pending.finish(answer);
        }
    };
    let directives = Directives::parse(&body);
    let entry = &mut pending.entry;
    entry.body_len = body.len() as u64;
    entry.body_sha256 = hex::encode(Sha256::digest(&body));
    entry.directives = directives.seen.clone();

    let (auth, rejection, generation) = authenticate(
        &state.config,
        &method,
        &raw_path,
        &raw_query,
        &headers,
        &body,
    );
    entry.auth = auth.to_string();
    entry.credentials_generation = generation;
    entry.signature_valid = rejection.is_none();
    if let Some(answer) = rejection {
        return pending.finish(answer);
    }
    let (Some(op), Some(model_id)) = (operation, model_id) else {
        return pending.finish(Answer::error(
            404,
            "UnknownOperationException",
            "The requested operation is not recognized by the service.",
        ));
    };

    // The guardrail a request names is recorded whatever its answer; it is assessed (units)
    // only if the model runs.
    let early_json = serde_json::from_slice::<Value>(&body).ok();
    pending.entry.guardrail = GuardrailEcho::of_request(
        op.is_converse(),
        early_json.as_ref(),
        &headers,
        body.len(),
        false,
    );
    drop(early_json);
    let fault = state
        .take_fault(&model_id)
        .or_else(|| directives.fault_for(&model_id).cloned());
    pending.entry.fault = fault.as_ref().map(Fault::name);
    match &fault {
        Some(Fault::Reset) => {
            let mut response = pending.finish(Answer::error(
                0,
                "HangUp",
                "the emulator closed the connection without answering ([[emu:fail=reset]])",
            ));
            response.extensions_mut().insert(HangUp);
            return response;
        }
        Some(Fault::Throttle) => {
            return pending.finish(Answer::error(
                429,
                "ThrottlingException",
                "Too many requests, please wait before trying again.",
            ))
        }
        Some(Fault::Status(status)) => {
            let kind = Fault::error_type(*status);
            return pending.finish(Answer::error(
                *status,
                kind,
                format!("Emulated {kind} for {model_id} ([[emu:fail]])."),
            ));
        }
        Some(Fault::ResetAfter(_)) | None => {}
    }
    // `fail=reset-after-N@MODEL`: N content events of a stream, half a non-stream body.
    let model_reset_after = match fault {
        Some(Fault::ResetAfter(n)) => Some(n),
        _ => None,
    };

    let slow = directives
        .slow_ms
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis);
    if directives.hang_up {
        if let Some(d) = slow {
            tokio::time::sleep(d).await;
        }
        let mut response = pending.finish(Answer::error(
            0,
            "HangUp",
            "the emulator closed the connection without answering ([[emu:hang-up]])",
        ));
        response.extensions_mut().insert(HangUp);
        return response;
    }
    if directives.throttle || directives.error.is_some() {
        if let Some(d) = slow {
            tokio::time::sleep(d).await;
        }
        let answer = match &directives.error {
            _ if directives.throttle => Answer::error(
                429,
                "ThrottlingException",
                "Too many requests, please wait before trying again.",
            ),
            Some((status, kind)) => Answer::error(
                *status,
                kind,
                format!("Emulated {kind} ([[emu:error={status}:{kind}]])."),
            ),
            None => Answer::error(500, "InternalServerException", "unreachable"),
        };
        return pending.finish(answer);
    }
    let Ok(json) = serde_json::from_slice::<Value>(&body) else {
        return pending.finish(Answer::error(
            400,
            "ValidationException",
            "Malformed input request, please reformat your input and try again.",
        ));
    };

    if let Some(window) = crate::limits::context_window(&model_id) {
        let input = directives
            .input
            .unwrap_or_else(|| (body.len() as u64).div_ceil(4));
        if input > window {
            return pending.finish(Answer::error(
                400,
                "ValidationException",
                "Input is too long for requested model.",
            ));
        }
    }
    let family = Family::of(&model_id);
    if family.makes_images() && op != Operation::Invoke {
        return pending.finish(Answer::error(
            400,
            "ValidationException",
            "The provided model doesn't support this operation; image models answer InvokeModel.",
        ));
    }
    let guardrail = GuardrailEcho::of_request(
        op.is_converse(),
        Some(&json),
        &headers,
        body.len(),
        directives.guardrail_intervene,
    );
    if op == Operation::CountTokens {
        let answer = match crate::messages::count_tokens(&model_id, &json) {
            Ok(n) => {
                // Free of charge: nothing served to bill.
                pending.entry.usage = Some(crate::responses::Usage::default());
                Answer {
                    status: 200,
                    error: None,
                    body: json!({ "inputTokens": n }).to_string().into_bytes(),
                    headers: vec![],
                    content_type: None,
                }
            }
            Err(why) => Answer::error(400, "ValidationException", why),
        };
        return pending.finish(answer);
    }
    let conversation = match crate::messages::check(op, &model_id, &json, &directives, ticket.seq) {
        Ok(c) => c,
        Err(why) => return pending.finish(Answer::error(400, "ValidationException", why)),
    };
    pending.entry.tool_results = conversation.tool_results;
    pending.entry.request_images = conversation.images;
    pending.entry.tool_call = conversation.tool_call.as_ref().map(|t| t.name.clone());
    let mut plan = Plan::new(op, family, &body, Some(&json), &directives)
        .with_guardrail(guardrail, op.is_converse());
    // A guardrail that intervened answers in the model's place: no tool is called.
    if !plan.guardrail.as_ref().is_some_and(|g| g.intervened) {
        plan.call(conversation.tool_call, &directives);
    }
    let msg_id = message_id(ticket.seq);
    pending.entry.usage = Some(plan.usage);
    pending.entry.guardrail = plan.guardrail.clone();
    if op.is_stream() {
        let (state, ticket, entry) = pending.into_stream();
        return start_stream(
            state,
            ticket,
            entry,
            StreamJob {
                op,
                family,
                content_type: directives.content_type.clone(),
                plan,
                model_id,
                msg_id,
                received,
                slow,
                faults: StreamFaults::of(&directives).with_reset_after(model_reset_after),
            },
        );
    }

    if let Some(d) = slow {
        tokio::time::sleep(d).await;
    }
    let trickle = directives
        .trickle_ms
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis);
    let reset_after = directives.reset_after;
    let latency_ms = received.elapsed().as_millis() as u64;
    let answer = match op {
        Operation::Converse => Answer {
            status: 200,
            error: None,
            body: converse_body(&plan, latency_ms),
            headers: vec![],
            content_type: directives.content_type.clone(),
        },
        _ => Answer {
            status: 200,
            error: None,
            body: invoke_body(family, &plan, &model_id, &msg_id),
            // Image models are billed per image: no token counts.
            headers: if family.makes_images() {
                vec![("x-amzn-bedrock-invocation-latency", latency_ms.to_string())]
            } else {
                invoke_headers(&plan, latency_ms)
            },
            content_type: directives.content_type.clone(),
        },
    };
    pending.entry.output_text = Some(plan.full_text());
    let mut answer = answer;
    // Generated whole (and billed by Bedrock), but the connection fails mid-body.
    let reset_after = reset_after.or(model_reset_after.map(|_| answer.body.len() as u64 / 2));
    if let Some(n) = directives.pad.filter(|&n| n > 0) {
        answer.body = pad_json(&answer.body, n as usize);
    }
    if let Some(n) = reset_after {
        pending.entry.error = Some(format!(
            "connection reset after {n} body bytes ([[emu:reset-after={n}]])"
        ));
        pending.entry.error_type = Some("Reset".into());
    }
    let body = Bytes::from(answer.body.clone());
    let mut response = pending.finish(answer);
    if trickle.is_some() || reset_after.is_some() {
        *response.body_mut() = faulty_body(body, trickle, reset_after);
    }
    response
}

fn log(state: &State, e: &Entry) {
    if state.config.log {
        eprintln!(
            "tollgate-emulator: #{} {} {} {} -> {}{}",
            e.seq,
            e.method,
            e.raw_path,
            e.auth,
            e.status,
            e.error_type
                .as_deref()
                .map(|t| format!(" {t}"))
                .unwrap_or_default()
        );
    }
}

/// A response body fed by a channel: each message is one HTTP chunk; an error closes the
/// connection under the response.
struct ChannelBody {
    rx: mpsc::Receiver<BodyItem>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|item| item.map(Frame::data)))
    }
}

/// How a stream goes wrong (`[[emu:reset-after]]`, `corrupt-crc`, `truncate`, `stall`,
/// `trickle`).
#[derive(Clone, Copy, Debug, Default)]
struct StreamFaults {
    reset_after: Option<u64>,
    corrupt_crc: Option<u32>,
    truncate: Option<u32>,
    stall: Option<Duration>,
    stall_after: u32,
    trickle: Option<Duration>,
}

impl StreamFaults {
    fn of(d: &Directives) -> Self {
        Self {
            reset_after: d.reset_after,
            corrupt_crc: d.corrupt_crc,
            truncate: d.truncate,
            stall: d.stall_ms.filter(|&ms| ms > 0).map(Duration::from_millis),
            stall_after: d.stall_after.unwrap_or(1),
            trickle: d.trickle_ms.filter(|&ms| ms > 0).map(Duration::from_millis),
        }
    }

    /// A model's `fail=reset-after-N` fault, where no directive says otherwise.
    fn with_reset_after(mut self, deltas: Option<u32>) -> Self {
        self.reset_after = self.reset_after.or(deltas.map(u64::from));
        self
    }
}

struct StreamJob {
    op: Operation,
    family: Family,
    content_type: Option<String>,
    plan: Plan,
    model_id: String,
    msg_id: String,
    received: Instant,
    slow: Option<Duration>,
    faults: StreamFaults,
}

fn start_stream(
    state: Arc<State>,
    ticket: Ticket,
    entry: Entry,
    job: StreamJob,
) -> Response<ResponseBody> {
    let (tx, rx) = mpsc::channel(STREAM_CHANNEL_CAPACITY);
    let mut r = Response::new(ChannelBody { rx }.boxed());
    let headers = r.headers_mut();
    let content_type = job
        .content_type
        .as_deref()
        .and_then(|ct| hyper::header::HeaderValue::from_str(ct).ok())
        .unwrap_or(hyper::header::HeaderValue::from_static(
            "application/vnd.amazon.eventstream",
        ));
    headers.insert("content-type", content_type);
    if let Ok(v) = hyper::header::HeaderValue::from_str(&entry.request_id) {
        headers.insert("x-amzn-requestid", v);
    }
    if job.op == Operation::InvokeWithResponseStream {
        headers.insert(
            "x-amzn-bedrock-content-type",
            hyper::header::HeaderValue::from_static("application/json"),
        );
    }
    tokio::spawn(run_stream(state, ticket, entry, job, tx));
    r
}

/// The client went away (the response body was dropped).
struct Closed;

/// Cuts the stream's bytes into chunks of [`CHUNK_SIZES`] and keeps track of which frames have
/// been wholly handed to the connection, and when.
struct Chunker {
    tx: mpsc::Sender<BodyItem>,
    /// One byte per chunk, this far apart (`[[emu:trickle]]`).
    trickle: Option<Duration>,
    buf: BytesMut,
    next_size: usize,
    pushed: u64,
    sent: u64,
    /// (end offset, event index) of frames not yet wholly sent.
    pending: VecDeque<(u64, usize)>,
    /// (event index, unix ms) of frames wholly sent.
    done: Vec<(usize, u64)>,
}

impl Chunker {
    fn new(tx: mpsc::Sender<BodyItem>, trickle: Option<Duration>) -> Self {
        Chunker {
            tx,
            trickle,
            buf: BytesMut::new(),
            next_size: 0,
            pushed: 0,
            sent: 0,
            pending: VecDeque::new(),
            done: Vec::new(),
        }
    }

    fn push(&mut self, frame: &[u8], event_index: usize) {
        self.buf.extend_from_slice(frame);
        self.pushed += frame.len() as u64;
        self.pending.push_back((self.pushed, event_index));
    }

    /// Sends every whole chunk the buffer holds; with `flush`, the remainder too.
    async fn send(&mut self, flush: bool) -> Result<(), Closed> {
        // Each pass sends at least one byte, so this ends within buf.len() passes.
        while !self.buf.is_empty() {
            let size = match self.trickle {
                Some(_) => 1,
                None => CHUNK_SIZES[self.next_size % CHUNK_SIZES.len()],
            };
            let n = if self.buf.len() >= size {
                self.next_size += 1;
                size
            } else if flush {
                self.buf.len()
            } else {
                break;
            };
            let chunk = self.buf.split_to(n).freeze();
            self.tx.send(Ok(chunk)).await.map_err(|_| Closed)?;
            if let Some(d) = self.trickle {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = self.tx.closed() => return Err(Closed),
                }
            }
            self.sent += n as u64;
            let at = now_ms();
            while let Some(&(end, index)) = self.pending.front() {
                if end > self.sent {
                    break;
                }
                self.done.push((index, at));
                self.pending.pop_front();
            }
        }
        Ok(())
    }
}

async fn run_stream(
    state: Arc<State>,
    ticket: Ticket,
    mut entry: Entry,
    job: StreamJob,
    tx: mpsc::Sender<BodyItem>,
) {
    let events = stream_events(job.op, job.family, &job.plan);
    let faults = job.faults;
    let mut chunker = Chunker::new(tx, faults.trickle);
    let mut deltas_pushed = 0u64;
    let mut fault = None;
    let mut first_byte_latency_ms = None;
    let mut disconnected = false;
    let mut encode_error = None;
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            if let Some(d) = job.slow {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = chunker.tx.closed() => { disconnected = true; break; }
                }
            }
        }
        let is_delta = matches!(event, StreamEvent::Delta { .. });
        let preamble = matches!(event, StreamEvent::MessageStart | StreamEvent::BlockStart);
        if let (Some(d), StreamEvent::Delta { index, .. }) = (faults.stall, event) {
            if *index == faults.stall_after {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = chunker.tx.closed() => { disconnected = true; break; }
                }
            }
        }
        if faults.reset_after == Some(deltas_pushed) && !preamble {
            // Everything before goes out, then the connection is aborted.
            if chunker.send(true).await.is_err() {
                disconnected = true;
                break;
            }
            // The events went out before the peer fails, as they would from Bedrock: give the
            // gateway time to relay them (a host may drop its own unflushed writes when the
            // body it relays fails at once).
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = chunker.tx.send(Err(Box::new(Reset))).await;
            fault = Some((
                "Reset",
                format!("connection reset after {deltas_pushed} content deltas ([[emu:reset-after={deltas_pushed}]])"),
            ));
            break;
        }
        let latency_ms = job.received.elapsed().as_millis() as u64;
        let ctx = StreamContext {
            op: job.op,
            family: job.family,
            plan: &job.plan,
            model_id: &job.model_id,
            message_id: &job.msg_id,
            seq: ticket.seq,
            latency_ms,
            first_byte_latency_ms: *first_byte_latency_ms.get_or_insert(latency_ms),
        };
        let frame = match encode_event(&ctx, i as u64, event) {
            Ok(frame) => frame,
            Err(e) => {
                encode_error = Some(e.to_string());
                break;
            }
        };
        let mut frame = frame;
        if faults.corrupt_crc == Some(i as u32) {
            if let Some(last) = frame.last_mut() {
                *last ^= 0xff;
            }
            fault = Some((
                "CorruptCrc",
                format!("frame {i} sent with a wrong message CRC ([[emu:corrupt-crc={i}]])"),
            ));
        }
        if faults.truncate == Some(i as u32) {
            // Half the frame, then a clean end of the body.
            frame.truncate(frame.len() / 2);
            chunker.buf.extend_from_slice(&frame);
            if chunker.send(true).await.is_err() {
                disconnected = true;
            }
            fault = Some((
                "TruncatedFrame",
                format!(
                    "frame {i} cut after {} bytes, then the body ended ([[emu:truncate={i}]])",
                    frame.len()
                ),
            ));
            break;
        }
        chunker.push(&frame, i);
        deltas_pushed += u64::from(is_delta);
        // With `slow`, each event goes out whole at its own time; without, bytes are held
        // until the next chunk size is reached, so several frames can share a chunk.
        let flush = job.slow.is_some() || faults.stall.is_some() || i + 1 == events.len();
        if chunker.send(flush).await.is_err() {
            disconnected = true;
            break;
        }
    }

    let mut content_events = 0u64;
    let mut tokens_sent = 0u64;
    let mut text_sent = String::new();
    let mut exception = None;
    let mut times = Vec::with_capacity(chunker.done.len());
    for &(index, at) in &chunker.done {
        times.push(at);
        match &events[index] {
            StreamEvent::Delta { text, tokens, .. } => {
                content_events += 1;
                tokens_sent += tokens;
                text_sent.push_str(text);
            }
            StreamEvent::Exception { message } => exception = Some(message.clone()),
            _ => {}
        }
    }
    let all_sent = chunker.done.len() == events.len();
    entry.status = 200;
    entry.stream = true;
    entry.usage = Some(job.plan.usage);
    entry.output_text = Some(text_sent);
    entry.stream_events_sent = Some(times.len() as u64);
    entry.content_events_sent = Some(content_events);
    entry.output_tokens_sent = Some(tokens_sent);
    entry.stream_completed =
        Some(all_sent && exception.is_none() && encode_error.is_none() && fault.is_none());
    entry.client_disconnected = Some(disconnected);
    entry.first_event_at_ms = times.first().copied();
    entry.last_event_at_ms = times.last().copied();
    entry.event_sent_at_ms = Some(times);
    if let Some(message) = exception {
        entry.error = Some(format!("modelStreamErrorException: {message}"));
        entry.error_type = Some("modelStreamErrorException".into());
    } else if let Some((kind, message)) = fault {
        entry.error = Some(message);
        entry.error_type = Some(kind.into());
    } else if disconnected {
        entry.error = Some("client disconnected mid-stream".into());
    } else if let Some(e) = encode_error {
        entry.error = Some(format!("could not encode a frame: {e}"));
    }
    entry.completed_at_ms = now_ms();
    log(&state, &entry);
    // Recorded before the body ends (the sender is dropped below), so a client that has read
    // the whole stream always finds the entry in the ledger.
    state.ledger.record(ticket, entry);
    drop(chunker);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let (m, op) = parse_route(
            "POST",
            "/model/us.anthropic.claude-haiku-4-5-20251001-v1%3A0/converse",
        );
        assert_eq!(
            m.as_deref(),
            Some("us.anthropic.claude-haiku-4-5-20251001-v1:0")
        );
        assert_eq!(op, Some(Operation::Converse));
        let (m, op) = parse_route(
            "POST",
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.x/invoke-with-response-stream",
        );
        assert_eq!(
            m.as_deref(),
            Some("arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.x")
        );
        assert_eq!(op, Some(Operation::InvokeWithResponseStream));
        assert_eq!(parse_route("GET", "/model/m/converse").1, None);
        assert_eq!(parse_route("POST", "/model/m/converse/x").1, None);
        assert_eq!(parse_route("POST", "/model/a/b/converse").1, None);
        assert_eq!(parse_route("POST", "/model//converse"), (None, None));
        assert_eq!(parse_route("POST", "/foo"), (None, None));
    }
}
