//! One request through the gateway, from request head to usage record, as a sans-IO state
//! machine. Hosts feed it headers, body bytes and time, and do what it says:
//!
//! 1. [`admit`] the request head: a local answer, or an [`Exchange`] to forward;
//! 2. [`Exchange::upstream_request`] once the body is in: admitted against the key's limits,
//!    rewritten and signed;
//! 3. [`Exchange::on_response_headers`], then [`Exchange::on_response_body`] for each chunk;
//! 4. [`Exchange::end`] on every path: settled, counted, then logged ([`end`]).

mod admission;
pub mod end;

use std::sync::Arc;
use std::time::SystemTime;

use crate::accounting::pricing::{self, ServiceTier};
use crate::accounting::record::{self, UsageRecord};
use crate::accounting::totals::UsageTotals;
use crate::accounting::usage::Usage;
use crate::config::{ApiKey, Config};
use crate::dialect::bedrock::CUT_OFF_EXCEPTION;
use crate::error::{ErrorKind, GatewayError};
use crate::quota::counters::Counters;
use crate::quota::{self, Notes, Renewal, Reservation, Unsettled};
use crate::request::body as request_body;
use crate::request::images;
use crate::request::model_family;
use crate::request::model_id;
use crate::request::operation::Operation;
use crate::request::options::{self, HeaderOptions, Unpriced};
use crate::response::meter::UsageMeter;
use crate::response::relay::Relay;
use crate::upstream::credentials::{Fetched, Signer};
use crate::upstream::request::UpstreamRequest;
use crate::upstream::signing::SigningKeyCache;

pub use crate::request::identity::{Caller, Callers, VerifiedToken};
pub use crate::response::relay::{Relayed, Verdict};
pub use admission::{
    admit, admit_with, Admission, TestFault, MAX_TEST_CLOCK_MS, TEST_CLOCK_HEADER,
    TEST_FAULT_HEADER,
};
pub use end::{Effect, Ending, Level};

/// One admitted request, from [`admit`] to [`Exchange::end`].
pub struct Exchange {
    /// The host's request ID (Envoy's `x-request-id`), to join records with access logs.
    pub request_id: Option<String>,
    pub key_id: String,
    /// The entry admitted: the document's (kept for the request, whatever updates come) or one
    /// created at runtime.
    key: Arc<ApiKey>,
    /// The model as the client named it.
    pub model: String,
    pub model_id: String,
    pub operation: Operation,
    started_ms: u64,
    /// The clock quota windows and periods are read from.
    quota_now_ms: u64,
    reservation: Reservation,
    /// What the client gets of the response, and when the gateway ends a stream itself.
    relay: Relay,
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
    /// (its estimated cost reserved in `counters`).
    pub fn upstream_request(
        &mut self,
        config: &Config,
        counters: &dyn Counters,
        signing_keys: &mut SigningKeyCache,
        body: &[u8],
        now: SystemTime,
    ) -> Result<UpstreamRequest, GatewayError> {
        self.upstream_request_with(config, counters, signing_keys, body, now, None)
    }

    /// [`Exchange::upstream_request`], signed with the credentials the host `fetched` when the
    /// configuration's come from an endpoint ([`Fetched`]). Without usable ones the request is
    /// refused with 503 before anything is reserved.
    pub fn upstream_request_with(
        &mut self,
        config: &Config,
        counters: &dyn Counters,
        signing_keys: &mut SigningKeyCache,
        body: &[u8],
        now: SystemTime,
        fetched: Option<&Fetched>,
    ) -> Result<UpstreamRequest, GatewayError> {
        self.request_bytes = body.len() as u64;
        self.check_body_size(self.request_bytes)?;
        let now_ms = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let signer = Signer::for_request(&config.upstream_auth, fetched, now_ms)
            .inspect_err(|e| self.status = Some(e.kind.status()))?;
        let key = self.key.clone();
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
            &key,
            &self.model_id,
            estimate,
            may_cut_off,
            self.quota_now_ms,
            config.lease,
            &mut self.notes,
        )
        .inspect_err(|e| self.status = Some(e.kind.status()))?;
        if may_cut_off {
            if let Some(allowance) = self.reservation.spend_allowance() {
                self.relay.cut_off_at(allowance, quote);
            }
        }
        let path = format!(
            "/model/{}/{}",
            model_id::encode_path_label(&self.model_id),
            self.operation.path_segment()
        );
        let set_headers = signer
            .headers(
                signing_keys,
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
                "tollgate: could not renew the lease of a request of key `{}` ({e}); tried                  again with the next chunk or tick",
                self.key_id
            )),
            Renewal::Lapsed if !std::mem::replace(&mut self.lapse_reported, true) => {
                Some(format!(
                    "tollgate: a request of key `{}` outlived its lease without renewing it (its                      host stalled for {} s or more): its concurrency slot counts no more",
                    self.key_id,
                    self.reservation.lease().seconds()
                ))
            }
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

    pub fn on_response_headers<'a>(
        &mut self,
        status: u16,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        self.status.get_or_insert(status);
        self.meter.on_response_headers(status, headers);
    }

    /// One chunk of the response body, as it arrives: metered, then what the client gets for
    /// it (see [`Relayed`]). The chunk passes unchanged unless this stream is cut off: then it
    /// is replaced by its complete frames and a terminal exception, and the response ends.
    pub fn on_response_body<'a>(&mut self, chunk: &'a [u8]) -> Relayed<'a> {
        let ok = matches!(self.status, Some(200..=299));
        self.relay
            .chunk(chunk, ok, &mut self.meter, self.request_bytes)
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
            status,
            sent_upstream: self.sent_upstream,
            reading: &reading,
            request_bytes: self.request_bytes,
            latency_ms: now_ms.saturating_sub(self.started_ms),
            service_tier: self.service_tier,
        };
        let mut record = record::make_with(facts, &fallback);
        record.unpriced_options = self.unpriced.iter().map(|u| u.name()).collect();
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
