//! One request through the gateway, from request head to usage record, as a sans-IO state
//! machine. Hosts feed it headers, body bytes and time, and do what it says:
//!
//! 1. [`admit`] the request head: a local answer, or an [`Exchange`] to forward;
//! 2. [`Exchange::upstream_request`] once the body is in: decompressed, translated from the
//!    client's dialect (its model resolved from the body), admitted against the key's limits,
//!    rewritten and signed — or answered locally ([`Outbound::Reply`]);
//! 3. [`Exchange::on_response_headers`] (what changes in the client's response head), then
//!    [`Exchange::on_response_body`] for each chunk and [`Exchange::on_response_end`] when the
//!    upstream body has ended;
//! 4. [`Exchange::end`] on every path: settled, counted, then logged ([`end`]).

mod admission;
pub mod end;
mod route;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use crate::accounting::guardrail;
use crate::accounting::pricing::{self, ServiceTier};
use crate::accounting::record::{self, UsageRecord};
use crate::accounting::totals::UsageTotals;
use crate::accounting::usage::Usage;
use crate::config::{ApiKey, Config};
use crate::dialect::bedrock::CUT_OFF_EXCEPTION;
use crate::dialect::{Api, Dialect, Target, Translation};
use crate::error::{ErrorKind, GatewayError, Reply};
use crate::quota::counters::Counters;
use crate::quota::{self, Notes, Renewal, Reservation, Unsettled};
use crate::request::body::{self as request_body, BodyOptions};
use crate::request::encoding::ContentEncoding;
use crate::request::guardrail::{self as key_guardrail, Guardrail};
use crate::request::images;
use crate::request::model_family;
use crate::request::operation::Operation;
use crate::request::options::{self, HeaderOptions, Unpriced};
use crate::response::meter::UsageMeter;
use crate::response::relay::Relay;
use crate::routing::attempts::AttemptLog;
use crate::routing::plan::{self, Plan, Planned};
use crate::routing::targets::Targets;
use crate::upstream::attempt;
use crate::upstream::credentials::{Fetched, Signer};
use crate::upstream::request::UpstreamRequest;
use crate::upstream::signing::SigningKeyCache;

pub use crate::dialect::ResponseHead;
pub use crate::request::identity::{Caller, Callers, VerifiedToken};
pub use crate::response::relay::{Relayed, Verdict};
pub use admission::{
    admit, admit_with, Admission, TestFault, MAX_TEST_CLOCK_MS, TEST_CLOCK_HEADER,
    TEST_FAULT_HEADER,
};
pub use end::{Effect, Ending, Level};
pub use route::Fallbacks;

/// One admitted request, from [`admit`] to [`Exchange::end`].
pub struct Exchange {
    /// The host's request ID (Envoy's `x-request-id`), to join records with access logs.
    pub request_id: Option<String>,
    pub key_id: String,
    /// The entry admitted: the document's (kept for the request, whatever updates come) or one
    /// created at runtime.
    key: Arc<ApiKey>,
    /// The model as the client named it. A translated route's is known once its body is read
    /// (empty until then).
    pub model: String,
    /// The Bedrock model ID sent upstream: for an alias of several targets, the target being
    /// tried, and once one answers, that one (the one billed).
    pub model_id: String,
    /// The model allowlists and per-model limits know the request by: the model ID, or an
    /// alias of several targets (`routing::targets::key_of`).
    scope: String,
    /// The targets of an alias of several, in list order.
    alias_targets: Option<Targets>,
    /// The targets planned and the attempts made, once the body is in.
    route: Option<route::Route>,
    /// The Bedrock operation (a translated route's is decided with its body).
    pub operation: Operation,
    /// The dialect the client speaks: its errors and its responses are in it.
    pub dialect: Dialect,
    /// The translated route, if the client does not speak Bedrock's own dialect.
    api: Option<Api>,
    /// The request headers the translation reads ([`Api::reads_headers`]).
    kept_headers: Vec<(String, String)>,
    content_encoding: ContentEncoding,
    /// What the translation left out of the client's request (for the record).
    dropped: Vec<String>,
    started_ms: u64,
    /// The clock quota windows and periods are read from.
    quota_now_ms: u64,
    reservation: Reservation,
    /// What the client gets of the response, and when the gateway ends a stream itself.
    relay: Relay,
    /// A stream's budget allowance, when it may be cut off (priced at the answering target).
    cut_off_allowance: Option<u64>,
    /// The key's guardrail, added to every attempt.
    guardrail: Option<Guardrail>,
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
    /// `test_hooks` only: a fault to inject ([`TestFault`]).
    test_fault: Option<TestFault>,
    /// What admission found or left for the host (reports of expired leases, failed undos).
    notes: Notes,
    /// The settlement's writes the store failed, once finished: handed to the host to retry.
    unsettled: Option<Unsettled>,
    /// The lease ran out before this exchange ended (said once).
    lapse_reported: bool,
}

