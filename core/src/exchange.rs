//! One request through the gateway, from request head to usage record, as a sans-IO state
//! machine. Hosts feed it headers, body bytes and time, and do what it says.

use std::time::SystemTime;

use crate::auth;
use crate::config::{ApiKey, Config};
use crate::counters::Counters;
use crate::error::{Dialect, ErrorKind, GatewayError};
use crate::eventstream;
use crate::images;
use crate::meter::{Reading, UsageMeter};
use crate::model_family;
use crate::model_id;
use crate::operation::Operation;
use crate::options::{self, HeaderOptions, Unpriced};
use crate::pricing::{self, ServiceTier};
use crate::quota::{self, Reservation};
use crate::record::{self, UsageRecord};
use crate::request_body;
use crate::request_headers;
use crate::route::{self, Route};
use crate::signing;
use crate::usage::Usage;

/// What to do with a request once its head is known.
pub enum Admission {
    /// Buffer the body (at most [`Exchange::body_limit`] bytes), then call
    /// [`Exchange::upstream_request`].
    Forward(Box<Exchange>),
    /// Answer `GET /usage` for this key from the store, as of `now_ms`.
    Usage { key_id: String, now_ms: u64 },
    /// Answer with this (a local endpoint that needs no store) and stop.
    Reply(crate::error::Reply),
    /// Answer with the error's reply and stop. `key_id` is known once the key authenticated.
    Refused {
        error: GatewayError,
        key_id: Option<String>,
        /// The shape clients of this route expect errors in.
        dialect: Dialect,
    },
}

/// Headers that describe one connection or one message framing, not the exchange: hosts that
/// build the upstream request or the client's response themselves (Spin) leave them to their
/// HTTP stack, which sets `host` and the framing (`content-length` or chunked) itself and
/// refuses most of them from a component (wasi-http's forbidden headers). Lowercase `name`.
pub fn is_hop_by_hop(name: &str) -> bool {
    const HOP_BY_HOP: &[&str] = &[
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "http2-settings",
        "content-length",
    ];
    HOP_BY_HOP.contains(&name)
}

/// Decides what to do with a request. `headers` names are lowercase.
pub fn admit(
    config: &Config,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    now_ms: u64,
) -> Admission {
    let authenticated = route::route(method, path).and_then(|route| {
        let key = auth::authenticate(&config.api_keys, auth::presented_key(headers)?)?;
        Ok((route, key))
    });
    let (route, key) = match authenticated {
        Ok(found) => found,
        Err(error) => {
            return Admission::Refused {
                error,
                key_id: None,
                dialect: Dialect::for_path(path),
            }
        }
    };
    match admit_key(config, route, key, headers, now_ms) {
        Ok(a) => a,
        Err(error) => Admission::Refused {
            error,
            key_id: Some(key.id.clone()),
            dialect: Dialect::for_path(path),
        },
    }
}

fn admit_key(
    config: &Config,
    route: Route<'_>,
    key: &ApiKey,
    headers: &[(&str, &str)],
    now_ms: u64,
) -> Result<Admission, GatewayError> {
    let header = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let quota_now_ms = match header(TEST_CLOCK_HEADER) {
        Some(v) if config.test_hooks => v
            .trim()
            .parse::<u64>()
            .map_or(now_ms, |t| t.min(MAX_TEST_CLOCK_MS)),
        _ => now_ms,
    };
    let (label, operation) = match route {
        Route::Usage => {
            return Ok(Admission::Usage {
                key_id: key.id.clone(),
                now_ms: quota_now_ms,
            })
        }
        Route::Models => {
            return Ok(Admission::Reply(crate::endpoints::models_reply(
                config, key,
            )))
        }
        Route::Model { label, operation } => (label, operation),
    };
    let model = model_id::decode_path_label(label).ok_or_else(|| {
        GatewayError::new(
            ErrorKind::BadRequest,
            "the model ID in the path is not valid",
        )
    })?;
    // Aliases resolve to canonical IDs (at load); a raw ID is canonicalised here, so every
    // allowlist, limit and price lookup sees one spelling per model. `model` (records, totals,
    // metrics) is the alias, or that one spelling.
    let (model, model_id) = match config.aliases.get(&model) {
        Some(target) => (model, target.clone()),
        None if model_id::is_model_id(&model) => {
            let id = model_id::canonical(&model, &config.region)
                .map_err(|why| GatewayError::new(ErrorKind::BadRequest, why))?;
            (id.clone(), id)
        }
        None => {
            return Err(GatewayError::new(
                ErrorKind::UnknownModel,
                format!("`{model}` is not a configured model alias or a Bedrock model ID"),
            ))
        }
    };
    if !key.may_use(&model_id) {
        return Err(GatewayError::new(
            ErrorKind::ModelNotAllowed,
            format!("API key `{}` is not allowed to use model `{model}`", key.id),
        ));
    }
    if let Some(encoding) = header("content-encoding")
        .map(str::trim)
        .filter(|e| !e.is_empty() && !e.eq_ignore_ascii_case("identity"))
    {
        // Tollgate reads the body (output limit, options) and Bedrock takes it uncompressed.
        return Err(GatewayError::new(
            ErrorKind::BadRequest,
            format!("request bodies must not be compressed (content-encoding: {encoding})"),
        ));
    }
    if pricing::quote(&config.region, &model_id).unpriced_images(&model_id) {
        return Err(GatewayError::new(
            ErrorKind::BadRequest,
            format!(
                "`{model_id}` is an image model this gateway has no per-image price for; \
                 it cannot be billed, so it is refused"
            ),
        ));
    }
    let strip_headers = request_headers::to_remove(headers.iter().map(|(n, _)| *n));
    let header_options = HeaderOptions::read(headers);
    let request_id = header("x-request-id").map(|v| v.chars().take(128).collect());
    let declared_body_bytes = header("content-length").and_then(|v| v.trim().parse().ok());
    Ok(Admission::Forward(Box::new(Exchange {
        request_id,
        key_id: key.id.clone(),
        model,
        model_id,
        operation,
        started_ms: now_ms,
        quota_now_ms,
        reservation: Reservation::default(),
        cut_off: None,
        body_limit: config.max_request_body_bytes,
        declared_body_bytes,
        strip_headers,
        header_options,
        service_tier: ServiceTier::Standard,
        unpriced: Vec::new(),
        request_bytes: 0,
        status: None,
        sent_upstream: false,
        host_answered: false,
        estimate: Usage::default(),
        priced_per_image: false,
        meter: UsageMeter::new(operation),
        finished: false,
    })))
}

/// The changes that turn the client's request into the upstream one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRequest {
    /// New `:path`: the real model ID, percent-encoded once.
    pub path: String,
    /// New `:authority` / host.
    pub authority: String,
    /// Client headers to remove (lowercase names).
    pub remove_headers: Vec<String>,
    /// Headers to set (signature, date, token).
    pub set_headers: Vec<(String, String)>,
    /// A new body (the output-token cap applied), to send instead of the client's, with a
    /// `content-length` to match.
    pub body: Option<Vec<u8>>,
}

impl UpstreamRequest {
    /// The complete header list of the upstream request, for hosts that build it themselves
    /// (Spin) rather than edit the client's (Envoy): the client's headers that are forwarded
    /// ([`request_headers::FORWARDED`]), values byte for byte, plus the signature headers.
    /// `host` and `content-length` are left to the host's HTTP client.
    pub fn headers_from<'a>(
        &self,
        client: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = client
            .into_iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v))
            .filter(|(n, _)| {
                request_headers::is_forwarded(n)
                    && !self
                        .set_headers
                        .iter()
                        .any(|(s, _)| s.eq_ignore_ascii_case(n))
            })
            .map(|(n, v)| (n, v.to_vec()))
            .collect();
        out.extend(
            self.set_headers
                .iter()
                .map(|(n, v)| (n.clone(), v.as_bytes().to_vec())),
        );
        out
    }
}

