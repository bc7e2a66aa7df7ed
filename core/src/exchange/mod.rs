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

use std::time::SystemTime;

use crate::accounting::pricing::{self, ServiceTier};
use crate::accounting::record::{self, UsageRecord};
use crate::accounting::totals::UsageTotals;
use crate::accounting::usage::Usage;
use crate::config::Config;
use crate::dialect::bedrock::CUT_OFF_EXCEPTION;
use crate::error::{ErrorKind, GatewayError};
use crate::quota::counters::Counters;
use crate::quota::{self, Reservation};
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

pub use crate::response::relay::{Relayed, Verdict};
pub use admission::{admit, Admission, MAX_TEST_CLOCK_MS, TEST_CLOCK_HEADER};
pub use end::{Effect, Ending, Level};

/// One admitted request, from [`admit`] to [`Exchange::end`].
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
        Some(end::count(record, totals))
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
mod tests;
