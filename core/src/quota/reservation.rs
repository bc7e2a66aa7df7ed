//! Admission against a key's limits: reserve, then reconcile.
//!
//! Before a request goes upstream, Tollgate *reserves* what it may cost — one concurrency slot,
//! one request of the minute, its estimated tokens and cost — by adding to atomic counters and
//! checking the totals they return. A request that does not fit is refused and its partial
//! reservation undone. When the exchange ends, on every path, the reservation is replaced by
//! what was actually used. Concurrent requests can therefore never jointly overrun a limit:
//! each sees the others' reservations.
//!
//! The concurrency slot, and a record of the budget reservation, are *leased* ([`Lease`]): kept
//! in lease buckets that the live exchange renews. An exchange that dies without settling (its
//! host trapped or was killed) leaves them in a bucket that expires: the slot then stops
//! counting, and the first admission after that reports it ([`Reclaimed`]). The budget
//! reservation itself is in the period's spend counter from the start, so a dead exchange stays
//! billed at its estimate — it very likely reached Bedrock — and a late settlement corrects it
//! to the actual cost exactly once, whenever it comes.

use std::borrow::Cow;

use crate::accounting::metrics::{Metric, Update};
use crate::accounting::money::PicoUsd;
use crate::config::ApiKey;
use crate::error::{ErrorKind, GatewayError};
use crate::quota::counters::Counters;
use crate::quota::lease::Lease;
use crate::quota::limits::{Limits, Scope};
use crate::quota::period::{self, Period};
use crate::quota::settlement::Write;
use crate::store::StoreError;

/// What a request may use, as reserved at admission.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Estimate {
    /// Input plus the most output the request may generate.
    pub tokens: u64,
    pub cost_pico_usd: u64,
    /// The input's share of the cost: the least a stream that may be cut off must be able to pay.
    pub input_cost_pico_usd: u64,
    /// The usage estimated: what is billed if the request ran but its usage never came back.
    pub usage: crate::Usage,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A slot, in a lease bucket.
    Concurrency,
    Requests,
    Tokens,
    Spend,
    /// The budget reservation's record, in a lease bucket: what a dead exchange left in the
    /// spend counter, for the report when its lease runs out.
    InFlightSpend,
}

impl Kind {
    fn leased(self) -> bool {
        matches!(self, Self::Concurrency | Self::InFlightSpend)
    }
}

#[derive(Debug)]
struct Held {
    /// The counter's name; for a leased kind, the name its slots are made from.
    name: String,
    /// The window; for a leased kind, the lease bucket it was last renewed in.
    window: u64,
    /// When the window ends (ms since the epoch); `None`: never (total budgets) or leased.
    ends_at_ms: Option<u64>,
    kind: Kind,
    amount: i64,
}

/// The counters one admitted request holds until it is settled.
#[derive(Debug, Default)]
pub struct Reservation {
    held: Vec<Held>,
    lease: Lease,
    /// Its lease ran out without a renewal: what it held in lease buckets counts no more.
    lapsed: bool,
}

/// What admission leaves for the host to report or retry.
#[derive(Debug, Default)]
pub struct Notes {
    /// Holdings of dead exchanges this admission found expired (reported once, by it).
    pub reclaimed: Vec<Reclaimed>,
    /// Writes of an undone reservation the store failed.
    pub(crate) unsettled: Vec<Write>,
    pub(crate) unsettled_error: Option<String>,
}

impl Notes {
    fn failed(&mut self, write: Write, e: &StoreError) {
        self.unsettled.push(write);
        self.unsettled_error = Some(e.to_string());
    }
}

/// What exchanges that gave no word for a lease left in one scope's expired bucket: reported by
/// the one admission that claims the bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reclaimed {
    pub key_id: String,
    /// The model, for a per-model limit's counters.
    pub model_id: Option<String>,
    /// Concurrency slots (requests) that were still held.
    pub requests: u64,
    /// The budget reservations still held: billed at that estimate.
    pub reserved_pico_usd: u64,
    pub lease_seconds: u64,
}

impl Reclaimed {
    /// The operator's line (a warning).
    pub fn log_line(&self) -> String {
        let whose = match &self.model_id {
            Some(m) => format!("key `{}` on model `{m}`", self.key_id),
            None => format!("key `{}`", self.key_id),
        };
        let held = match (self.requests, self.reserved_pico_usd) {
            (0, pico) => format!("budget reservations of ${}", PicoUsd::from(pico)),
            (1, _) => "1 request in flight".to_string(),
            (n, _) => format!("{n} requests in flight"),
        };
        let mut line = format!(
            "tollgate: lease ran out on {whose}: {held} gave no word for {} s or more (its \
             Envoy worker or Spin instance stopped, or its settlement kept failing)",
            self.lease_seconds
        );
        if self.requests > 0 {
            line.push_str("; the concurrency slots are free again");
        }
        if self.reserved_pico_usd > 0 {
            line.push_str(&format!(
                "; the reserved estimate of ${} ({} pico-USD) stays billed to the budget",
                PicoUsd::from(self.reserved_pico_usd),
                self.reserved_pico_usd
            ));
        }
        line
    }