/// What to do with a chunk of the response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyVerdict {
    Pass,
    /// Send these bytes instead: the stream ends here (budget cut-off).
    Replace(Vec<u8>),
    /// Send nothing: the stream was already ended. Hosts may reset the upstream.
    Drop,
}

/// The exception type of the terminal frame that ends a stream whose budget ran out. It is
/// one both stream unions (ConverseStream, InvokeModelWithResponseStream) model, so SDKs raise
/// it with its message; an unmodeled type reaches boto3 with neither code nor message.
pub const CUT_OFF_EXCEPTION: &str = "throttlingException";

/// A stream that ends once what it delivered would cost more than its budget reservation.
#[derive(Debug)]
struct CutOff {
    allowance_pico_usd: u64,
    quote: pricing::Quote,
    /// The terminal frame was sent.
    done: bool,
}

/// With `test_hooks` on, this request header sets the quota clock (ms since the epoch), so
/// tests can cross minutes and budget periods without sleeping.
pub const TEST_CLOCK_HEADER: &str = "x-tollgate-test-now-ms";

/// The latest instant the test clock may be set to: 9999-12-31T23:59:59.999Z. Values past it
/// are clamped, so no period or window arithmetic ever sees a clock near `u64::MAX`.
pub const MAX_TEST_CLOCK_MS: u64 = 253_402_300_799_999;

pub struct Exchange {
    /// The host's request ID (Envoy's `x-request-id`), to join records with access logs.
    pub request_id: Option<String>,
    pub key_id: String,
    /// The model as the client named it.
    pub model: String,
    pub model_id: String,
    pub operation: Operation,
    started_ms: u64,
    /// The clock quota windows and periods are read from.
    quota_now_ms: u64,
    reservation: Reservation,
    cut_off: Option<CutOff>,
    body_limit: u64,
    /// `content-length`, when the client sent one: an oversized body is refused before it is read.
    declared_body_bytes: Option<u64>,
    strip_headers: Vec<String>,
    /// Cost-raising options the request's headers ask for.
    header_options: HeaderOptions,
    /// The tier the request is priced at, and the unpriced options its key allowed it.
    service_tier: ServiceTier,
    unpriced: Vec<Unpriced>,
    request_bytes: u64,
    status: Option<u16>,
    sent_upstream: bool,
    /// The host answered in Bedrock's place after the request may have reached it.
    host_answered: bool,
    /// The reservation's estimate of the usage (see [`record::Fallback`]).
    estimate: Usage,
    priced_per_image: bool,
    meter: UsageMeter,
    finished: bool,
}

impl Exchange {
    pub fn body_limit(&self) -> u64 {
        self.body_limit
    }

    /// Refuses a body whose declared length is over the limit, before reading any of it.
    pub fn check_declared_body_size(&mut self) -> Result<(), GatewayError> {
        match self.declared_body_bytes {
            Some(n) => self.check_body_size(n),
            None => Ok(()),
        }
    }

    /// Checks a (partial) body size against the limit; hosts call it as bytes arrive.
    pub fn check_body_size(&mut self, size: u64) -> Result<(), GatewayError> {
        if size > self.body_limit {
            self.status = Some(ErrorKind::BodyTooLarge.status());
            return Err(GatewayError::new(
                ErrorKind::BodyTooLarge,
                format!(
                    "the request body is larger than this gateway's limit of {} bytes",
                    self.body_limit
                ),
            ));
        }
        Ok(())
    }

    /// The upstream request for the complete `body`, signed at `now`, once the request is
    /// admitted against its key's limits (its estimated cost reserved in `counters`).
    pub fn upstream_request(
        &mut self,
        config: &Config,
        counters: &dyn Counters,
        body: &[u8],
        now: SystemTime,
    ) -> Result<UpstreamRequest, GatewayError> {
        self.request_bytes = body.len() as u64;
        self.check_body_size(self.request_bytes)?;
        let key = config
            .api_keys
            .iter()
            .find(|k| k.id == self.key_id)
            .ok_or_else(|| {
                GatewayError::new(ErrorKind::Internal, "the key is no longer configured")
            })?;
        let cap = key.limits.max_output_tokens(&self.model_id);
        let read = request_body::scan(body, self.operation)
            .and_then(|read| {
                let decided = options::decide(
                    &self.header_options,
                    &read.options,
                    &key.limits.unpriced_options,
                    &config.region,
                    &self.model_id,
                )?;
                Ok((read, decided))
            })
            .inspect_err(|e| self.status = Some(e.kind.status()));
        let (read, decided) = read?;
        let limit = read.output_limit(body, &self.model_id, cap);
        let body = limit.rewritten.as_deref().unwrap_or(body);
        let quote = pricing::quote_tier(&config.region, &self.model_id, decided.tier)
            .unwrap_or_else(|| pricing::quote(&config.region, &self.model_id));
        self.service_tier = decided.tier;
        self.unpriced = decided.unpriced;
        let images = if quote.per_image_pico_usd.is_some() {
            images::requested(body)
        } else {
            0
        };
        let estimate = quota::estimate(body.len() as u64, limit.max_output_tokens, images, &quote);
        self.estimate = estimate.usage;
        self.priced_per_image = quote.per_image_pico_usd.is_some();
        // A partial allowance needs a stream the meter can price as it goes: ConverseStream
        // (Bedrock's own format), or an invoke stream of a model family it knows.
        let may_cut_off = key.limits.cut_off_streams
            && match self.operation {
                Operation::ConverseStream => true,
                Operation::InvokeWithResponseStream => {
                    model_family::invoke_stream_is_metered(&self.model_id)
                }
                Operation::Converse | Operation::Invoke => false,
            };
        self.reservation = quota::reserve(
            counters,
            key,
            &self.model_id,
            estimate,
            may_cut_off,
            self.quota_now_ms,
        )
        .inspect_err(|e| self.status = Some(e.kind.status()))?;
        if may_cut_off {
            self.cut_off = self.reservation.spend_allowance().map(|allowance| CutOff {
                allowance_pico_usd: allowance,
                quote,
                done: false,
            });
        }
        let path = format!(
            "/model/{}/{}",
            model_id::encode_path_label(&self.model_id),
            self.operation.path_segment()
        );
        let set_headers = signing::upstream_auth_headers(
            &config.upstream_auth,
            &config.region,
            &config.upstream_host,
            &path,
            body,
            now,
        )
        .inspect_err(|_| self.status = Some(ErrorKind::Internal.status()))?;
        self.sent_upstream = true;
        Ok(UpstreamRequest {
            path,
            authority: config.upstream_host.clone(),
            remove_headers: std::mem::take(&mut self.strip_headers),
            set_headers,
            body: limit.rewritten,
        })
    }

    /// The gateway answered this request itself (an error after admission).
    pub fn replied_locally(&mut self, status: u16) {
        self.status.get_or_insert(status);
    }

    /// The host answered in Bedrock's place once the request was on its way: Envoy's 504 when
    /// the route times out or its 503 when the upstream resets, a Spin host's failed upstream
    /// call. `reached`: the request may have reached Bedrock (not if the connection was never
    /// made). Then Bedrock may have run it to the end, and its estimate is billed.
    pub fn upstream_failed(&mut self, status: u16, reached: bool) {
        if self.status.is_none() {
            self.status = Some(status);
            self.host_answered = reached && self.sent_upstream;
        }
    }