/// What follows the request body: the request to Bedrock, or the gateway's own answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// Rewrite the request into this and let it go upstream.
    Upstream(UpstreamRequest),
    /// Answer with this; nothing goes upstream (a token count estimated locally).
    Reply(Reply),
}

impl Outbound {
    /// The upstream request (tests, and hosts that have no local answers to give).
    pub fn upstream(self) -> Option<UpstreamRequest> {
        match self {
            Self::Upstream(up) => Some(up),
            Self::Reply(_) => None,
        }
    }
}

impl Exchange {
    /// Whether the host is to stop dead now that the request is admitted
    /// ([`TestFault::TrapAfterAdmission`], `test_hooks` only): its reservation is taken and
    /// nothing will settle it.
    pub fn test_trap_after_admission(&self) -> bool {
        self.test_fault == Some(TestFault::TrapAfterAdmission) && self.sent_upstream
    }

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

    /// The upstream request for the complete `body`, signed at `now` (with the host's kept
    /// signing key, `signing_keys`), once the request is admitted against its key's limits
    /// (its estimated cost reserved in `counters`), or the answer the gateway gives itself.
    pub fn upstream_request(
        &mut self,
        config: &Config,
        counters: &dyn Counters,
        signing_keys: &mut SigningKeyCache,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Outbound, GatewayError> {
        self.upstream_request_with(config, counters, signing_keys, body, now, None)
    }

    /// [`Exchange::upstream_request`], signed with the credentials the host `fetched` when the
    /// configuration's come from an endpoint ([`Fetched`]). Without usable ones the request is
    /// refused with 503 before anything is reserved.
    ///
    /// A refusal here (`Err`, or a local [`Outbound::Reply`]) is already recorded as the
    /// exchange's status; hosts answer with [`GatewayError::to_reply`] in [`Exchange::dialect`].
    pub fn upstream_request_with(
        &mut self,
        config: &Config,
        counters: &dyn Counters,
        signing_keys: &mut SigningKeyCache,
        body: &[u8],
        now: SystemTime,
        fetched: Option<&Fetched>,
    ) -> Result<Outbound, GatewayError> {
        let prepared = self.prepare(config, counters, signing_keys, body, now, fetched);
        if let Err(e) = &prepared {
            self.status.get_or_insert(e.kind.status());
        }
        prepared
    }

    fn prepare(
        &mut self,
        config: &Config,
        counters: &dyn Counters,
        signing_keys: &mut SigningKeyCache,
        body: &[u8],
        now: SystemTime,
        fetched: Option<&Fetched>,
    ) -> Result<Outbound, GatewayError> {
        self.request_bytes = body.len() as u64;
        self.check_body_size(self.request_bytes)?;
        let now_ms = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let signer = Signer::for_request(&config.upstream_auth, fetched, now_ms)?;
        let key = self.key.clone();
        // What Bedrock gets: the body decompressed, then translated from the client's dialect.
        let mut body: Cow<'_, [u8]> = self.content_encoding.decode(body, self.body_limit)?;
        let mut attempt_headers: Vec<(String, String)> = Vec::new();
        if let Some(api) = self.api {
            let translated = {
                let request = api.read(&body)?;
                let resolved = admission::resolve_model(config, &key, request.model())?;
                self.model = resolved.model;
                // The translation is for the first target this request tries.
                self.model_id = match &resolved.targets {
                    Some(targets) => targets
                        .order(self.request_id.as_deref())
                        .first()
                        .and_then(|&i| targets.targets().get(i))
                        .map_or(resolved.model_id, |t| t.model_id.clone()),
                    None => resolved.model_id,
                };
                self.scope = resolved.scope;
                self.alias_targets = resolved.targets;
                request.translate(&Target {
                    config,
                    model_id: &self.model_id,
                    headers: &self.kept_headers,
                    now_ms,
                })?
            };
            match translated {
                Translation::Reply { reply, operation } => {
                    self.operation = operation;
                    self.status = Some(reply.status);
                    return Ok(Outbound::Reply(reply));
                }
                Translation::Bedrock(b) => {
                    self.operation = b.operation;
                    self.meter = UsageMeter::new(b.operation);
                    self.relay = Relay::new(b.response);
                    attempt_headers = b
                        .headers
                        .into_iter()
                        .map(|(n, v)| (n.to_string(), v))
                        .collect();
                    self.dropped = b.dropped;
                    body = Cow::Owned(b.body);
                }
            }
        }
        self.request_bytes = body.len() as u64;
        self.check_body_size(self.request_bytes)?;
        // A token count is free of charge and asks for no output: no cap, option, guardrail or
        // estimate applies to it.
        let counting = self.operation == Operation::CountTokens;
        let read = request_body::scan(&body, self.operation)?;
        // A key's guardrail replaces the client's, so the client's is no option to price or
        // refuse: it is not sent.
        self.guardrail = key.guardrail.clone().filter(|_| !counting);
        let (header_options, body_options) = match &self.guardrail {
            Some(_) => (HeaderOptions::default(), BodyOptions::default()),
            None => (self.header_options.clone(), read.options.clone()),
        };
        let converse = !matches!(
            self.operation,
            Operation::Invoke | Operation::InvokeWithResponseStream
        );
        let guarded: Option<Vec<u8>> = match &self.guardrail {
            Some(g) if converse => Some(read.with_guardrail(&body, &g.converse_config())),
            Some(g) => {
                attempt_headers.extend(g.invoke_headers());
                None
            }
            None => None,
        };
        let prepared: &[u8] = guarded.as_deref().unwrap_or(&body);
        let read = match &guarded {
            Some(b) => request_body::scan(b, self.operation)?,
            None => read,
        };

        // The targets, in this request's order, less those it cannot use.
        let several = self.alias_targets.is_some();
        let (kept, skipped) = match &self.alias_targets {
            Some(targets) => {
                let ids: Vec<&str> = targets
                    .order(self.request_id.as_deref())
                    .into_iter()
                    .filter_map(|i| targets.targets().get(i))
                    .map(|t| t.model_id.as_str())
                    .collect();
                let input = crate::accounting::record::estimate_tokens(prepared.len() as u64);
                plan::choose(&ids, self.operation, input, &config.region)
            }
            None => (vec![self.model_id.clone()], Vec::new()),
        };
        let mut images = None;
        let mut targets = Vec::with_capacity(kept.len());
        let mut priced = Vec::with_capacity(kept.len());
        let mut first_limit = None;
        for (i, id) in kept.into_iter().enumerate() {
            // The key's cap, the alias's, the target's own; a target of several is never asked
            // for more output than it can give (a request another target could take would
            // otherwise be refused by this one).
            let mut cap = key.limits.max_output_tokens(&self.scope);
            if several {
                let own = key.limits.models.get(&id).and_then(|l| l.max_output_tokens);
                let model_max = pricing::quote(&config.region, &id)
                    .max_output_tokens
                    .map(u64::from);
                cap = [cap, own, model_max].into_iter().flatten().min();
            }
            if counting {
                cap = None;
            }
            let limit = read.output_limit(prepared, &id, cap);
            let decided = if counting {
                options::Decided::default()
            } else {
                options::decide(
                    &header_options,
                    &body_options,
                    &key.limits.unpriced_options,
                    &config.region,
                    &id,
                )?
            };
            let quote = pricing::quote_tier(&config.region, &id, decided.tier)
                .unwrap_or_else(|| pricing::quote(&config.region, &id));
            let sent = limit.rewritten.as_deref().unwrap_or(prepared);
            let images = if quote.per_image_pico_usd.is_some() {
                *images.get_or_insert_with(|| images::requested(prepared))
            } else {
                0
            };
            let mut estimate = if counting {
                quota::Estimate::default()
            } else {
                quota::estimate(sent.len() as u64, limit.max_output_tokens, images, &quote)
            };
            if self.guardrail.is_some() {
                let units = guardrail::estimate_cost_pico_usd(
                    sent.len() as u64,
                    estimate.usage.output_tokens,
                );
                estimate.cost_pico_usd = estimate.cost_pico_usd.saturating_add(units);
                estimate.input_cost_pico_usd = estimate.input_cost_pico_usd.saturating_add(units);
            }
            if i == 0 {
                first_limit = Some(limit.rewritten);
            }
            targets.push(Planned {
                model_id: id,
                max_output_tokens: cap,
            });
            priced.push((
                route::Priced {
                    tier: decided.tier,
                    unpriced: decided.unpriced,
                    quote,
                    estimate: estimate.usage,
                },
                estimate,
            ));
        }
        // Reserved once, at the dearest target: whichever answers, the reservation covers it.
        let reserve_at = priced
            .iter()
            .map(|(_, e)| *e)
            .max_by_key(|e| (e.cost_pico_usd, e.tokens))
            .unwrap_or_default();
        let priced: Vec<route::Priced> = priced.into_iter().map(|(p, _)| p).collect();
        let plan = Plan {
            operation: self.operation,
            targets,
        };
        // A partial allowance needs a stream the meter can price as it goes: ConverseStream
        // (Bedrock's own format), or an invoke stream of a model family it knows — every
        // target's.
        let may_cut_off = key.limits.cut_off_streams
            && match self.operation {
                Operation::ConverseStream => true,
                Operation::InvokeWithResponseStream => plan
                    .targets
                    .iter()
                    .all(|t| model_family::invoke_stream_is_metered(&t.model_id)),
                Operation::Converse | Operation::Invoke | Operation::CountTokens => false,
            };
        self.reservation = quota::reserve(
            counters,
            &key,
            &self.scope,
            reserve_at,
            may_cut_off,
            self.quota_now_ms,
            config.lease,
            &mut self.notes,
        )?;
        if may_cut_off {
            self.cut_off_allowance = self.reservation.spend_allowance();
        }
        let keep_prepared = plan.targets.len() > 1;
        let built = attempt::build_scanned(
            config,
            &plan,
            0,
            prepared,
            &read,
            &attempt_headers,
            &signer,
            signing_keys,
            now,
        )
        .map_err(|e| GatewayError::new(ErrorKind::Internal, e.message))?;
        let mut attempts = AttemptLog::default();
        attempts.start(0);
        let kept_prepared = keep_prepared.then(|| prepared.to_vec());
        // The body the client sent, unless the gateway changed it (decompressed, translated,
        // guarded): then the prepared one is what every attempt starts from.
        let changed: Option<Vec<u8>> = match guarded {
            Some(g) => Some(g),
            None => match body {
                Cow::Owned(b) => Some(b),
                Cow::Borrowed(_) => None,
            },
        };
        let first_rewritten = changed.is_some() || matches!(first_limit, Some(Some(_)));
        // The body attempt 1 sends: clamped for its target, else the prepared one.
        let mut up = built.request;
        if up.body.is_none() {
            up.body = changed;
        }
        // The client's guardrail headers go, whatever the operation; invoke sets the key's.
        let guardrail_headers: Vec<String> = match self.guardrail {
            Some(_) => key_guardrail::HEADERS
                .iter()
                .map(|h| h.to_string())
                .collect(),
            None => Vec::new(),
        };
        let mut remove_headers = std::mem::take(&mut self.strip_headers);
        for name in &guardrail_headers {
            if !remove_headers.contains(name) {
                remove_headers.push(name.clone());
            }
        }
        up.remove_headers = remove_headers;
        self.route = Some(route::Route {
            plan,
            priced,
            skipped,
            attempts,
            prepared: kept_prepared,
            first_rewritten,
            headers: attempt_headers,
            remove_headers: guardrail_headers,
        });
        self.price_current();
        self.sent_upstream = true;
        Ok(Outbound::Upstream(up))
    }

    /// The quota clock at host time `now_ms`: the test clock moves on with real time from
    /// where the request set it.
    fn quota_clock(&self, now_ms: u64) -> u64 {
        self.quota_now_ms
            .saturating_add(now_ms.saturating_sub(self.started_ms))
    }

    /// Renews the lease on what the exchange holds (its concurrency slot, its budget
    /// reservation's record) if it is due at host time `now_ms`: hosts call it on each response
    /// chunk and from a timer ([`Exchange::renewal_due_in_ms`]). Costs no store call unless it
    /// is due. Returns a warning for the host's log when a renewal failed, or came too late.
    pub fn renew(&mut self, counters: &dyn Counters, now_ms: u64) -> Option<String> {
        if self.finished {
            return None;
        }
        let quota_now = self.quota_clock(now_ms);
        match self.reservation.renew(counters, quota_now) {
            Renewal::NotDue | Renewal::Renewed => None,
            Renewal::Failed(e) => Some(format!(
                "tollgate: could not renew the lease of a request of key `{}` ({e}); tried \
                 again with the next chunk or tick",
                self.key_id
            )),
            Renewal::Lapsed if !std::mem::replace(&mut self.lapse_reported, true) => Some(format!(
                "tollgate: a request of key `{}` outlived its lease without renewing it (its \
                     host stalled for {} s or more): its concurrency slot counts no more",
                self.key_id,
                self.reservation.lease().seconds()
            )),
            Renewal::Lapsed => None,
        }
    }

    /// Milliseconds from host time `now_ms` until the lease is next due for renewal; `None`
    /// when nothing leased is held (no concurrency limit or budget, or ended).
    pub fn renewal_due_in_ms(&self, now_ms: u64) -> Option<u64> {
        if self.finished {
            return None;
        }
        let quota_now = self.quota_clock(now_ms);
        self.reservation
            .renewal_due_at(quota_now)
            .map(|at| at.saturating_sub(quota_now))
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

    /// Bedrock's response head: metered, then what changes in the head the client gets (its
    /// dialect's status, content type, no `content-length` where the body changes length).
    /// Hosts apply it before sending the head on.
    pub fn on_response_headers<'a>(
        &mut self,
        status: u16,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> ResponseHead {
        self.status.get_or_insert(status);
        if let Some(route) = self.route.as_mut() {
            // The answer's status, unless an upstream filter's log has it already.
            if route
                .attempts
                .attempts()
                .last()
                .is_some_and(|a| a.status.is_none())
            {
                route.attempts.answered(status);
            }
        }
        let headers: Vec<(&str, &str)> = headers.into_iter().collect();
        self.meter
            .on_response_headers(status, headers.iter().copied());
        self.relay.head(status, &headers)
    }

    /// One chunk of the response body, as it arrives: metered, then what the client gets for
    /// it (see [`Relayed`]). The chunk passes unchanged unless this stream is cut off: then it
    /// is replaced by its complete frames and a terminal exception, and the response ends.
    pub fn on_response_body<'a>(&mut self, chunk: &'a [u8]) -> Relayed<'a> {
        let ok = matches!(self.status, Some(200..=299));
        self.relay
            .chunk(chunk, ok, &mut self.meter, self.request_bytes)
    }