    /// `tollgate_lease_reclaims_total{key}`: requests (or, budget only, reservations) reclaimed.
    pub fn metric_updates(&self) -> Vec<Update<'_>> {
        vec![Update::new(
            Metric::LeaseReclaims,
            [Cow::Borrowed(self.key_id.as_str())],
            self.requests.max(1),
        )]
    }
}

/// Output tokens reserved for a request that names no limit, when the pricing data does not
/// know the model's maximum either.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 8192;

/// What a request may use: its input (estimated from the body size, as for cut streams) and
/// the most output it allows — its own limit, else the model's maximum. A model priced per
/// image may use `images` and no tokens.
pub fn estimate(
    body_bytes: u64,
    max_output_tokens: Option<u64>,
    images: u64,
    quote: &crate::accounting::pricing::Quote,
) -> Estimate {
    if quote.per_image_pico_usd.is_some() {
        let usage = crate::Usage {
            images,
            ..Default::default()
        };
        return Estimate {
            tokens: 0,
            cost_pico_usd: quote.cost(&usage),
            input_cost_pico_usd: 0,
            usage,
        };
    }
    let output = max_output_tokens
        .or(quote.max_output_tokens.map(u64::from))
        .unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS);
    let usage = crate::Usage {
        input_tokens: crate::accounting::record::estimate_tokens(body_bytes).max(1),
        output_tokens: output,
        ..Default::default()
    };
    let input_only = crate::Usage {
        output_tokens: 0,
        ..usage
    };
    Estimate {
        tokens: usage.input_tokens.saturating_add(output),
        cost_pico_usd: quote.cost(&usage),
        input_cost_pico_usd: quote.cost(&input_only),
        usage,
    }
}

/// Name of a quota counter of `key_id` (and of one model, for per-model limits).
pub fn counter_name(key_id: &str, scope: Scope, model_id: &str, what: &str) -> String {
    match scope {
        Scope::Key => format!("tollgate/q/{key_id}/{what}"),
        Scope::Model => format!("tollgate/q/{key_id}/m/{model_id}/{what}"),
    }
}

/// Every counter the key's limits use under `lease`: hosts with create-unsafe stores make them
/// up front.
pub fn counter_names(key: &ApiKey, lease: Lease) -> Vec<String> {
    let mut names = Vec::new();
    let mut push = |scope, model: &str, limits: &Limits| {
        let name = |what| counter_name(&key.id, scope, model, what);
        let leased = [
            (CONCURRENT, limits.max_concurrent_requests.is_some()),
            (IN_FLIGHT_SPEND, limits.budget.is_some()),
            (
                EXPIRED_CLAIM,
                limits.max_concurrent_requests.is_some() || limits.budget.is_some(),
            ),
        ];
        for (what, on) in leased {
            if on {
                names.extend(lease.slots(&name(what)));
            }
        }
        for (what, on) in [
            ("rpm", limits.requests_per_minute.is_some()),
            ("tpm", limits.tokens_per_minute.is_some()),
            ("spend", limits.budget.is_some()),
        ] {
            if on {
                names.push(name(what));
            }
        }
    };
    push(Scope::Key, "", &key.limits.key);
    for (model, limits) in &key.limits.models {
        push(Scope::Model, model, limits);
    }
    names
}

/// The leased counters: concurrency slots, budget reservations in flight, and the claim of an
/// expired bucket (the one admission whose increment returns 1 reports it).
const CONCURRENT: &str = "concurrent";
const IN_FLIGHT_SPEND: &str = "reserved";
const EXPIRED_CLAIM: &str = "expired";

/// Requests in flight for one scope: the sum over the live lease buckets.
pub fn in_flight(
    counters: &dyn Counters,
    base: &str,
    lease: Lease,
    now_ms: u64,
) -> Result<u64, StoreError> {
    let mut sum = 0i64;
    for bucket in lease.live_buckets(now_ms) {
        sum = sum.saturating_add(counters.read(&lease.slot(base, bucket), bucket)?);
    }
    Ok(u64::try_from(sum).unwrap_or(0))
}

/// The name `what` of a scope's leased holding (for [`in_flight`]).
pub fn leased_name(key_id: &str, scope: Scope, model_id: &str, what: Leased) -> String {
    counter_name(
        key_id,
        scope,
        model_id,
        match what {
            Leased::Concurrency => CONCURRENT,
            Leased::BudgetReservations => IN_FLIGHT_SPEND,
        },
    )
}

/// What is held in lease buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leased {
    Concurrency,
    BudgetReservations,
}