    pub fn on_response_headers<'a>(
        &mut self,
        status: u16,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        self.status.get_or_insert(status);
        self.meter.on_response_headers(status, headers);
    }

    /// Observes a chunk of the response, which passes unchanged unless this stream is to be
    /// cut off: then the chunk is replaced by its complete frames plus a terminal exception
    /// frame, and everything after is dropped.
    pub fn on_response_body(&mut self, chunk: &[u8]) -> BodyVerdict {
        let ok = matches!(self.status, Some(200..=299));
        let request_bytes = self.request_bytes;
        let Some(cut) = self.cut_off.as_mut().filter(|_| ok) else {
            self.meter.on_body(chunk);
            return BodyVerdict::Pass;
        };
        if cut.done {
            return BodyVerdict::Drop;
        }
        // After each message: would what has been delivered cost more than the allowance?
        // (Estimated as for any cut stream.)
        let over = |r: &Reading| {
            cut.quote
                .cost(&record::billable(200, true, r, request_bytes, &Default::default()).0)
                > cut.allowance_pico_usd
        };
        let Some(end) = self.meter.on_body_until(chunk, over) else {
            return BodyVerdict::Pass;
        };
        cut.done = true;
        let mut out = chunk.get(..end).unwrap_or(chunk).to_vec();
        out.extend_from_slice(&eventstream::encode(
            &[
                (":message-type", "exception"),
                (":exception-type", CUT_OFF_EXCEPTION),
                (":content-type", "application/json"),
            ],
            br#"{"message":"The API key's budget is exhausted: this response was ended by the gateway."}"#,
        ));
        BodyVerdict::Replace(out)
    }

    /// The upstream body has ended: `true` when it ended inside an EventStream message. The
    /// host must then fail the client's response (Envoy: reset the stream; Spin: end the body
    /// with an error) rather than end it cleanly: an SDK takes a cleanly ended stream for a
    /// whole one (boto3 stops iterating without an error, and without the usage).
    pub fn upstream_ended_inside_a_message(&self) -> bool {
        let cut_off = matches!(&self.cut_off, Some(c) if c.done);
        !cut_off && self.meter.inside_a_message()
    }

    /// The usage record, once, when the exchange is over (completed, failed, or cancelled).
    /// `None` if it was already produced.
    ///
    /// This is also where the exchange's reservation is replaced by what was used and its
    /// concurrency slots are freed: hosts call it on every path (Envoy's `on_log`).
    pub fn finish(
        &mut self,
        config: &Config,
        counters: &dyn Counters,
        now_ms: u64,
    ) -> Option<UsageRecord> {
        if std::mem::replace(&mut self.finished, true) {
            return None;
        }
        let reading = self.meter.finish();
        // No status: the upstream never answered (reset, timeout, client gone first).
        let status = self.status.unwrap_or(0);
        let fallback = record::Fallback {
            estimate: self.estimate,
            // A non-stream answer is generated whole before it is sent; an unanswered request
            // may have run to its end.
            whole_estimate: !self.operation.is_stream() || status == 0 || self.host_answered,
            host_answered: self.host_answered,
            priced_per_image: self.priced_per_image,
        };
        let facts = record::Facts {
            request_id: self.request_id.as_deref(),
            key_id: &self.key_id,
            model: &self.model,
            model_id: &self.model_id,
            region: &config.region,
            operation: self.operation,
            status,
            sent_upstream: self.sent_upstream,
            reading: &reading,
            request_bytes: self.request_bytes,
            latency_ms: now_ms.saturating_sub(self.started_ms),
            service_tier: self.service_tier,
        };
        let mut record = record::make_with(facts, &fallback);
        record.unpriced_options = self.unpriced.iter().map(|u| u.name()).collect();
        if matches!(&self.cut_off, Some(c) if c.done) {
            record.exception = Some(CUT_OFF_EXCEPTION.to_string());
        }
        let used = record.usage();
        let tokens = used.total_input().saturating_add(used.output_tokens);
        // The quota clock now: the test clock moves on with real time from where it was set.
        let quota_now_ms = self
            .quota_now_ms
            .saturating_add(now_ms.saturating_sub(self.started_ms));
        if let Err(e) =
            self.reservation
                .settle(counters, tokens, record.cost_pico_usd, quota_now_ms)
        {
            // The record still stands; the hosts log it as a quota problem.
            return Some(UsageRecord {
                problem: Some(format!("quota settlement failed: {e}")),
                ..record
            });
        }
        Some(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::hash_key;
    use crate::counters::CasCounters;
    use crate::store::memory::MemoryStore;

    const HAIKU: &str = "us.anthropic.claude-haiku-4-5-20251001-v1:0";

    fn config() -> Config {
        let json = format!(
            r#"{{"region":"us-east-1","upstream_host":"127.0.0.1:9100",
                "aliases":{{"claude-fast":"{HAIKU}"}},
                "api_keys":[{{"id":"a","sha256":"{}","models":["*"]}},
                            {{"id":"b","sha256":"{}","models":["claude-fast"]}}],
                "credentials":{{"type":"inline","access_key_id":"AK","secret_access_key":"SK","session_token":"T"}},
                "max_request_body_bytes":100}}"#,
            hex::encode(hash_key("key-a")),
            hex::encode(hash_key("key-b")),
        );
        Config::parse(json.as_bytes(), &|_| None).unwrap()
    }

    fn admit_as(key: &str, path: &str, extra: &[(&str, &str)]) -> Admission {
        let auth = format!("Bearer {key}");
        let mut headers = vec![
            ("authorization", auth.as_str()),
            ("x-amz-date", "x"),
            ("x-request-id", "rid-1"),
        ];
        headers.extend_from_slice(extra);
        admit(&config(), "POST", path, &headers, 1_000)
    }

    fn reply_of(a: Admission) -> (u16, String) {
        match a {
            Admission::Refused { error, .. } => {
                let r = error.to_bedrock_reply();
                let ty = r
                    .headers
                    .iter()
                    .find(|(n, _)| *n == "x-amzn-errortype")
                    .map(|(_, v)| v.clone());
                (r.status, ty.unwrap_or_default())
            }
            _ => panic!("expected a reply"),
        }
    }

    fn forwarded(a: Admission) -> Box<Exchange> {
        match a {
            Admission::Forward(ex) => ex,
            _ => panic!("expected a forward"),
        }
    }

    #[test]
    fn alias_is_resolved_and_request_rewritten() {
        let mut ex = forwarded(admit_as("key-a", "/model/claude-fast/converse-stream", &[]));
        assert_eq!(
            (ex.key_id.as_str(), ex.model.as_str(), ex.model_id.as_str()),
            ("a", "claude-fast", HAIKU)
        );
        assert_eq!(ex.request_id.as_deref(), Some("rid-1"));
        let up = ex
            .upstream_request(
                &config(),
                &CasCounters(&MemoryStore::default()),
                b"{}",
                SystemTime::UNIX_EPOCH,
            )
            .unwrap();
        assert_eq!(
            up.path,
            "/model/us.anthropic.claude-haiku-4-5-20251001-v1%3A0/converse-stream"
        );
        assert_eq!(up.authority, "127.0.0.1:9100");
        assert_eq!(
            up.remove_headers,
            vec!["authorization".to_string(), "x-amz-date".to_string()]
        );
        let names: Vec<_> = up.set_headers.iter().map(|(n, _)| n.as_str()).collect();
        assert!(
            names.contains(&"authorization") && names.contains(&"x-amz-security-token"),
            "{names:?}"
        );
    }

    #[test]
    fn upstream_headers_for_hosts_that_build_the_request() {
        let mut ex = forwarded(admit_as("key-a", "/model/claude-fast/converse", &[]));
        let up = ex
            .upstream_request(
                &config(),
                &CasCounters(&MemoryStore::default()),
                b"{}",
                SystemTime::UNIX_EPOCH,
            )
            .unwrap();
        let client = [
            ("Host", "gateway.local"),
            ("authorization", "Bearer key-a"),
            ("x-api-key", "key-a"),
            ("x-amz-date", "old"),
            ("content-type", "application/json"),
            ("x-amzn-bedrock-trace", "ENABLED"),
            ("connection", "keep-alive"),
            ("content-length", "2"),
            ("x-tollgate-test-now-ms", "5"),
            ("x-envoy-retry-on", "5xx"),
            ("cookie", "c=1"),
            ("user-agent", "Boto3/1.40"),
        ];
        let out = up.headers_from(client.map(|(n, v)| (n, v.as_bytes())));
        let names: Vec<_> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert!(
            names.contains(&"content-type") && names.contains(&"x-amzn-bedrock-trace"),
            "{names:?}"
        );
        assert!(names.contains(&"user-agent"), "{names:?}");
        for gone in [
            "host",
            "x-api-key",
            "connection",
            "content-length",
            "x-tollgate-test-now-ms",
            "x-envoy-retry-on",
            "cookie",
        ] {
            assert!(!names.contains(&gone), "{gone} in {names:?}");
        }
        let auth: Vec<_> = out.iter().filter(|(n, _)| n == "authorization").collect();
        assert_eq!(auth.len(), 1);
        assert!(auth[0].1.starts_with(b"AWS4-HMAC-SHA256"));
        assert_eq!(out.iter().filter(|(n, _)| n == "x-amz-date").count(), 1);
    }

    #[test]
    fn hop_by_hop_headers_cover_wasi_http_forbidden_ones() {
        // wasmtime-wasi-http's DEFAULT_FORBIDDEN_HEADERS: a Spin component that copies any of
        // them into a request or response fails the whole exchange.
        for name in [
            "host",
            "connection",
            "keep-alive",
            "proxy-authenticate",
            "proxy-authorization",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
            "http2-settings",
        ] {
            assert!(is_hop_by_hop(name), "{name}");
        }
        for name in [
            "content-type",
            "x-amzn-requestid",
            "x-amzn-errortype",
            "retry-after",
        ] {
            assert!(!is_hop_by_hop(name), "{name}");
        }
    }

    #[test]
    fn allowlist_covers_an_alias_and_its_model_id() {
        forwarded(admit_as("key-b", "/model/claude-fast/converse", &[]));
        forwarded(admit_as(
            "key-b",
            &format!(
                "/model/{}/invoke",
                crate::model_id::encode_path_label(HAIKU)
            ),
            &[],
        ));
        assert_eq!(
            reply_of(admit_as(
                "key-b",
                "/model/amazon.nova-lite-v1%3A0/converse",
                &[]
            )),
            (403, "AccessDeniedException".into())
        );
    }

    #[test]
    fn refusals_in_bedrock_dialect() {
        assert_eq!(
            reply_of(admit_as("nope", "/model/claude-fast/converse", &[])),
            (401, "UnrecognizedClientException".into())
        );
        assert_eq!(
            reply_of(admit_as("key-a", "/model/claude-slow/converse", &[])),
            (400, "ValidationException".into())
        );
        assert_eq!(
            reply_of(admit_as("key-a", "/model/claude-fast/count-tokens", &[])),
            (404, "UnknownOperationException".into())
        );
        assert_eq!(
            reply_of(admit_as("key-a", "/model/%ff/converse", &[])),
            (400, "ValidationException".into())
        );
        let none = admit(&config(), "POST", "/model/claude-fast/converse", &[], 0);
        assert_eq!(reply_of(none), (401, "UnrecognizedClientException".into()));
    }

    #[test]
    fn models_route_lists_what_the_key_may_use() {
        let auth = [("x-api-key", "key-b")];
        let Admission::Reply(r) = admit(&config(), "GET", "/v1/models", &auth, 0) else {
            panic!("expected a reply")
        };
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["object"], "list");
        let ids: Vec<_> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["claude-fast", HAIKU]);
    }

    #[test]
    fn usage_route_names_the_callers_key() {
        let auth = [("x-api-key", "key-b")];
        assert!(
            matches!(admit(&config(), "GET", "/usage", &auth, 0), Admission::Usage { key_id, .. } if key_id == "b")
        );
    }

    #[test]
    fn oversized_bodies_are_refused_and_recorded_unbilled() {
        let mut ex = forwarded(admit_as(
            "key-a",
            "/model/claude-fast/converse",
            &[("content-length", "101")],
        ));
        assert_eq!(
            ex.check_declared_body_size().unwrap_err().kind,
            ErrorKind::BodyTooLarge
        );
        let record = ex
            .finish(&config(), &CasCounters(&MemoryStore::default()), 1_050)
            .unwrap();
        assert_eq!(
            (record.status, record.cost_pico_usd, record.latency_ms),
            (413, 0, 50)
        );
        assert!(
            ex.finish(&config(), &CasCounters(&MemoryStore::default()), 1_060)
                .is_none(),
            "one record per exchange"
        );

        let mut ex = forwarded(admit_as("key-a", "/model/claude-fast/converse", &[]));
        ex.check_body_size(100).unwrap();
        assert!(ex
            .upstream_request(
                &config(),
                &CasCounters(&MemoryStore::default()),
                &[b' '; 101],
                SystemTime::UNIX_EPOCH
            )
            .is_err());
    }

    #[test]
    fn a_model_respelt_is_the_same_model_for_allowlists_and_limits() {
        let json = format!(
            r#"{{"region":"us-east-1","upstream_host":"h","aliases":{{"claude-fast":"{HAIKU}"}},
                "api_keys":[{{"id":"a","sha256":"{}","models":["*"],
                  "limits":{{"models":{{"claude-fast":{{"requests_per_minute":1}}}}}}}},
                  {{"id":"b","sha256":"{}","models":["claude-fast"]}}],
                "credentials":{{"type":"inline","access_key_id":"AK","secret_access_key":"SK"}}}}"#,
            hex::encode(hash_key("key-a")),
            hex::encode(hash_key("key-b")),
        );
        let config = Config::parse(json.as_bytes(), &|_| None).unwrap();
        let store = MemoryStore::default();
        let counters = CasCounters(&store);
        let send = |key: &str, model: &str| {
            let path = format!("/model/{}/converse", model_id::encode_path_label(model));
            match admit(&config, "POST", &path, &[("x-api-key", key)], 1_000) {
                Admission::Forward(mut ex) => ex
                    .upstream_request(&config, &counters, b"{}", SystemTime::UNIX_EPOCH)
                    .map(|up| (ex.model_id.clone(), up.path))
                    .map_err(|e| e.kind),
                Admission::Refused { error, .. } => Err(error.kind),
                _ => panic!("unexpected admission"),
            }
        };
        let spellings = [
            "US.ANTHROPIC.CLAUDE-HAIKU-4-5-20251001-V1:0".to_string(),
            format!("arn:aws:bedrock:us-east-1:123456789012:inference-profile/{HAIKU}"),
            format!("arn:aws:bedrock:us-east-1:999999999999:inference-profile/{HAIKU}"),
            HAIKU.to_string(),
        ];
        // Key a: one request a minute on this model, however it is spelt.
        let (sent, path) = send("key-a", "claude-fast").unwrap();
        assert_eq!(sent, HAIKU);
        assert!(
            path.starts_with("/model/us.anthropic.claude-haiku"),
            "{path}"
        );
        for model in &spellings {
            assert_eq!(
                send("key-a", model),
                Err(ErrorKind::RequestRateLimited),
                "{model}"
            );
        }
        // Key b may use the model behind claude-fast, however it is spelt, and nothing else.
        for model in &spellings {
            assert_eq!(
                send("key-b", model).map(|(id, _)| id),
                Ok(HAIKU.to_string())
            );
        }
        assert_eq!(
            send(
                "key-b",
                "arn:aws:bedrock:us-east-1:1:inference-profile/us.anthropic.claude-sonnet-4-5-20250929-v1:0"
            ),
            Err(ErrorKind::ModelNotAllowed)
        );
        // An ARN of another region cannot be served here.
        assert_eq!(
            send(
                "key-a",
                &format!("arn:aws:bedrock:eu-west-1:1:inference-profile/{HAIKU}")
            ),
            Err(ErrorKind::BadRequest)
        );
    }

    #[test]
    fn compressed_request_bodies_are_refused() {
        assert_eq!(
            reply_of(admit_as(
                "key-a",
                "/model/claude-fast/converse",
                &[("content-encoding", "gzip")]
            )),
            (400, "ValidationException".into())
        );
        forwarded(admit_as(
            "key-a",
            "/model/claude-fast/converse",
            &[("content-encoding", "identity")],
        ));
    }

    #[test]
    fn the_test_clock_is_off_by_default_and_clamped_when_on() {
        let at = |hooks: bool, value: &str| {
            let mut c = config();
            c.test_hooks = hooks;
            let headers = [("x-api-key", "key-a"), (TEST_CLOCK_HEADER, value)];
            match admit(&c, "POST", "/model/claude-fast/converse", &headers, 1_000) {
                Admission::Forward(ex) => ex.quota_now_ms,
                _ => panic!("not admitted"),
            }
        };
        assert_eq!(at(false, "5000"), 1_000);
        assert_eq!(at(true, "1795348800000"), 1_795_348_800_000);
        assert_eq!(at(true, "not a number"), 1_000);
        assert_eq!(at(true, "18446744073709551615"), MAX_TEST_CLOCK_MS);
        assert_eq!(at(true, "0"), 0);
    }

    #[test]
    fn a_cancelled_exchange_after_sending_is_estimated() {
        let mut ex = forwarded(admit_as("key-a", "/model/claude-fast/converse-stream", &[]));
        ex.upstream_request(
            &config(),
            &CasCounters(&MemoryStore::default()),
            // 80 bytes of JSON.
            format!(r#"{{"messages":"{}"}}"#, "x".repeat(64)).as_bytes(),
            SystemTime::UNIX_EPOCH,
        )
        .unwrap();
        let record = ex
            .finish(&config(), &CasCounters(&MemoryStore::default()), 2_000)
            .unwrap();
        assert_eq!(record.status, 0);
        assert_eq!(record.usage_source, crate::record::UsageSource::Estimated);
        assert_eq!(record.input_tokens, 20);
        assert!(record.cost_pico_usd > 0);
    }
}

