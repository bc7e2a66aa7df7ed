//! The per-request HTTP context.

use std::cell::{RefCell, RefMut};
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, LogLevel, MapType};
use tollgate_core::accounting::totals::CasTotals;
use tollgate_core::config::{Config, UpstreamAuth};
use tollgate_core::dialect::Dialect;
use tollgate_core::endpoints;
use tollgate_core::error::{ErrorKind, GatewayError, Reply};
use tollgate_core::exchange::{
    self, Admission, Callers, Effect, Exchange, Level, Outbound, ResponseHead, Verdict,
};
use tollgate_core::quota::counters::CasCounters;
use tollgate_core::upstream::host_reply;
use tollgate_core::upstream::request::UpstreamRequest;
use tollgate_core::upstream::signing::SigningKeyCache;

use crate::host::{self, SharedData};
use crate::leases::{self, Shared};
use crate::{identity, metrics, upstream};

pub struct Http {
    config: Result<Rc<Config>, Rc<str>>,
    /// The VM's signing key, kept for the day (shared by every request of the VM).
    signing_keys: Rc<RefCell<SigningKeyCache>>,
    /// Shared with this VM's timer, which renews its lease (`leases`).
    exchange: Option<Shared>,
    /// Envoy runs a local reply (this filter's, or Envoy's own) through this filter's own
    /// response callbacks: they must not mistake it for Bedrock's answer.
    local_reply: bool,
}

impl Http {
    pub fn new(
        config: Result<Rc<Config>, Rc<str>>,
        signing_keys: Rc<RefCell<SigningKeyCache>>,
    ) -> Self {
        Self {
            config,
            signing_keys,
            exchange: None,
            local_reply: false,
        }
    }

    /// The exchange, if there is one (never borrowed elsewhere while a callback runs: the
    /// timer runs between callbacks).
    fn exchange(&self) -> Option<RefMut<'_, Box<Exchange>>> {
        self.exchange.as_ref()?.try_borrow_mut().ok()
    }

    fn reply(&mut self, reply: &Reply) -> Action {
        self.local_reply = true;
        if let Some(mut ex) = self.exchange() {
            ex.replied_locally(reply.status);
        }
        host::reply(reply);
        Action::Pause
    }

    /// Refuses the request in its exchange's dialect; every refusal goes through here.
    fn reject(&mut self, e: &GatewayError, key_id: Option<&str>) -> Action {
        let dialect = self.exchange().map_or(Dialect::Bedrock, |ex| ex.dialect);
        self.reject_in(e, key_id, dialect)
    }

    fn reject_in(&mut self, e: &GatewayError, key_id: Option<&str>, dialect: Dialect) -> Action {
        let own = self.exchange().map(|ex| ex.key_id.clone());
        metrics::on_refusal(e, key_id.or(own.as_deref()));
        self.reply(&e.to_reply(dialect))
    }

    /// Rewrites the paused request into the signed upstream one.
    fn forward(&mut self, config: &Config, body: &[u8]) -> Action {
        let Some(mut ex) = self.exchange() else {
            return Action::Continue;
        };
        let fetched = match &config.upstream_auth {
            UpstreamAuth::Fetched(source) => crate::credentials::current(source),
            _ => None,
        };
        let signed = {
            // Never borrowed elsewhere while a request signs; a fresh key if it somehow were.
            let mut kept = self.signing_keys.try_borrow_mut();
            let mut spare = SigningKeyCache::default();
            let keys = match kept.as_deref_mut() {
                Ok(keys) => keys,
                Err(_) => &mut spare,
            };
            ex.upstream_request_with(
                config,
                &CasCounters(&SharedData),
                keys,
                body,
                host::now(),
                fetched.as_ref(),
            )
        };
        let trap = ex.test_trap_after_admission();
        drop(ex);
        match signed {
            Ok(Outbound::Upstream(up)) => {
                if trap {
                    host::trap();
                }
                match apply(&up, body.len()) {
                    Ok(()) => {
                        if let Some(ex) = self.exchange() {
                            publish_fallbacks(&ex);
                        }
                        Action::Continue
                    }
                    Err(e) => self.reject(&e, None),
                }
            }
            Ok(Outbound::Reply(r)) => self.reply(&r),
            Err(e) => self.reject(&e, None),
        }
    }

    /// Reads the attempts Tollgate's upstream filter logged, for a request it may have retried.
    fn sync_attempts(&mut self) {
        if let Some(mut ex) = self.exchange().filter(|ex| ex.has_fallbacks()) {
            if let Some(log) = host::property(upstream::ATTEMPTS) {
                ex.sync_attempts(std::str::from_utf8(&log).unwrap_or(""));
            }
        }
    }

    /// The whole request body, once the client has sent all of it.
    fn finish_body(&mut self, body: &[u8]) -> Action {
        let Ok(config) = self.config.clone() else {
            return Action::Continue;
        };
        let checked = match self.exchange() {
            Some(mut ex) => ex.check_body_size(body.len() as u64),
            None => return Action::Continue,
        };
        if let Err(e) = checked {
            return self.reject(&e, None);
        }
        self.forward(&config, body)
    }
}