    /// The upstream body has ended: the last bytes the client gets (what the dialect's
    /// translator held back: a buffered answer, a stream's closing events). Empty for Bedrock's
    /// own dialect, and once the gateway has ended the stream itself.
    pub fn on_response_end(&mut self) -> Vec<u8> {
        self.relay.end()
    }

    /// The upstream body has ended: `true` when it ended inside an EventStream message. The
    /// host must then fail the client's response (Envoy: reset the stream; Spin: end the body
    /// with an error) rather than end it cleanly: an SDK takes a cleanly ended stream for a
    /// whole one (boto3 stops iterating without an error, and without the usage).
    pub fn upstream_ended_inside_a_message(&self) -> bool {
        !self.relay.was_cut_off() && self.meter.inside_a_message()
    }

    /// Ends the exchange, once, on every path (Envoy's `on_log`): [`Exchange::finish`] (the
    /// record; the reservation settled in `counters`), then the usage added to `totals`, then
    /// what the host logs and measures ([`Ending::effects`]). `None` if it had ended already.
    pub fn end(
        &mut self,
        config: &Config,
        counters: &dyn Counters,
        totals: &dyn UsageTotals,
        now_ms: u64,
    ) -> Option<Ending> {
        let record = self.finish(config, counters, now_ms)?;
        let reclaimed = std::mem::take(&mut self.notes.reclaimed);
        Some(end::count(record, totals, reclaimed, self.unsettled.take()))
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
            dialect: self.dialect,
            status,
            sent_upstream: self.sent_upstream,
            reading: &reading,
            request_bytes: self.request_bytes,
            latency_ms: now_ms.saturating_sub(self.started_ms),
            service_tier: self.service_tier,
            guardrail: self.guardrail.as_ref(),
        };
        let mut record = record::make_with(facts, &fallback);
        record.unpriced_options = self.unpriced.iter().map(|u| u.name()).collect();
        if let Some(route) = self.route.as_ref().filter(|_| self.alias_targets.is_some()) {
            (record.attempts, record.skipped) = route.records();
        }
        record.dropped = self.dropped.clone();
        if self.relay.was_cut_off() {
            record.exception = Some(CUT_OFF_EXCEPTION.to_string());
        }
        let used = record.usage();
        let tokens = used.total_input().saturating_add(used.output_tokens);
        let quota_now_ms = self.quota_clock(now_ms);
        let counters = match self.test_fault {
            Some(TestFault::StoreErrorOnSettle) => &InjectedStoreError,
            _ => counters,
        };
        let (mut failed, error) =
            self.reservation
                .settle(counters, tokens, record.cost_pico_usd, quota_now_ms);
        let undone = std::mem::take(&mut self.notes.unsettled);
        failed.extend(undone);
        let error = error
            .map(|e| e.to_string())
            .or(self.notes.unsettled_error.take());
        let Some(error) = error else {
            return Some(record);
        };
        self.unsettled = Unsettled::new(
            &self.key_id,
            self.request_id.as_deref(),
            failed,
            error.clone(),
            now_ms,
            quota_now_ms,
        );
        // The record still stands; the host retries what failed ([`Ending::take_unsettled`]).
        Some(UsageRecord {
            problem: Some(format!("quota settlement failed: {error}; retrying")),
            ..record
        })
    }
}

/// Counters whose every operation fails ([`TestFault::StoreErrorOnSettle`]).
struct InjectedStoreError;

impl Counters for InjectedStoreError {
    fn add(&self, _: &str, _: u64, _: i64) -> Result<i64, crate::store::StoreError> {
        Err(crate::store::StoreError::Host(
            "test hook: the store failed the write".into(),
        ))
    }
    fn read(&self, name: &str, window: u64) -> Result<i64, crate::store::StoreError> {
        self.add(name, window, 0)
    }
}

#[cfg(test)]
mod tests;