fn store_failure(e: StoreError) -> GatewayError {
    GatewayError::new(
        ErrorKind::StateUnavailable,
        format!("quota state unavailable: the gateway's key-value store failed: {e}"),
    )
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// pico-USD as USD for messages: two decimals, rounded up (what it may cost).
fn usd(pico: u64) -> String {
    PicoUsd::from(pico).rounded_up_to_cents()
}

impl Reservation {
    /// The counter a held item is written to now.
    fn counter(&self, h: &Held) -> String {
        if h.kind.leased() {
            self.lease.slot(&h.name, h.window)
        } else {
            h.name.clone()
        }
    }

    /// When the window a held item is written to is over (quota time).
    fn until_ms(&self, h: &Held) -> Option<u64> {
        if h.kind.leased() {
            Some(self.lease.expires_at_ms(h.window))
        } else {
            h.ends_at_ms
        }
    }

    /// Adds `amount` to a counter and keeps it if the total stays within `max`.
    #[allow(clippy::too_many_arguments)]
    fn take(
        &mut self,
        counters: &dyn Counters,
        notes: &mut Notes,
        name: String,
        (window, ends_at_ms): (u64, Option<u64>),
        kind: Kind,
        amount: u64,
        max: u64,
    ) -> Result<Option<i64>, GatewayError> {
        let amount = saturating_i64(amount);
        let total = counters.add(&name, window, amount).map_err(store_failure)?;
        if total > saturating_i64(max) {
            self.give_back(counters, notes, &name, window, amount, ends_at_ms);
            return Ok(Some(total - amount));
        }
        self.held.push(Held {
            name,
            window,
            ends_at_ms,
            kind,
            amount,
        });
        Ok(None)
    }

    /// Takes back `amount` added to `name` by a reservation that did not fit; a write the store
    /// fails is left for the host to retry.
    fn give_back(
        &self,
        counters: &dyn Counters,
        notes: &mut Notes,
        name: &str,
        window: u64,
        amount: i64,
        until_ms: Option<u64>,
    ) {
        if let Err(e) = counters.add(name, window, -amount) {
            notes.failed(
                Write {
                    name: name.to_string(),
                    window,
                    delta: -amount,
                    until_ms,
                },
                &e,
            );
        }
    }

    /// Takes a concurrency slot in the current lease bucket if the live buckets hold fewer than
    /// `max`. The older buckets are read before the current one is added to: a renewal moving a
    /// slot between them (added to the new bucket, then taken from the old) is then seen once
    /// or twice, never missed.
    fn take_slot(
        &mut self,
        counters: &dyn Counters,
        notes: &mut Notes,
        base: String,
        now_ms: u64,
        max: u64,
    ) -> Result<bool, GatewayError> {
        let lease = self.lease;
        let current = lease.bucket(now_ms);
        let mut older = 0i64;
        for bucket in lease.live_buckets(now_ms).filter(|b| *b != current) {
            let n = counters
                .read(&lease.slot(&base, bucket), bucket)
                .map_err(store_failure)?;
            older = older.saturating_add(n);
        }
        let slot = lease.slot(&base, current);
        let total = counters.add(&slot, current, 1).map_err(store_failure)?;
        if older.saturating_add(total) > saturating_i64(max) {
            let until = Some(lease.expires_at_ms(current));
            self.give_back(counters, notes, &slot, current, 1, until);
            return Ok(false);
        }
        self.held.push(Held {
            name: base,
            window: current,
            ends_at_ms: None,
            kind: Kind::Concurrency,
            amount: 1,
        });
        Ok(true)
    }

    /// Like `take`, but settles for less than `want` (at least `least`) when that is all that
    /// is left under `max`. Returns what was taken, or the counter's value if even `least` is
    /// too much.
    #[allow(clippy::too_many_arguments)]
    fn take_up_to(
        &mut self,
        counters: &dyn Counters,
        notes: &mut Notes,
        name: String,
        (window, ends_at_ms): (u64, Option<u64>),
        kind: Kind,
        least: u64,
        want: u64,
        max: u64,
    ) -> Result<Result<u64, i64>, GatewayError> {
        let (least, want, max) = (
            saturating_i64(least),
            saturating_i64(want),
            saturating_i64(max),
        );
        let mut current = 0;
        // Another worker may take the same room between the read and the add: retry a little.
        for _ in 0..8 {
            current = counters.read(&name, window).map_err(store_failure)?;
            let room = max.saturating_sub(current);
            if room < least {
                return Ok(Err(current));
            }
            let amount = want.min(room);
            let total = counters.add(&name, window, amount).map_err(store_failure)?;
            if total <= max {
                self.held.push(Held {
                    name,
                    window,
                    ends_at_ms,
                    kind,
                    amount,
                });
                return Ok(Ok(u64::try_from(amount).unwrap_or(0)));
            }
            self.give_back(counters, notes, &name, window, amount, ends_at_ms);
        }
        Ok(Err(current))
    }

    /// Records `amount` of budget reserved in the current lease bucket.
    fn record_in_flight_spend(
        &mut self,
        counters: &dyn Counters,
        base: String,
        now_ms: u64,
        amount: i64,
    ) -> Result<(), GatewayError> {
        let bucket = self.lease.bucket(now_ms);
        counters
            .add(&self.lease.slot(&base, bucket), bucket, amount)
            .map_err(store_failure)?;
        self.held.push(Held {
            name: base,
            window: bucket,
            ends_at_ms: None,
            kind: Kind::InFlightSpend,
            amount,
        });
        Ok(())
    }

    /// The most a stream admitted with this reservation may spend: the smallest budget
    /// reservation it holds. `None` when no budget applies.
    pub fn spend_allowance(&self) -> Option<u64> {
        self.held
            .iter()
            .filter(|h| h.kind == Kind::Spend)
            .map(|h| u64::try_from(h.amount).unwrap_or(0))
            .min()
    }

    /// Undoes everything held (a refused request); writes the store fails go to `notes`.
    fn undo(&mut self, counters: &dyn Counters, notes: &mut Notes) {
        for h in std::mem::take(&mut self.held) {
            let (name, until) = (self.counter(&h), self.until_ms(&h));
            self.give_back(counters, notes, &name, h.window, h.amount, until);
        }
    }

    /// Renews the lease at quota time `now_ms`: what is held in a bucket that is no longer the
    /// current one moves into the current one (added there first, then taken from the old, so
    /// that no admission in between misses it). Cheap when nothing is due: no store call.
    pub fn renew(&mut self, counters: &dyn Counters, now_ms: u64) -> Renewal {
        if self.lapsed {
            return Renewal::NotDue;
        }
        let lease = self.lease;
        let current = lease.bucket(now_ms);
        let mut outcome = Renewal::NotDue;
        for i in 0..self.held.len() {
            let Some(h) = self.held.get(i) else { break };
            if !h.kind.leased() || h.window >= current {
                continue;
            }
            if !lease.is_live(h.window, now_ms) {
                // Too late: the bucket expired (a stalled host); it may already be reported.
                self.lapsed = true;
                return Renewal::Lapsed;
            }
            let (name, old, amount) = (h.name.clone(), h.window, h.amount);
            if let Err(e) = counters.add(&lease.slot(&name, current), current, amount) {
                return Renewal::Failed(e);
            }
            if let Some(h) = self.held.get_mut(i) {
                h.window = current;
            }
            // Failing here leaves it counted twice until the old bucket expires: never missed.
            if let Err(e) = counters.add(&lease.slot(&name, old), old, -amount) {
                outcome = Renewal::Failed(e);
            } else if outcome == Renewal::NotDue {
                outcome = Renewal::Renewed;
            }
        }
        outcome
    }

    /// Quota time (ms) at which this reservation is next due for renewal; `None` when it holds
    /// nothing leased.
    pub fn renewal_due_at(&self, now_ms: u64) -> Option<u64> {
        if self.lapsed {
            return None;
        }
        let current = self.lease.bucket(now_ms);
        let mut leased = self.held.iter().filter(|h| h.kind.leased()).peekable();
        leased.peek()?;
        Some(if leased.any(|h| h.window < current) {
            now_ms // behind already (a renewal the store failed)
        } else {
            now_ms.saturating_add(self.lease.ms_until_next_bucket(now_ms))
        })
    }

    /// Replaces the reservation by what was used, and frees the concurrency slots. Every
    /// counter is attempted; the writes the store fails are returned for the host to retry,
    /// with the last error.
    ///
    /// `now_ms` is the quota clock at the end of the exchange. A minute or budget period that has
    /// ended by then is left as it is: nothing reads it any more, and writing to it would bring
    /// back a key the next window's start has deleted (Spin) or is about to. So is a lease
    /// bucket that expired before the last one: what the exchange held there counts no more,
    /// and was reported by the admission that found it. The budget's spend counter, which kept
    /// the estimate, is corrected to the actual cost as always — once, whatever the order.
    pub(crate) fn settle(
        &mut self,
        counters: &dyn Counters,
        tokens: u64,
        cost_pico_usd: u64,
        now_ms: u64,
    ) -> (Vec<Write>, Option<StoreError>) {
        let mut failed = Vec::new();
        let mut error = None;
        for h in std::mem::take(&mut self.held) {
            let live = if h.kind.leased() {
                // Also the bucket that expired last: its slot is not reused yet, and taking
                // from it before an admission claims it spares the dead-exchange report.
                self.lease.is_live(h.window, now_ms)
                    || self.lease.just_expired(now_ms) == Some(h.window)
            } else {
                h.ends_at_ms.is_none_or(|end| now_ms < end)
            };
            if !live {
                continue;
            }
            let delta = match h.kind {
                Kind::Concurrency | Kind::InFlightSpend => -h.amount,
                Kind::Requests => continue,
                Kind::Tokens => saturating_i64(tokens).saturating_sub(h.amount),
                Kind::Spend => saturating_i64(cost_pico_usd).saturating_sub(h.amount),
            };
            if delta == 0 {
                continue;
            }
            let (name, until_ms) = (self.counter(&h), self.until_ms(&h));
            if let Err(e) = counters.add(&name, h.window, delta) {
                failed.push(Write {
                    name,
                    window: h.window,
                    delta,
                    until_ms,
                });
                error = Some(e);
            }
        }
        (failed, error)
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    pub fn lease(&self) -> Lease {
        self.lease
    }
}

/// What a renewal did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Nothing to move: the holdings are in the current bucket (or there are none).
    NotDue,
    Renewed,
    /// The store failed a write; tried again at the next renewal.
    Failed(StoreError),
    /// The lease had already run out: nothing is renewed any more.
    Lapsed,
}

/// Reports, once, what dead exchanges left in the bucket of `base` that expired last: the
/// admission whose claim increment returns 1 reports it. Best effort: a store error only
/// loses the report (the slots stop counting all the same).
fn reclaim_expired(
    counters: &dyn Counters,
    lease: Lease,
    names: (&str, &str, &str),
    (concurrency, budget): (bool, bool),
    now_ms: u64,
) -> Option<(u64, u64)> {
    let bucket = lease.just_expired(now_ms)?;
    let (slots, spend, claim) = names;
    let read = |base: &str| {
        counters
            .read(&lease.slot(base, bucket), bucket)
            .ok()
            .map_or(0, |v| u64::try_from(v).unwrap_or(0))
    };
    let requests = if concurrency { read(slots) } else { 0 };
    let reserved = if budget { read(spend) } else { 0 };
    if requests == 0 && reserved == 0 {
        return None;
    }
    let first = counters.add(&lease.slot(claim, bucket), bucket, 1).ok()? == 1;
    first.then_some((requests, reserved))
}

/// Reserves `estimate` against every limit that applies to `key` using `model_id`, with
/// leases of `lease`; what is found or left for the host goes to `notes`.
///
/// With `partial_budget`, a budget that cannot cover the whole estimate but can cover the
/// input is reserved to what remains: the caller then cuts the response off when it reaches
/// [`Reservation::spend_allowance`] (opt-in mid-stream cut-off).
#[allow(clippy::too_many_arguments)]
pub fn reserve(
    counters: &dyn Counters,
    key: &ApiKey,
    model_id: &str,
    estimate: Estimate,
    partial_budget: bool,
    now_ms: u64,
    lease: Lease,
    notes: &mut Notes,
) -> Result<Reservation, GatewayError> {
    let mut r = Reservation {
        lease,
        ..Reservation::default()
    };
    let admission = Admission {
        key,
        model_id,
        estimate,
        partial_budget,
        now_ms,
    };
    match admission.reserve_into(&mut r, counters, notes) {
        Ok(()) => Ok(r),
        Err(e) => {
            r.undo(counters, notes);
            Err(e)
        }
    }
}

struct Admission<'a> {
    key: &'a ApiKey,
    model_id: &'a str,
    estimate: Estimate,
    partial_budget: bool,
    now_ms: u64,
}

