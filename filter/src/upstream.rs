//! Tollgate as an upstream HTTP filter of the Bedrock cluster (root ID `tollgate_upstream`):
//! every attempt the router makes passes through it, retries included. The downstream filter
//! admits the request, plans its targets and sends attempt 1 itself; when the request has
//! more than one target it leaves the plan (and, if attempt 1 went clamped, the body to make
//! the others from) in the request's filter state, and the route's retry policy retries on
//! 429, 5xx and resets. This filter then builds each later attempt for its target — the
//! model ID in the path, the target's output cap, a new signature — and logs every attempt's
//! target and status in the filter state, where the downstream filter reads which target
//! answered. Envoy retries only before a response has begun, so nothing falls back after
//! the first byte.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, LogLevel, MapType};
use tollgate_core::config::{Config, UpstreamAuth};
use tollgate_core::routing::attempts::AttemptLog;
use tollgate_core::routing::plan::Plan;
use tollgate_core::upstream::attempt;
use tollgate_core::upstream::credentials::Signer;
use tollgate_core::upstream::signing::SigningKeyCache;

use crate::host;

/// Filter-state names shared with the downstream filter (Envoy keeps them per request, for
/// every filter of the request, upstream filters included).
pub const PLAN: &str = "tollgate_plan";
pub const BODY: &str = "tollgate_body";
pub const ATTEMPTS: &str = "tollgate_attempts";

/// The root ID that makes a Tollgate filter this one.
pub const ROOT_ID: &str = "tollgate_upstream";

enum State {
    /// Not a request with targets to fall back to, or nothing more to do with it.
    Idle,
    /// Attempt `index` (from 0) of `plan`, to be built once the body is in.
    Building {
        plan: Plan,
        index: usize,
        log: AttemptLog,
    },
    /// Sent: its status goes in the log.
    Sent { log: AttemptLog },
}

pub struct Attempt {
    config: Result<Rc<Config>, Rc<str>>,
    signing_keys: Rc<RefCell<SigningKeyCache>>,
    state: State,
}

impl Attempt {
    pub fn new(
        config: Result<Rc<Config>, Rc<str>>,
        signing_keys: Rc<RefCell<SigningKeyCache>>,
    ) -> Self {
        Self {
            config,
            signing_keys,
            state: State::Idle,
        }
    }

    /// Builds the attempt from `body` (this attempt's copy of the request body) and edits the
    /// paused request into it.
    fn build(&mut self, body: &[u8]) -> Action {
        let State::Building { plan, index, log } = std::mem::replace(&mut self.state, State::Idle)
        else {
            return Action::Continue;
        };
        let Ok(config) = self.config.clone() else {
            return Action::Continue;
        };
        // Attempt 1 was clamped for its target: later ones start from the body as prepared.
        let prepared = host::property(BODY);
        let source = prepared.as_deref().unwrap_or(body);
        let now = host::now();
        let fetched = match &config.upstream_auth {
            UpstreamAuth::Fetched(source) => crate::credentials::current(source),
            _ => None,
        };
        let built = Signer::for_request(&config.upstream_auth, fetched.as_ref(), host::now_ms(now))
            .and_then(|signer| {
                let mut spare = SigningKeyCache::default();
                let mut kept = self.signing_keys.try_borrow_mut();
                let keys = match kept.as_deref_mut() {
                    Ok(keys) => keys,
                    Err(_) => &mut spare,
                };
                attempt::build(&config, &plan, index, source, &[], &signer, keys, now)
            });
        let mut log = log;
        log.start(index);
        host::set_property(ATTEMPTS, log.encode().as_bytes());
        match built {
            Ok(a) => {
                let map = MapType::HttpRequestHeaders;
                let up = a.request;
                let new_body = up.body.as_deref().unwrap_or(source);
                if host::replace_request_body(body.len(), new_body) {
                    host::set_header(map, "content-length", &new_body.len().to_string());
                }
                host::set_header(map, ":path", &up.path);
                host::set_header(map, ":authority", &up.authority);
                for (name, value) in &up.set_headers {
                    host::set_header(map, name, value);
                }
                self.state = State::Sent { log };
                Action::Continue
            }
            Err(e) => {
                // Nothing that could be signed goes out: this attempt fails here, in Bedrock's
                // shape, as the request's answer.
                host::log(
                    LogLevel::Error,
                    &format!("tollgate: attempt {} could not be built: {e}", index + 1),
                );
                self.state = State::Sent { log };
                host::reply(&e.to_bedrock_reply());
                Action::Pause
            }
        }
    }
}

impl Context for Attempt {}

impl HttpContext for Attempt {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        // A request with one target carries no plan: nothing to do (the common case, one
        // property read).
        let Some(plan) = host::property(PLAN) else {
            return Action::Continue;
        };
        let Some(plan) = std::str::from_utf8(&plan).ok().and_then(Plan::decode) else {
            host::log(
                LogLevel::Error,
                "tollgate: the request's plan is unreadable; the attempt goes as it is",
            );
            return Action::Continue;
        };
        let mut log = host::property(ATTEMPTS)
            .and_then(|b| AttemptLog::decode(std::str::from_utf8(&b).ok()?))
            .unwrap_or_default();
        let index = log.attempts().len();
        if index == 0 {
            // Attempt 1: the downstream filter built and signed it.
            log.start(0);
            host::set_property(ATTEMPTS, log.encode().as_bytes());
            self.state = State::Sent { log };
            return Action::Continue;
        }
        // More attempts than targets only if the route retries more often than the downstream
        // filter asked (`x-envoy-max-retries`): the last target again.
        let index = index.min(plan.targets.len().saturating_sub(1));
        self.state = State::Building { plan, index, log };
        if end_of_stream {
            return self.build(&[]);
        }
        // Held until the body is in: needs `allow_on_headers_stop_iteration: true`.
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !matches!(self.state, State::Building { .. }) {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = host::buffer(BufferType::HttpRequestBody, body_size);
        self.build(&body)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let State::Sent { log } = &mut self.state {
            let status = host::header_value(MapType::HttpResponseHeaders, ":status");
            if let Some(status) = status.and_then(|s| s.parse().ok()) {
                log.answered(status);
                host::set_property(ATTEMPTS, log.encode().as_bytes());
            }
            self.state = State::Idle;
        }
        Action::Continue
    }
}