#[cfg(test)]
mod unanswered_tests {
    //! Exchanges Bedrock ran (or may have run) whose usage never came back are billed the
    //! reservation's estimate; the budget keeps exactly what was billed.
    use super::*;
    use crate::auth::hash_key;
    use crate::counters::CasCounters;
    use crate::record::UsageSource;
    use crate::store::memory::MemoryStore;

    const HAIKU: &str = "us.anthropic.claude-haiku-4-5-20251001-v1:0";
    const BODY: &[u8] = br#"{"messages":[],"inferenceConfig":{"maxTokens":100}}"#;
    /// The same length, in Anthropic's format (`invoke`).
    const INVOKE_BODY: &[u8] = br#"{"messages":[],"max_tokens":100,"system":"abcdefgh"}"#;

    fn config() -> Config {
        let json = format!(
            r#"{{"region":"us-east-1","upstream_host":"h",
                "api_keys":[{{"id":"a","sha256":"{}","models":["*"],
                  "limits":{{"budget":{{"usd":"10","period":"total"}}}}}}],
                "credentials":{{"type":"inline","access_key_id":"AK","secret_access_key":"SK"}}}}"#,
            hex::encode(hash_key("k"))
        );
        Config::parse(json.as_bytes(), &|_| None).unwrap()
    }

    /// Admits and sends a request on `operation`, lets `end` play the response, finishes.
    fn exchange(operation: &str, end: impl FnOnce(&mut Exchange)) -> (UsageRecord, u64) {
        let config = config();
        let store = MemoryStore::default();
        let counters = CasCounters(&store);
        let path = format!("/model/claude-x/{operation}")
            .replace("claude-x", &crate::model_id::encode_path_label(HAIKU));
        let Admission::Forward(mut ex) =
            admit(&config, "POST", &path, &[("authorization", "Bearer k")], 0)
        else {
            panic!("not admitted")
        };
        let body = if operation.starts_with("invoke") {
            INVOKE_BODY
        } else {
            BODY
        };
        ex.upstream_request(&config, &counters, body, SystemTime::UNIX_EPOCH)
            .unwrap();
        end(&mut ex);
        let record = ex.finish(&config, &counters, 1).unwrap();
        let spent = counters
            .read(
                &quota::counter_name("a", crate::limits::Scope::Key, "", "spend"),
                0,
            )
            .unwrap();
        (record, u64::try_from(spent).unwrap())
    }

    fn estimate() -> Usage {
        Usage {
            input_tokens: (BODY.len() as u64).div_ceil(4),
            output_tokens: 100,
            ..Default::default()
        }
    }

    fn assert_estimate_billed(record: &UsageRecord, spent: u64) {
        assert_eq!(record.usage_source, UsageSource::Estimated);
        assert_eq!(record.usage(), estimate());
        assert_eq!(
            record.cost_pico_usd,
            pricing::quote("us-east-1", HAIKU).cost(&estimate())
        );
        assert_eq!(
            spent, record.cost_pico_usd,
            "the budget keeps what was billed"
        );
    }

    #[test]
    fn a_cancelled_call_is_billed_its_estimate() {
        for operation in ["converse", "converse-stream", "invoke"] {
            let (record, spent) = exchange(operation, |_| {});
            assert_eq!(record.status, 0, "{operation}");
            assert_estimate_billed(&record, spent);
        }
    }

    #[test]
    fn a_host_reply_after_sending_is_billed_its_estimate_unless_nothing_was_reached() {
        let (record, spent) = exchange("converse", |ex| ex.upstream_failed(504, true));
        assert_eq!(record.status, 504);
        assert_estimate_billed(&record, spent);
        // The connection was never made: Bedrock saw nothing.
        let (record, spent) = exchange("converse", |ex| ex.upstream_failed(503, false));
        assert_eq!(
            (
                record.status,
                record.usage_source,
                record.cost_pico_usd,
                spent
            ),
            (503, UsageSource::None, 0, 0)
        );
        // Bedrock's own refusal stays unbilled.
        let (record, spent) = exchange("converse", |ex| {
            ex.on_response_headers(429, [("x-amzn-errortype", "ThrottlingException")]);
            ex.on_response_body(br#"{"message":"slow down"}"#);
        });
        assert_eq!((record.usage_source, spent), (UsageSource::None, 0));
    }

    #[test]
    fn a_non_stream_answer_cut_before_its_usage_is_billed_its_estimate() {
        let (record, spent) = exchange("converse", |ex| {
            ex.on_response_headers(200, [("content-type", "application/json")]);
            ex.on_response_body(br#"{"output":{"message":{"content":[{"text":"w0 w1"#);
        });
        assert_eq!(record.status, 200);
        assert_estimate_billed(&record, spent);
    }

    #[test]
    fn a_stream_cut_mid_way_is_billed_what_it_delivered() {
        let (record, _) = exchange("converse-stream", |ex| {
            ex.on_response_headers(
                200,
                [("content-type", "application/vnd.amazon.eventstream")],
            );
            ex.on_response_body(&eventstream::encode(
                &[
                    (":message-type", "event"),
                    (":event-type", "contentBlockDelta"),
                    (":content-type", "application/json"),
                ],
                br#"{"contentBlockIndex":0,"delta":{"text":"eight by"}}"#,
            ));
        });
        assert_eq!(record.usage_source, UsageSource::Estimated);
        assert_eq!(
            (record.input_tokens, record.output_tokens),
            (estimate().input_tokens, 2)
        );
    }
}

#[cfg(test)]
mod image_tests {
    //! Image models are billed per image, and refused when they have no per-image price.
    use super::*;
    use crate::auth::hash_key;
    use crate::counters::CasCounters;
    use crate::store::memory::MemoryStore;

    fn config(budget_usd: &str) -> Config {
        let json = format!(
            r#"{{"region":"us-east-1","upstream_host":"h",
                "api_keys":[{{"id":"a","sha256":"{}","models":["*"],
                  "limits":{{"budget":{{"usd":"{budget_usd}","period":"total"}}}}}}],
                "credentials":{{"type":"inline","access_key_id":"AK","secret_access_key":"SK"}}}}"#,
            hex::encode(hash_key("k"))
        );
        Config::parse(json.as_bytes(), &|_| None).unwrap()
    }

    fn admit_model(config: &Config, model_id: &str) -> Admission {
        let path = format!(
            "/model/{}/invoke",
            crate::model_id::encode_path_label(model_id)
        );
        admit(config, "POST", &path, &[("authorization", "Bearer k")], 0)
    }

    /// Invokes `model_id` with `request`, answered by `response`; the record and the spend.
    fn invoke(
        config: &Config,
        model_id: &str,
        request: &str,
        response: &str,
    ) -> Result<(UsageRecord, i64), GatewayError> {
        let store = MemoryStore::default();
        let counters = CasCounters(&store);
        let Admission::Forward(mut ex) = admit_model(config, model_id) else {
            panic!("not admitted")
        };
        ex.upstream_request(
            config,
            &counters,
            request.as_bytes(),
            SystemTime::UNIX_EPOCH,
        )?;
        ex.on_response_headers(200, [("content-type", "application/json")]);
        ex.on_response_body(response.as_bytes());
        let record = ex.finish(config, &counters, 1).unwrap();
        let spent = counters
            .read(
                &quota::counter_name("a", crate::limits::Scope::Key, "", "spend"),
                0,
            )
            .unwrap();
        Ok((record, spent))
    }

    const PICO_PER_USD: u64 = 1_000_000_000_000;

    #[test]
    fn images_are_billed_per_image_from_the_response() {
        let config = config("1");
        // litellm: Nova Canvas $0.06, Titan Image Generator v2 $0.008, SD3.5 Large $0.08,
        // SDXL 1.0 $0.04 / $0.08 (50 / more steps: the higher, never under).
        for (model_id, request, response, images, usd_per_image_milli) in [
            (
                "amazon.nova-canvas-v1:0",
                r#"{"taskType":"TEXT_IMAGE","textToImageParams":{"text":"a cat"},"imageGenerationConfig":{"numberOfImages":2}}"#,
                r#"{"images":["iVBORw0KGgo=","iVBORw0KGgo="],"error":null}"#,
                2,
                60,
            ),
            (
                "amazon.titan-image-generator-v2:0",
                r#"{"taskType":"TEXT_IMAGE","textToImageParams":{"text":"a cat"},"imageGenerationConfig":{"numberOfImages":3}}"#,
                r#"{"images":["a","b","c"],"error":null}"#,
                3,
                8,
            ),
            (
                "stability.sd3-5-large-v1:0",
                r#"{"prompt":"a cat"}"#,
                r#"{"seeds":[7],"finish_reasons":[null],"images":["iVBORw0KGgo="]}"#,
                1,
                80,
            ),
            (
                "stability.stable-diffusion-xl-v1",
                r#"{"text_prompts":[{"text":"a cat"}],"samples":1}"#,
                r#"{"result":"success","artifacts":[{"seed":1,"base64":"iVBORw0KGgo=","finishReason":"SUCCESS"}]}"#,
                1,
                80,
            ),
        ] {
            let (record, spent) = invoke(&config, model_id, request, response).unwrap();
            let cost = images * usd_per_image_milli * PICO_PER_USD / 1000;
            assert_eq!(record.cost_pico_usd, cost, "{model_id}");
            assert_eq!(
                record.usage_source,
                crate::record::UsageSource::Reported,
                "{model_id}"
            );
            assert_eq!(spent, i64::try_from(cost).unwrap(), "{model_id}");
        }
    }

    #[test]
    fn the_reservation_counts_the_images_requested() {
        // $0.10 covers one Nova Canvas image ($0.06), not two.
        let config = config("0.1");
        let request = |n: u32| {
            format!(
                r#"{{"taskType":"TEXT_IMAGE","textToImageParams":{{"text":"a cat"}},"imageGenerationConfig":{{"numberOfImages":{n}}}}}"#
            )
        };
        let one = r#"{"images":["a"],"error":null}"#;
        invoke(&config, "amazon.nova-canvas-v1:0", &request(1), one).unwrap();
        let err = invoke(&config, "amazon.nova-canvas-v1:0", &request(2), one).unwrap_err();
        assert_eq!(err.kind, ErrorKind::BudgetExhausted);
    }

    #[test]
    fn an_image_answer_too_large_to_read_is_billed_the_images_requested() {
        // Four 2048x2048 images do not fit the meter's 8 MiB parse cap: the count requested.
        let config = config("1");
        let image = "A".repeat(3 << 20);
        let response = format!(r#"{{"images":["{image}","{image}","{image}","{image}"]}}"#);
        let request = r#"{"taskType":"TEXT_IMAGE","textToImageParams":{"text":"a cat"},"imageGenerationConfig":{"numberOfImages":4,"width":2048,"height":2048}}"#;
        let (record, spent) =
            invoke(&config, "amazon.nova-canvas-v1:0", request, &response).unwrap();
        assert_eq!(record.usage_source, crate::record::UsageSource::Estimated);
        assert_eq!(
            (record.images, record.input_tokens, record.output_tokens),
            (4, 0, 0)
        );
        assert_eq!(record.cost_pico_usd, 4 * 60 * PICO_PER_USD / 1000);
        assert_eq!(spent, i64::try_from(record.cost_pico_usd).unwrap());
    }

    #[test]
    fn image_models_without_a_per_image_price_are_refused() {
        for model_id in [
            "stability.unreleased-image-model-v9:0",
            "amazon.nova-canvas-v9:0",
            "us.amazon.titan-image-generator-v7:0",
        ] {
            match admit_model(&config("1"), model_id) {
                Admission::Refused { error, .. } => {
                    let reply = error.to_bedrock_reply();
                    assert_eq!(reply.status, 400, "{model_id}");
                    assert!(
                        reply
                            .headers
                            .iter()
                            .any(|(n, v)| *n == "x-amzn-errortype" && v == "ValidationException"),
                        "{model_id}"
                    );
                    assert!(error.message.contains(model_id), "{}", error.message);
                }
                _ => panic!("{model_id} admitted"),
            }
        }
    }
}