impl Admission<'_> {
    fn reserve_into(
        &self,
        r: &mut Reservation,
        counters: &dyn Counters,
        notes: &mut Notes,
    ) -> Result<(), GatewayError> {
        let (key, model_id, estimate, now_ms) =
            (self.key, self.model_id, self.estimate, self.now_ms);
        let minute = (
            period::minute_window(now_ms),
            Some(period::minute_ends_at_ms(now_ms)),
        );
        for (scope, limits) in key.limits.for_model(model_id) {
            let name = |what| counter_name(&key.id, scope, model_id, what);
            let whose = match scope {
                Scope::Key => format!("API key `{}`", key.id),
                Scope::Model => format!("API key `{}` on model `{model_id}`", key.id),
            };
            let leased = (
                limits.max_concurrent_requests.is_some(),
                limits.budget.is_some(),
            );
            if leased.0 || leased.1 {
                let names = (
                    &*name(CONCURRENT),
                    &*name(IN_FLIGHT_SPEND),
                    &*name(EXPIRED_CLAIM),
                );
                if let Some((requests, reserved_pico_usd)) =
                    reclaim_expired(counters, r.lease, names, leased, now_ms)
                {
                    notes.reclaimed.push(Reclaimed {
                        key_id: key.id.clone(),
                        model_id: (scope == Scope::Model).then(|| model_id.to_string()),
                        requests,
                        reserved_pico_usd,
                        lease_seconds: r.lease.seconds(),
                    });
                }
            }
            if let Some(max) = limits.max_concurrent_requests {
                if !r.take_slot(counters, notes, name(CONCURRENT), now_ms, max)? {
                    return Err(GatewayError::new(
                        ErrorKind::ConcurrencyLimited,
                        format!("{whose} already has {max} requests in flight"),
                    )
                    .retry_after(1));
                }
            }
            if let Some(max) = limits.requests_per_minute {
                if r.take(counters, notes, name("rpm"), minute, Kind::Requests, 1, max)?
                    .is_some()
                {
                    return Err(GatewayError::new(
                        ErrorKind::RequestRateLimited,
                        format!("{whose} is limited to {max} requests per minute"),
                    )
                    .retry_after(period::seconds_to_next_minute(now_ms)));
                }
            }
            if let Some(max) = limits.tokens_per_minute {
                // A request that alone could exceed the limit may still have a minute to itself.
                let tokens = estimate.tokens.min(max);
                if let Some(used) = r.take(
                    counters,
                    notes,
                    name("tpm"),
                    minute,
                    Kind::Tokens,
                    tokens,
                    max,
                )? {
                    return Err(GatewayError::new(
                        ErrorKind::TokenRateLimited,
                        format!(
                            "{whose} is limited to {max} tokens per minute; {used} are used or reserved and this request may use {}",
                            estimate.tokens
                        ),
                    )
                    .retry_after(period::seconds_to_next_minute(now_ms)));
                }
            }
            if let Some(budget) = limits.budget {
                let window = (
                    budget.period.window(now_ms),
                    budget.period.ends_at_ms(now_ms),
                );
                let least = if self.partial_budget {
                    estimate.input_cost_pico_usd
                } else {
                    estimate.cost_pico_usd
                };
                let taken = r.take_up_to(
                    counters,
                    notes,
                    name("spend"),
                    window,
                    Kind::Spend,
                    least,
                    estimate.cost_pico_usd,
                    budget.pico_usd,
                )?;
                match taken {
                    Ok(amount) => r.record_in_flight_spend(
                        counters,
                        name(IN_FLIGHT_SPEND),
                        now_ms,
                        saturating_i64(amount),
                    )?,
                    Err(spent) => {
                        let spent = u64::try_from(spent).unwrap_or(0);
                        let mut e = GatewayError::new(
                            ErrorKind::BudgetExhausted,
                            format!(
                                "{whose} has spent or reserved {} of its {} {} budget; this request may cost up to {}",
                                usd(spent),
                                usd(budget.pico_usd),
                                period_name(budget.period),
                                usd(estimate.cost_pico_usd)
                            ),
                        );
                        if let Some(end) = budget.period.ends_at_ms(now_ms) {
                            e = e.retry_after(period::seconds_until(now_ms, end));
                        }
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }
}

fn period_name(p: Period) -> &'static str {
    match p {
        Period::Daily => "daily",
        Period::Monthly => "monthly",
        Period::Total => "total",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::counters::CasCounters;
    use crate::quota::limits::{Budget, KeyLimits};
    use crate::store::memory::MemoryStore;
    use std::collections::BTreeMap;

    const NOW: u64 = 1_795_383_600_000;
    use crate::accounting::money::PICO_PER_USD as USD;

    /// [`super::reserve`] with the default lease, the notes dropped.
    fn reserve(
        c: &dyn Counters,
        k: &ApiKey,
        model: &str,
        e: Estimate,
        partial: bool,
        now: u64,
    ) -> Result<Reservation, GatewayError> {
        super::reserve(
            c,
            k,
            model,
            e,
            partial,
            now,
            Lease::default(),
            &mut Notes::default(),
        )
    }

    /// Requests of key `k` in flight at `now`.
    fn slots(c: &dyn Counters, now: u64) -> u64 {
        in_flight(c, "tollgate/q/k/concurrent", Lease::default(), now).unwrap()
    }

    /// [`Reservation::settle`] as a `Result`: the first error, if any write failed.
    trait Settled {
        fn settled(
            &mut self,
            c: &dyn Counters,
            tokens: u64,
            cost: u64,
            now: u64,
        ) -> Result<(), StoreError>;
    }

    impl Settled for Reservation {
        fn settled(
            &mut self,
            c: &dyn Counters,
            tokens: u64,
            cost: u64,
            now: u64,
        ) -> Result<(), StoreError> {
            match self.settle(c, tokens, cost, now) {
                (_, Some(e)) => Err(e),
                (failed, None) => {
                    assert!(failed.is_empty());
                    Ok(())
                }
            }
        }
    }

    fn key(limits: Limits, models: BTreeMap<String, Limits>) -> ApiKey {
        ApiKey {
            id: "k".into(),
            sha256: Some([0; 32]),
            identities: Default::default(),
            any_model: true,
            models: Default::default(),
            limits: KeyLimits {
                key: limits,
                models,
                ..KeyLimits::default()
            },
            guardrail: None,
        }
    }

    fn est(tokens: u64, cost: u64) -> Estimate {
        Estimate {
            tokens,
            cost_pico_usd: cost,
            input_cost_pico_usd: cost / 10,
            ..Default::default()
        }
    }

    #[test]
    fn budget_admits_until_the_estimate_no_longer_fits() {
        let s = MemoryStore::default();
        let c = CasCounters(&s);
        let k = key(
            Limits {
                budget: Some(Budget {
                    pico_usd: USD,
                    period: Period::Daily,
                }),
                ..Default::default()
            },
            BTreeMap::new(),
        );
        // Each request reserves $0.30 and actually costs $0.25.
        for _ in 0..3 {
            reserve(&c, &k, "m", est(10, 3 * USD / 10), false, NOW)
                .unwrap()
                .settled(&c, 10, USD / 4, NOW)
                .unwrap();
        }
        // $0.75 spent: a $0.30 reservation no longer fits.
        let e = reserve(&c, &k, "m", est(10, 3 * USD / 10), false, NOW).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BudgetExhausted);
        assert!(
            e.message.contains("$0.75 of its $1.00 daily budget"),
            "{}",
            e.message
        );
        assert_eq!(e.retry_after_s, Some(2 * 3600 + 20 * 60));
        // A $0.25 one still does; the refused reservation left nothing behind.
        reserve(&c, &k, "m", est(10, USD / 4), false, NOW)
            .unwrap()
            .settled(&c, 10, USD / 4, NOW)
            .unwrap();
        assert_eq!(
            c.read("tollgate/q/k/spend", Period::Daily.window(NOW))
                .unwrap(),
            USD as i64
        );
        // The next day starts afresh.
        let tomorrow = NOW + 86_400_000;
        reserve(&c, &k, "m", est(10, 3 * USD / 10), false, tomorrow).unwrap();
    }

    #[test]
    fn concurrent_reservations_never_overrun() {
        let s = MemoryStore::default();
        let c = CasCounters(&s);
        let k = key(
            Limits {
                budget: Some(Budget {
                    pico_usd: 10,
                    period: Period::Total,
                }),
                ..Default::default()
            },
            BTreeMap::new(),
        );
        let held: Vec<_> = (0..20)
            .filter_map(|_| reserve(&c, &k, "m", est(1, 3), false, NOW).ok())
            .collect();
        assert_eq!(held.len(), 3, "3 × 3 fit in 10, the 4th does not");
    }

    #[test]
    fn a_stream_that_may_be_cut_off_takes_what_is_left() {
        let s = MemoryStore::default();
        let c = CasCounters(&s);
        let k = key(
            Limits {
                budget: Some(Budget {
                    pico_usd: 100,
                    period: Period::Total,
                }),
                ..Default::default()
            },
            BTreeMap::new(),
        );
        reserve(&c, &k, "m", est(1, 70), false, NOW).unwrap();
        assert!(reserve(&c, &k, "m", est(1, 50), false, NOW).is_err());
        // 30 left: enough for the input (5), not the whole estimate (50).
        let r = reserve(&c, &k, "m", est(1, 50), true, NOW).unwrap();
        assert_eq!(r.spend_allowance(), Some(30));
        // Nothing left now, not even for an input.
        assert!(reserve(&c, &k, "m", est(1, 50), true, NOW).is_err());
    }

    #[test]
    fn concurrency_slots_are_released_on_settle() {
        let s = MemoryStore::default();
        let c = CasCounters(&s);
        let k = key(
            Limits {
                max_concurrent_requests: Some(2),
                ..Default::default()
            },
            BTreeMap::new(),
        );
        let mut a = reserve(&c, &k, "m", est(1, 1), false, NOW).unwrap();
        let _b = reserve(&c, &k, "m", est(1, 1), false, NOW).unwrap();
        let e = reserve(&c, &k, "m", est(1, 1), false, NOW).unwrap_err();
        assert_eq!(
            (e.kind, e.retry_after_s),
            (ErrorKind::ConcurrencyLimited, Some(1))
        );
        a.settled(&c, 0, 0, NOW).unwrap();
        reserve(&c, &k, "m", est(1, 1), false, NOW).unwrap();
    }

    /// An exchange whose host died (a trapped VM, a killed instance) never settles: its slot
    /// must come back once its lease has run out, rather than lock the key out for good.
    #[test]
    fn a_reservation_never_settled_gives_its_slot_back_once_its_lease_ran_out() {
        let s = MemoryStore::default();
        let c = CasCounters(&s);
        let k = key(
            Limits {
                max_concurrent_requests: Some(1),
                ..Default::default()
            },
            BTreeMap::new(),
        );
        let lost = reserve(&c, &k, "m", est(1, 1), false, NOW).unwrap();
        std::mem::forget(lost);
        let e = reserve(&c, &k, "m", est(1, 1), false, NOW + 1_000).unwrap_err();
        assert_eq!(e.kind, ErrorKind::ConcurrencyLimited);
        // Two hours on, far past any lease.
        reserve(&c, &k, "m", est(1, 1), false, NOW + 7_200_000).unwrap();
    }

    #[test]
    fn rates_per_minute() {
        let s = MemoryStore::default();
        let c = CasCounters(&s);
        let k = key(
            Limits {
                requests_per_minute: Some(2),
                tokens_per_minute: Some(100),
                ..Default::default()
            },
            BTreeMap::new(),
        );
        reserve(&c, &k, "m", est(30, 0), false, NOW)
            .unwrap()
            .settled(&c, 20, 0, NOW)
            .unwrap();
        reserve(&c, &k, "m", est(70, 0), false, NOW + 1_000)
            .unwrap()
            .settled(&c, 70, 0, NOW + 1_000)
            .unwrap();
        let e = reserve(&c, &k, "m", est(1, 0), false, NOW + 2_000).unwrap_err();
        assert_eq!(
            (e.kind, e.retry_after_s),
            (ErrorKind::RequestRateLimited, Some(58))
        );
        // A refused request does not use up the rate: the next minute has both again.
        let next = NOW + 60_000;
        reserve(&c, &k, "m", est(90, 0), false, next).unwrap();
        let e = reserve(&c, &k, "m", est(20, 0), false, next).unwrap_err();
        assert_eq!(e.kind, ErrorKind::TokenRateLimited);
        assert_eq!(
            c.read("tollgate/q/k/rpm", period::minute_window(next))
                .unwrap(),
            1
        );
    }

    #[test]
    fn one_huge_request_may_have_a_minute_to_itself() {
        let s = MemoryStore::default();
        let c = CasCounters(&s);
        let k = key(
            Limits {
                tokens_per_minute: Some(100),
                ..Default::default()
            },
            BTreeMap::new(),
        );
        let mut r = reserve(&c, &k, "m", est(5_000, 0), false, NOW).unwrap();
        assert!(reserve(&c, &k, "m", est(1, 0), false, NOW).is_err());
        r.settled(&c, 40, 0, NOW).unwrap();
        reserve(&c, &k, "m", est(60, 0), false, NOW).unwrap();
    }

    #[test]
    fn per_model_limits_apply_on_top_and_failures_undo_everything() {
        let s = MemoryStore::default();
        let c = CasCounters(&s);
        let models = BTreeMap::from([(
            "big".to_string(),
            Limits {
                requests_per_minute: Some(1),
                ..Default::default()
            },
        )]);
        let k = key(
            Limits {
                max_concurrent_requests: Some(5),
                requests_per_minute: Some(10),
                ..Default::default()
            },
            models,
        );
        let _first = reserve(&c, &k, "big", est(1, 0), false, NOW).unwrap();
        let e = reserve(&c, &k, "big", est(1, 0), false, NOW).unwrap_err();
        assert!(e.message.contains("on model `big`"), "{}", e.message);
        // The key-level slot and request taken before the model limit refused were undone.
        assert_eq!(slots(&c, NOW), 1);
        assert_eq!(
            c.read("tollgate/q/k/rpm", period::minute_window(NOW))
                .unwrap(),
            1
        );
        reserve(&c, &k, "small", est(1, 0), false, NOW).unwrap();
        assert_eq!(
            counter_names(&k, Lease::new(600)),
            [
                "tollgate/q/k/concurrent/600s/0",
                "tollgate/q/k/concurrent/600s/1",
                "tollgate/q/k/concurrent/600s/2",
                "tollgate/q/k/concurrent/600s/3",
                "tollgate/q/k/expired/600s/0",
                "tollgate/q/k/expired/600s/1",
                "tollgate/q/k/expired/600s/2",
                "tollgate/q/k/expired/600s/3",
                "tollgate/q/k/rpm",
                "tollgate/q/k/m/big/rpm"
            ]
        );
    }

    #[test]
    fn settling_after_a_window_ended_leaves_it_alone_and_still_frees_the_slot() {
        use crate::quota::counters::IncrementCounters;
        use crate::store::memory::{Encoding, MemoryAtomic};
        let s = MemoryAtomic::new(Encoding::RedisDecimal);
        let c = IncrementCounters(&s);
        let k = key(
            Limits {
                tokens_per_minute: Some(1000),
                max_concurrent_requests: Some(2),
                budget: Some(Budget {
                    pico_usd: USD,
                    period: Period::Daily,
                }),
                ..Default::default()
            },
            BTreeMap::new(),
        );
        let mut long = reserve(&c, &k, "m", est(100, 50), false, NOW).unwrap();
        // The next minute starts (and its first add deletes the previous minute's key)...
        let next = NOW + 60_000;
        reserve(&c, &k, "m", est(10, 5), false, next)
            .unwrap()
            .settled(&c, 10, 5, next)
            .unwrap();
        let minute = period::minute_window(NOW);
        assert!(!s.keys().contains(&format!("tollgate/q/k/tpm@{minute}")));
        // ...then the first request ends: its minute is over, its day is not.
        long.settled(&c, 80, 40, next + 1).unwrap();
        assert!(
            !s.keys().contains(&format!("tollgate/q/k/tpm@{minute}")),
            "settling brought back an ended minute: {:?}",
            s.keys()
        );
        assert_eq!(c.read("tollgate/q/k/tpm", minute + 1).unwrap(), 10);
        let day = Period::Daily.window(NOW);
        assert_eq!(c.read("tollgate/q/k/spend", day).unwrap(), 45);
        assert_eq!(slots(&c, next + 1), 0);
    }

    /// A store whose every operation fails.
    struct Down;

    impl crate::store::AtomicStore for Down {
        fn increment(&self, _: &str, _: i64) -> Result<i64, StoreError> {
            Err(StoreError::Host("connection refused".into()))
        }
        fn get(&self, _: &str) -> Result<Option<Vec<u8>>, StoreError> {
            Err(StoreError::Host("connection refused".into()))
        }
        fn set(&self, _: &str, _: &[u8]) -> Result<(), StoreError> {
            Err(StoreError::Host("connection refused".into()))
        }
        fn delete_many(&self, _: &[String]) -> Result<(), StoreError> {
            Err(StoreError::Host("connection refused".into()))
        }
    }

    #[test]
    fn a_failing_store_refuses_with_503() {
        let k = key(
            Limits {
                requests_per_minute: Some(5),
                ..Default::default()
            },
            BTreeMap::new(),
        );
        let e = reserve(
            &crate::quota::counters::IncrementCounters(&Down),
            &k,
            "m",
            est(1, 1),
            false,
            NOW,
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::StateUnavailable);
        assert_eq!(e.kind.status(), 503);
        assert!(
            e.message
                .contains("key-value store failed: store: connection refused"),
            "{}",
            e.message
        );
    }
}