/// Tells the router how often it may retry this request, and, when it has targets to fall
/// back to, leaves their plan for Tollgate's upstream filter (`upstream.rs`) in the request's
/// filter state. One target: no retry (a retry would go to the same model).
fn publish_fallbacks(ex: &Exchange) {
    let map = MapType::HttpRequestHeaders;
    match ex.fallbacks() {
        Some(fallbacks) => {
            host::set_property(upstream::PLAN, fallbacks.plan.as_bytes());
            if let Some(body) = fallbacks.body {
                host::set_property(upstream::BODY, body);
            }
            host::set_header(map, "x-envoy-max-retries", &fallbacks.retries.to_string());
        }
        None => host::set_header(map, "x-envoy-max-retries", "0"),
    }
}

/// Edits the paused request. A body that cannot be replaced is an error, never a request
/// whose `content-length` and body disagree.
fn apply(up: &UpstreamRequest, body_size: usize) -> Result<(), GatewayError> {
    let map = MapType::HttpRequestHeaders;
    if let Some(body) = &up.body {
        if !host::replace_request_body(body_size, body) {
            return Err(GatewayError::new(
                ErrorKind::Internal,
                "the gateway could not rewrite the request body",
            ));
        }
        host::set_header(map, "content-length", &body.len().to_string());
    }
    for name in &up.remove_headers {
        host::remove_header(map, name);
    }
    host::set_header(map, ":path", &up.path);
    host::set_header(map, ":authority", &up.authority);
    for (name, value) in &up.set_headers {
        host::set_header(map, name, value);
    }
    Ok(())
}