#[cfg(test)]
mod cut_off_tests {
    use super::*;
    use crate::auth::hash_key;
    use crate::counters::CasCounters;
    use crate::eventstream::Decoder;
    use crate::store::memory::MemoryStore;

    fn config() -> Config {
        let json = format!(
            r#"{{"region":"us-east-1","upstream_host":"h",
                "api_keys":[{{"id":"a","sha256":"{}","models":["*"],
                  "limits":{{"budget":{{"usd":"0.0001","period":"total"}},"cut_off_streams":true}}}}],
                "credentials":{{"type":"inline","access_key_id":"AK","secret_access_key":"SK"}}}}"#,
            hex::encode(hash_key("k"))
        );
        Config::parse(json.as_bytes(), &|_| None).unwrap()
    }

    fn delta(text: &str) -> Vec<u8> {
        eventstream::encode(
            &[
                (":message-type", "event"),
                (":event-type", "contentBlockDelta"),
                (":content-type", "application/json"),
            ],
            format!(r#"{{"contentBlockIndex":0,"delta":{{"text":"{text}"}}}}"#).as_bytes(),
        )
    }

    /// Feeds `body` in `chunk`-byte pieces; returns what the client receives.
    fn run(chunk: usize) -> (Vec<u8>, UsageRecord) {
        // $0.0001 buys ~10 input and ~18 output tokens of Haiku 4.5; each delta carries 19 bytes.
        let body: Vec<u8> = (0..40).flat_map(|i| delta(&format!("{i:019}"))).collect();
        run_stream(
            &config(),
            "/model/us.anthropic.claude-haiku-4-5-20251001-v1%3A0/converse-stream",
            br#"{"inferenceConfig":{"maxTokens":1000}}"#,
            &body,
            chunk,
        )
    }

    /// Streams `body` through an exchange admitted for `path`, in `chunk`-byte pieces.
    fn run_stream(
        config: &Config,
        path: &str,
        request: &[u8],
        body: &[u8],
        chunk: usize,
    ) -> (Vec<u8>, UsageRecord) {
        let store = MemoryStore::default();
        let counters = CasCounters(&store);
        let Admission::Forward(mut ex) =
            admit(config, "POST", path, &[("authorization", "Bearer k")], 0)
        else {
            panic!("not admitted")
        };
        ex.upstream_request(config, &counters, request, SystemTime::UNIX_EPOCH)
            .unwrap();
        ex.on_response_headers(
            200,
            [("content-type", "application/vnd.amazon.eventstream")],
        );
        let mut received = Vec::new();
        for piece in body.chunks(chunk) {
            match ex.on_response_body(piece) {
                BodyVerdict::Pass => received.extend_from_slice(piece),
                BodyVerdict::Replace(bytes) => received.extend_from_slice(&bytes),
                BodyVerdict::Drop => {}
            }
        }
        let record = ex.finish(config, &counters, 1).unwrap();
        (received, record)
    }

    /// A stream whose body ends inside a message must not end cleanly at the client; one that
    /// ends between messages, or after the gateway's own terminal frame, ends as it is.
    #[test]
    fn an_upstream_body_that_ends_inside_a_message_is_flagged() {
        let config = config();
        let path = "/model/us.anthropic.claude-haiku-4-5-20251001-v1%3A0/converse-stream";
        let flagged = |body: &[u8], budget_cut: bool| {
            let store = MemoryStore::default();
            let counters = CasCounters(&store);
            let Admission::Forward(mut ex) =
                admit(&config, "POST", path, &[("authorization", "Bearer k")], 0)
            else {
                panic!("not admitted")
            };
            let request: &[u8] = if budget_cut {
                br#"{"inferenceConfig":{"maxTokens":1000}}"#
            } else {
                br#"{"inferenceConfig":{"maxTokens":1}}"#
            };
            ex.upstream_request(&config, &counters, request, SystemTime::UNIX_EPOCH)
                .unwrap();
            ex.on_response_headers(200, []);
            for piece in body.chunks(7) {
                ex.on_response_body(piece);
            }
            ex.upstream_ended_inside_a_message()
        };
        let whole: Vec<u8> = (0..3).flat_map(|i| delta(&format!("{i}"))).collect();
        assert!(!flagged(&whole, false));
        assert!(flagged(&whole[..whole.len() - 5], false));
        assert!(flagged(&whole[..3], false), "inside the prelude");
        // Cut off by the budget: the client got a terminal frame; what follows is dropped.
        let long: Vec<u8> = (0..40).flat_map(|i| delta(&format!("{i:019}"))).collect();
        assert!(!flagged(&long[..long.len() - 5], true));
    }

    /// An InvokeWithResponseStream `chunk` event wrapping a model event.
    fn invoke_chunk(model_event: &str) -> Vec<u8> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(model_event);
        eventstream::encode(
            &[
                (":message-type", "event"),
                (":event-type", "chunk"),
                (":content-type", "application/json"),
            ],
            format!(r#"{{"bytes":"{b64}","p":"abc"}}"#).as_bytes(),
        )
    }

    fn events_of(received: &[u8]) -> Vec<String> {
        let mut kinds = Vec::new();
        let mut decoder = Decoder::default();
        decoder
            .push(received, |m| {
                kinds.push(m.exception_type().unwrap_or("event").to_string())
            })
            .unwrap_or_else(|e| panic!("the client got a broken stream: {e}"));
        assert_eq!(decoder.buffered(), 0, "a partial frame reached the client");
        kinds
    }

    #[test]
    fn a_mistral_invoke_stream_is_cut_off_too() {
        // Mistral's chunks carry `outputs[].text`: 19 bytes each. $0.0001 buys ~9 input and
        // ~5 output tokens of Mistral Large (2402).
        let body: Vec<u8> = (0..40)
            .flat_map(|i| {
                invoke_chunk(&format!(
                    r#"{{"outputs":[{{"text":"{i:019}","stop_reason":null}}]}}"#
                ))
            })
            .collect();
        for chunk in [1, 13, 100_000] {
            let (received, record) = run_stream(
                &config(),
                "/model/mistral.mistral-large-2402-v1%3A0/invoke-with-response-stream",
                br#"{"prompt":"x","max_tokens":1000}"#,
                &body,
                chunk,
            );
            let kinds = events_of(&received);
            assert_eq!(kinds.last().map(String::as_str), Some(CUT_OFF_EXCEPTION));
            let events = kinds.len() - 1;
            assert!((1..40).contains(&events), "{events} chunks delivered");
            assert_eq!(record.output_tokens, (19 * events as u64).div_ceil(4));
            assert_eq!(record.exception.as_deref(), Some(CUT_OFF_EXCEPTION));
        }
    }

    #[test]
    fn a_stream_the_meter_cannot_read_gets_no_partial_allowance() {
        let json = format!(
            r#"{{"region":"us-east-1","upstream_host":"h",
                "api_keys":[{{"id":"a","sha256":"{}","models":["*"],
                  "limits":{{"budget":{{"usd":"0.01","period":"total"}},"cut_off_streams":true}}}}],
                "credentials":{{"type":"inline","access_key_id":"AK","secret_access_key":"SK"}}}}"#,
            hex::encode(hash_key("k"))
        );
        let config = Config::parse(json.as_bytes(), &|_| None).unwrap();
        let body = br#"{"prompt":"x","max_tokens":1000}"#;
        let attempt = |path: &str| {
            let store = MemoryStore::default();
            let counters = CasCounters(&store);
            let Admission::Forward(mut ex) =
                admit(&config, "POST", path, &[("authorization", "Bearer k")], 0)
            else {
                panic!("not admitted")
            };
            let result = ex
                .upstream_request(&config, &counters, body, SystemTime::UNIX_EPOCH)
                .map(|_| ());
            ex.finish(&config, &counters, 1);
            result
        };
        // The budget covers the input but not the whole estimate: a stream the meter reads is
        // admitted with what remains as its allowance...
        attempt("/model/mistral.mistral-large-2402-v1%3A0/invoke-with-response-stream").unwrap();
        // ...one it cannot read (an application inference profile's opaque ID names no model
        // family) would run unmetered to its end: it must fit whole, and does not.
        let opaque = crate::model_id::encode_path_label(
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4e5f6",
        );
        let err = attempt(&format!("/model/{opaque}/invoke-with-response-stream")).unwrap_err();
        assert_eq!(err.kind, ErrorKind::BudgetExhausted);
        // ConverseStream is Bedrock's own format whatever the model: metered.
        attempt(&format!("/model/{opaque}/converse-stream")).unwrap();
    }

    #[test]
    fn the_stream_ends_with_one_clean_exception_frame_at_any_chunking() {
        for chunk in [1, 7, 33, 64, 1000, 100_000] {
            let (received, record) = run(chunk);
            let mut kinds = Vec::new();
            let mut decoder = Decoder::default();
            decoder
                .push(&received, |m| {
                    kinds.push(m.exception_type().unwrap_or("event").to_string())
                })
                .unwrap_or_else(|e| panic!("chunk {chunk}: the client got a broken stream: {e}"));
            assert_eq!(
                decoder.buffered(),
                0,
                "chunk {chunk}: a partial frame reached the client"
            );
            assert_eq!(
                kinds.last().map(String::as_str),
                Some(CUT_OFF_EXCEPTION),
                "chunk {chunk}"
            );
            let events = kinds.len() - 1;
            assert!(
                (1..40).contains(&events),
                "chunk {chunk}: {events} events delivered"
            );
            assert_eq!(record.exception.as_deref(), Some(CUT_OFF_EXCEPTION));
            // Billed what was delivered: its 19 text bytes a delta, at 4 bytes a token.
            assert_eq!(
                record.output_tokens,
                (19 * events as u64).div_ceil(4),
                "chunk {chunk}"
            );
        }
    }
}

