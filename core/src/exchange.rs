//! One request through the gateway, from request head to usage record, as a sans-IO state
//! machine. Hosts feed it headers, body bytes and time, and do what it says.

use std::time::SystemTime;

use crate::auth;
use crate::config::{ApiKey, Config};
use crate::counters::Counters;
use crate::error::{Dialect, ErrorKind, GatewayError};
use crate::eventstream;
use crate::meter::{Reading, UsageMeter};
use crate::model_id;
use crate::operation::Operation;
use crate::pricing;
use crate::quota::{self, Reservation};
use crate::record::{self, UsageRecord};
use crate::request_body;
use crate::route::{self, Route};
use crate::signing;

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

/// Request headers the client must never send upstream: its own credentials, and any AWS
/// signing headers, which Tollgate replaces with its own.
pub fn is_client_credential_header(name: &str) -> bool {
    name == "authorization" || name == "x-api-key" || name.starts_with("x-amz-")
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
        Some(v) if config.test_hooks => v.trim().parse().unwrap_or(now_ms),
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
    let model_id = match config.aliases.get(&model) {
        Some(target) => target.clone(),
        None if model_id::is_model_id(&model) => model.clone(),
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
    let strip_headers = headers
        .iter()
        .filter(|(n, _)| is_client_credential_header(n) || *n == TEST_CLOCK_HEADER)
        .map(|(n, _)| n.to_string())
        .collect();
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
        request_bytes: 0,
        status: None,
        sent_upstream: false,
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
    /// (Spin) rather than edit the client's (Envoy): the client's headers minus its
    /// credentials, hop-by-hop headers and `host` (wasi-http sets it from the URL and forbids
    /// it), plus the signature headers. `content-length` is left to the host's HTTP client.
    pub fn headers_from<'a>(
        &self,
        client: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = client
            .into_iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v))
            .filter(|(n, _)| {
                !n.starts_with(':')
                    && !is_hop_by_hop(n)
                    && !is_client_credential_header(n)
                    && n != TEST_CLOCK_HEADER
                    && !self
                        .set_headers
                        .iter()
                        .any(|(s, _)| s.eq_ignore_ascii_case(n))
            })
            .map(|(n, v)| (n, v.to_string()))
            .collect();
        out.extend(self.set_headers.iter().cloned());
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
    request_bytes: u64,
    status: Option<u16>,
    sent_upstream: bool,
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
        let limit = request_body::output_limit(body, self.operation, &self.model_id, cap);
        let body = limit.rewritten.as_deref().unwrap_or(body);
        let quote = pricing::quote(&config.region, &self.model_id);
        let estimate = quota::estimate(body.len() as u64, limit.max_output_tokens, &quote);
        let may_cut_off = key.limits.cut_off_streams && self.operation.is_stream();
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

    pub fn on_response_headers<'a>(
        &mut self,
        status: u16,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        self.status.get_or_insert(status);
        self.meter.on_response_headers(headers);
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
                .cost(&record::billable(200, true, r, request_bytes).0)
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
        let mut record = record::make(record::Facts {
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
        });
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
        ];
        let out = up.headers_from(client);
        let names: Vec<_> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert!(
            names.contains(&"content-type") && names.contains(&"x-amzn-bedrock-trace"),
            "{names:?}"
        );
        for gone in [
            "host",
            "x-api-key",
            "connection",
            "content-length",
            "x-tollgate-test-now-ms",
        ] {
            assert!(!names.contains(&gone), "{gone} in {names:?}");
        }
        let auth: Vec<_> = out.iter().filter(|(n, _)| n == "authorization").collect();
        assert_eq!(auth.len(), 1);
        assert!(auth[0].1.starts_with("AWS4-HMAC-SHA256"));
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
    fn a_cancelled_exchange_after_sending_is_estimated() {
        let mut ex = forwarded(admit_as("key-a", "/model/claude-fast/converse-stream", &[]));
        ex.upstream_request(
            &config(),
            &CasCounters(&MemoryStore::default()),
            &[b'x'; 80],
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
        let config = config();
        let store = MemoryStore::default();
        let counters = CasCounters(&store);
        let Admission::Forward(mut ex) = admit(
            &config,
            "POST",
            "/model/us.anthropic.claude-haiku-4-5-20251001-v1%3A0/converse-stream",
            &[("authorization", "Bearer k")],
            0,
        ) else {
            panic!("not admitted")
        };
        ex.upstream_request(
            &config,
            &counters,
            br#"{"inferenceConfig":{"maxTokens":1000}}"#,
            SystemTime::UNIX_EPOCH,
        )
        .unwrap();
        ex.on_response_headers(
            200,
            [("content-type", "application/vnd.amazon.eventstream")],
        );
        // $0.0001 buys ~10 input and ~18 output tokens of Haiku 4.5; each delta carries 19 bytes.
        let body: Vec<u8> = (0..40).flat_map(|i| delta(&format!("{i:019}"))).collect();
        let mut received = Vec::new();
        for piece in body.chunks(chunk) {
            match ex.on_response_body(piece) {
                BodyVerdict::Pass => received.extend_from_slice(piece),
                BodyVerdict::Replace(bytes) => received.extend_from_slice(&bytes),
                BodyVerdict::Drop => {}
            }
        }
        let record = ex.finish(&config, &counters, 1).unwrap();
        (received, record)
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