/// Changes the response head on its way to the client, as the exchange's dialect says.
fn apply_head(head: &ResponseHead) {
    let map = MapType::HttpResponseHeaders;
    if let Some(status) = head.status {
        host::set_header(map, ":status", &status.to_string());
    }
    for name in &head.remove {
        host::remove_header(map, name);
    }
    for (name, value) in &head.set {
        host::set_header(map, name, value);
    }
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let headers = host::headers(MapType::HttpRequestHeaders);
        let config = match &self.config {
            Ok(c) => c.clone(),
            // The reason was logged when the configuration was loaded.
            Err(_) => {
                let path = host::header(&headers, ":path").unwrap_or("");
                let pairs: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                let e = GatewayError::not_configured();
                metrics::on_refusal(&e, None);
                return self.reply(&GatewayError::not_configured_reply(path, &pairs));
            }
        };
        let method = host::header(&headers, ":method").unwrap_or("");
        let path = host::header(&headers, ":path").unwrap_or("");
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        // What Envoy verified about the caller (peer certificate, JWT), when keys name it.
        let caller = identity::caller(&config);
        let callers = Callers {
            caller: caller.as_ref(),
            runtime_keys: None,
        };
        let now_ms = host::now_ms(host::now());
        match exchange::admit_with(&config, method, path, &pairs, callers, now_ms) {
            Admission::Refused {
                error,
                key_id,
                dialect,
            } => self.reject_in(&error, key_id.as_deref(), dialect),
            Admission::Reply(r) => self.reply(&r),
            Admission::Usage { key, now_ms } => self.reply(&endpoints::usage(
                &CasTotals(&SharedData),
                &CasCounters(&SharedData),
                &key,
                now_ms,
                config.lease,
            )),
            Admission::Forward(mut ex) => {
                let declared = ex.check_declared_body_size();
                let ex = Rc::new(RefCell::new(ex));
                leases::register(&ex);
                self.exchange = Some(ex);
                if let Err(e) = declared {
                    return self.reject(&e, None);
                }
                if end_of_stream {
                    self.forward(&config, &[])
                } else {
                    // Hold the headers until the body is hashed: needs Envoy >= 1.35 with
                    // `allow_on_headers_stop_iteration: true`, or the body never arrives.
                    Action::Pause
                }
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            let checked = match self.exchange() {
                Some(mut ex) => ex.check_body_size(body_size as u64),
                None => return Action::Continue,
            };
            if let Err(e) = checked {
                return self.reject(&e, None);
            }
            return Action::Pause;
        }
        if self.exchange.is_none() {
            return Action::Continue;
        }
        let body = host::buffer(BufferType::HttpRequestBody, body_size);
        self.finish_body(&body)
    }

    /// A request whose body ends with trailers (HTTP/2, or HTTP/1 with Envoy's `enable_trailers`)
    /// ends here, not in the body callback: its last body callback said "not the end" and
    /// paused. Without this callback Envoy would resume the held request as the client sent
    /// it: unsigned, original path, the client's key in `authorization`. So the request is
    /// finished and signed here like any other, and its trailers are dropped (Bedrock reads
    /// none; they could carry anything, a key included).
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.local_reply || self.exchange.is_none() {
            return Action::Continue;
        }
        host::clear_request_trailers();
        // No body callback said how big the body is: read all there is (reads are clamped to
        // the buffer's end; nothing is buffered when no DATA came at all).
        let body = host::buffer(BufferType::HttpRequestBody, u32::MAX as usize);
        self.finish_body(&body)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.local_reply {
            return Action::Continue;
        }
        self.sync_attempts();
        let local_reply = &mut self.local_reply;
        if let Some(mut ex) = self.exchange.as_ref().and_then(|e| e.try_borrow_mut().ok()) {
            let headers = host::headers(MapType::HttpResponseHeaders);
            let status = host::header(&headers, ":status")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            match host::response_code_details() {
                // Envoy's own reply (a route timeout, an upstream reset…): not Bedrock's.
                Some(details) if details != host_reply::ENVOY_VIA_UPSTREAM => {
                    *local_reply = true;
                    ex.upstream_failed(
                        status,
                        host_reply::envoy_reply_may_have_reached_upstream(&details),
                    );
                }
                _ => {
                    let head = ex.on_response_headers(
                        status,
                        headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
                    );
                    apply_head(&head);
                }
            }
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.local_reply || (body_size == 0 && !end_of_stream) {
            return Action::Continue;
        }
        let Some(mut ex) = self.exchange() else {
            return Action::Continue;
        };
        // With Continue, the buffer holds exactly this chunk: inspect a copy, pass it on.
        let chunk = if body_size == 0 {
            Vec::new()
        } else {
            host::buffer(BufferType::HttpResponseBody, body_size)
        };
        leases::renew(&mut ex, host::now_ms(host::now()));
        let relayed = ex.on_response_body(&chunk);
        match relayed.verdict {
            Verdict::Pass | Verdict::Replace => {
                if end_of_stream && ex.upstream_ended_inside_a_message() {
                    // Bedrock's body ended inside a frame: break the client's response rather
                    // than end it cleanly (nor with a dialect's closing events), so its SDK
                    // reports an error instead of a short, whole stream.
                    if relayed.verdict == Verdict::Replace {
                        host::replace_response_body(body_size, &relayed.bytes);
                    }
                    host::reset_stream();
                    return Action::Continue;
                }
                // The upstream body ends here: the client's dialect may have bytes held back.
                let tail = if end_of_stream {
                    ex.on_response_end()
                } else {
                    Vec::new()
                };
                if relayed.verdict == Verdict::Replace || !tail.is_empty() {
                    host::replace_response_body(body_size, &[&relayed.bytes[..], &tail].concat());
                }
            }
            Verdict::End { reset_upstream } => {
                host::replace_response_body(body_size, &relayed.bytes);
                if reset_upstream {
                    // A reset ends the client's side too: only once the end has gone out.
                    host::reset_stream();
                }
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.sync_attempts();
        let (Ok(config), Some(mut ex)) = (&self.config, self.exchange()) else {
            return;
        };
        let now_ms = host::now_ms(host::now());
        let Some(mut ending) = ex.end(
            config,
            &CasCounters(&SharedData),
            &CasTotals(&SharedData),
            now_ms,
        ) else {
            return;
        };
        // What the store failed is retried from the worker's timer (`leases`).
        if let Some(unsettled) = ending.take_unsettled() {
            leases::keep(unsettled);
        }
        // Settled and counted already: what is left is to say so, in core's order.
        let mut name = String::new();
        for effect in ending.effects() {
            match effect {
                Effect::Record(line) => host::log(LogLevel::Info, &line),
                Effect::Log(Level::Warn, line) => host::log(LogLevel::Warn, &line),
                Effect::Log(Level::Critical, line) => host::log(LogLevel::Critical, &line),
                Effect::Metric(update) => metrics::apply(&update, &mut name),
            }
        }
    }
}