#[cfg(test)]
mod body_tests {
    use super::*;
    use crate::auth::hash_key;
    use crate::counters::CasCounters;
    use crate::store::memory::MemoryStore;

    const HAIKU: &str = "us.anthropic.claude-haiku-4-5-20251001-v1:0";

    /// A key capped at 50 output tokens, and one with a budget only.
    fn config() -> Config {
        let json = format!(
            r#"{{"region":"us-east-1","upstream_host":"h",
                "api_keys":[{{"id":"capped","sha256":"{}","models":["*"],"limits":{{"max_output_tokens":50}}}},
                            {{"id":"budget","sha256":"{}","models":["*"],
                              "limits":{{"budget":{{"usd":"100","period":"monthly"}}}}}}],
                "credentials":{{"type":"inline","access_key_id":"AK","secret_access_key":"SK"}},
                "max_request_body_bytes":1048576}}"#,
            hex::encode(hash_key("capped")),
            hex::encode(hash_key("budget")),
        );
        Config::parse(json.as_bytes(), &|_| None).unwrap()
    }

    /// What reaches Bedrock for `body` sent with `key` to `op` on `model`: the body sent, or
    /// the refusal.
    fn send(key: &str, model: &str, op: &str, body: &[u8]) -> Result<Vec<u8>, ErrorKind> {
        let config = config();
        let store = MemoryStore::default();
        let path = format!("/model/{}/{op}", model_id::encode_path_label(model));
        let Admission::Forward(mut ex) = admit(&config, "POST", &path, &[("x-api-key", key)], 0)
        else {
            panic!("not admitted")
        };
        ex.upstream_request(&config, &CasCounters(&store), body, SystemTime::UNIX_EPOCH)
            .map(|up| up.body.unwrap_or_else(|| body.to_vec()))
            .map_err(|e| e.kind)
    }

    fn json(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn bodies_json_parsers_disagree_on_are_refused() {
        let bom = [
            &b"\xef\xbb\xbf"[..],
            br#"{"inferenceConfig":{"maxTokens":5000}}"#,
        ]
        .concat();
        let cases: [&[u8]; 8] = [
            &bom,
            br#"{"inferenceConfig":{"maxTokens":5000}} {"x":1}"#,
            br#"{"inferenceConfig":{"maxTokens":5000}}garbage"#,
            br#"{"inferenceConfig":{"maxTokens":10},"inferenceConfig":{"maxTokens":5000}}"#,
            br#"{"inferenceConfig":{"maxTokens":10,"maxTokens":5000}}"#,
            br#"{"inferenceConfig":{"maxTokens":5000},"messages":[{"role":"user","content":[{"text":"\ud800"}]}]}"#,
            br#"{"inferenceConfig":{"maxTokens":5000},"m":{"a":1,"\u0061":2}}"#,
            b"[1,2]",
        ];
        for key in ["capped", "budget"] {
            for body in cases {
                assert_eq!(
                    send(key, HAIKU, "converse", body),
                    Err(ErrorKind::BadRequest),
                    "{key}: {}",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }

    #[test]
    fn every_field_that_sets_the_output_limit_is_clamped() {
        let out = send(
            "capped",
            HAIKU,
            "converse",
            br#"{"inferenceConfig":{"maxTokens":5000},"additionalModelRequestFields":{"max_tokens":9000,"max_completion_tokens":9000,"inferenceConfig":{"max_new_tokens":9000}}}"#,
        )
        .unwrap();
        let v = json(&out);
        assert_eq!(v["inferenceConfig"]["maxTokens"], 50);
        let extra = &v["additionalModelRequestFields"];
        assert_eq!(extra["max_tokens"], 50);
        assert_eq!(extra["max_completion_tokens"], 50);
        assert_eq!(extra["inferenceConfig"]["max_new_tokens"], 50);

        // Anthropic on invoke with both spellings; OpenAI-style max_completion_tokens.
        let out = send(
            "capped",
            HAIKU,
            "invoke",
            br#"{"max_tokens":10,"max_completion_tokens":9000,"messages":[]}"#,
        )
        .unwrap();
        let v = json(&out);
        assert_eq!(
            (v["max_tokens"].clone(), v["max_completion_tokens"].clone()),
            (10.into(), 50.into())
        );
        let out = send(
            "capped",
            "openai.gpt-oss-120b-1:0",
            "invoke",
            br#"{"max_completion_tokens":9000,"messages":[]}"#,
        )
        .unwrap();
        assert_eq!(json(&out)["max_completion_tokens"], 50);
    }

    #[test]
    fn a_service_tier_is_priced_and_unpriced_options_refused() {
        let config = config();
        let store = MemoryStore::default();
        let counters = CasCounters(&store);
        let run = |model: &str, headers: &[(&str, &str)], body: &[u8]| {
            let path = format!("/model/{}/converse", model_id::encode_path_label(model));
            let mut all = vec![("x-api-key", "budget")];
            all.extend_from_slice(headers);
            let Admission::Forward(mut ex) = admit(&config, "POST", &path, &all, 0) else {
                panic!("not admitted")
            };
            let sent = ex.upstream_request(&config, &counters, body, SystemTime::UNIX_EPOCH);
            ex.on_response_headers(200, [("content-type", "application/json")]);
            ex.on_response_body(
                br#"{"usage":{"inputTokens":1000,"outputTokens":100,"totalTokens":1100}}"#,
            );
            (
                sent.map(|_| ()).map_err(|e| e.kind),
                ex.finish(&config, &counters, 1),
            )
        };
        let nova = "amazon.nova-pro-v1:0";
        let (sent, record) = run(nova, &[], br#"{"serviceTier":{"type":"priority"}}"#);
        assert_eq!(sent, Ok(()));
        let record = record.unwrap();
        // litellm priority: 1.4E-6 input, 5.6E-6 output per token.
        assert_eq!(record.service_tier, ServiceTier::Priority);
        assert_eq!(record.cost_pico_usd, 1000 * 1_400_000 + 100 * 5_600_000);
        let (_, flex) = run(nova, &[("x-amzn-bedrock-service-tier", "flex")], b"{}");
        assert_eq!(
            flex.unwrap().cost_pico_usd,
            1000 * 400_000 + 100 * 1_600_000
        );
        // No priority price for Haiku, and the key does not allow unpriced options.
        let (sent, record) = run(HAIKU, &[("x-amzn-bedrock-service-tier", "priority")], b"{}");
        assert_eq!(sent, Err(ErrorKind::BadRequest));
        assert_eq!(record.unwrap().cost_pico_usd, 0);
        let (sent, _) = run(
            HAIKU,
            &[],
            br#"{"guardrailConfig":{"guardrailIdentifier":"g"}}"#,
        );
        assert_eq!(sent, Err(ErrorKind::BadRequest));
    }

    #[test]
    fn a_body_within_the_cap_passes_byte_for_byte() {
        let body = br#"{ "messages" : [], "inferenceConfig" : { "maxTokens" : 10 } }"#;
        assert_eq!(
            send("capped", HAIKU, "converse", body).unwrap(),
            body.to_vec()
        );
        assert_eq!(
            send("budget", HAIKU, "converse", body).unwrap(),
            body.to_vec()
        );
    }
}
