//! Admission against a key's limits: reserve, then reconcile.
//!
//! Before a request goes upstream, Tollgate *reserves* what it may cost — one concurrency slot,
//! one request of the minute, its estimated tokens and cost — by adding to atomic counters and
//! checking the totals they return. A request that does not fit is refused and its partial
//! reservation undone. When the exchange ends, on every path, the reservation is replaced by
//! what was actually used. Concurrent requests can therefore never jointly overrun a limit:
//! each sees the others' reservations.

use crate::accounting::money::PicoUsd;
use crate::config::ApiKey;
use crate::error::{ErrorKind, GatewayError};
use crate::quota::counters::Counters;
use crate::quota::limits::{Limits, Scope};
use crate::quota::period::{self, Period};
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
    Concurrency,
    Requests,
    Tokens,
    Spend,
}

#[derive(Debug)]
struct Held {
    name: String,
    window: u64,
    /// When the window ends (ms since the epoch); `None`: never (concurrency, total budgets).
    ends_at_ms: Option<u64>,
    kind: Kind,
    amount: i64,
}

/// The counters one admitted request holds until it is settled.
#[derive(Debug, Default)]
pub struct Reservation {
    held: Vec<Held>,
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

/// Every counter the key's limits use: hosts with create-unsafe stores make them up front.
pub fn counter_names(key: &ApiKey) -> Vec<String> {
    let mut names = Vec::new();
    let mut push = |scope, model: &str, limits: &Limits| {
        for (what, on) in [
            ("concurrent", limits.max_concurrent_requests.is_some()),
            ("rpm", limits.requests_per_minute.is_some()),
            ("tpm", limits.tokens_per_minute.is_some()),
            ("spend", limits.budget.is_some()),
        ] {
            if on {
                names.push(counter_name(&key.id, scope, model, what));
            }
        }
    };
    push(Scope::Key, "", &key.limits.key);
    for (model, limits) in &key.limits.models {
        push(Scope::Model, model, limits);
    }
    names
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
    /// Adds `amount` to a counter and keeps it if the total stays within `max`.
    #[allow(clippy::too_many_arguments)]
    fn take(
        &mut self,
        counters: &dyn Counters,
        name: String,
        (window, ends_at_ms): (u64, Option<u64>),
        kind: Kind,
        amount: u64,
        max: u64,
    ) -> Result<Option<i64>, GatewayError> {
        let amount = saturating_i64(amount);
        let total = counters.add(&name, window, amount).map_err(store_failure)?;
        if total > saturating_i64(max) {
            counters
                .add(&name, window, -amount)
                .map_err(store_failure)?;
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

    /// Like `take`, but settles for less than `want` (at least `least`) when that is all that
    /// is left under `max`. Returns what was taken, or the counter's value if even `least` is
    /// too much.
    #[allow(clippy::too_many_arguments)]
    fn take_up_to(
        &mut self,
        counters: &dyn Counters,
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
            counters
                .add(&name, window, -amount)
                .map_err(store_failure)?;
        }
        Ok(Err(current))
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

    /// Undoes everything held (a refused request, or release without usage).
    fn undo(&mut self, counters: &dyn Counters) {
        for h in self.held.drain(..) {
            let _ = counters.add(&h.name, h.window, -h.amount);
        }
    }

    /// Replaces the reservation by what was used, and frees the concurrency slots. Errors are
    /// returned for logging; every counter is still attempted.
    ///
    /// `now_ms` is the quota clock at the end of the exchange. A minute or budget period that has
    /// ended by then is left as it is: nothing reads it any more, and writing to it would bring
    /// back a key the next window's start has deleted (Spin) or is about to.
    pub fn settle(
        &mut self,
        counters: &dyn Counters,
        tokens: u64,
        cost_pico_usd: u64,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut result = Ok(());
        for h in self.held.drain(..) {
            if h.ends_at_ms.is_some_and(|end| now_ms >= end) {
                continue;
            }
            let delta = match h.kind {
                Kind::Concurrency => -h.amount,
                Kind::Requests => continue,
                Kind::Tokens => saturating_i64(tokens).saturating_sub(h.amount),
                Kind::Spend => saturating_i64(cost_pico_usd).saturating_sub(h.amount),
            };
            if delta != 0 {
                if let Err(e) = counters.add(&h.name, h.window, delta) {
                    result = Err(e);
                }
            }
        }
        result
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// Reserves `estimate` against every limit that applies to `key` using `model_id`.
///
/// With `partial_budget`, a budget that cannot cover the whole estimate but can cover the
/// input is reserved to what remains: the caller then cuts the response off when it reaches
/// [`Reservation::spend_allowance`] (opt-in mid-stream cut-off).
pub fn reserve(
    counters: &dyn Counters,
    key: &ApiKey,
    model_id: &str,
    estimate: Estimate,
    partial_budget: bool,
    now_ms: u64,
) -> Result<Reservation, GatewayError> {
    let mut r = Reservation::default();
    match reserve_into(
        &mut r,
        counters,
        key,
        model_id,
        estimate,
        partial_budget,
        now_ms,
    ) {
        Ok(()) => Ok(r),
        Err(e) => {
            r.undo(counters);
            Err(e)
        }
    }
}

fn reserve_into(
    r: &mut Reservation,
    counters: &dyn Counters,
    key: &ApiKey,
    model_id: &str,
    estimate: Estimate,
    partial_budget: bool,
    now_ms: u64,
) -> Result<(), GatewayError> {
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
        if let Some(max) = limits.max_concurrent_requests {
            if r.take(
                counters,
                name("concurrent"),
                (0, None),
                Kind::Concurrency,
                1,
                max,
            )?
            .is_some()
            {
                return Err(GatewayError::new(
                    ErrorKind::ConcurrencyLimited,
                    format!("{whose} already has {max} requests in flight"),
                )
                .retry_after(1));
            }
        }
        if let Some(max) = limits.requests_per_minute {
            if r.take(counters, name("rpm"), minute, Kind::Requests, 1, max)?
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
            if let Some(used) = r.take(counters, name("tpm"), minute, Kind::Tokens, tokens, max)? {
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
            let least = if partial_budget {
                estimate.input_cost_pico_usd
            } else {
                estimate.cost_pico_usd
            };
            let taken = r.take_up_to(
                counters,
                name("spend"),
                window,
                Kind::Spend,
                least,
                estimate.cost_pico_usd,
                budget.pico_usd,
            )?;
            if let Err(spent) = taken {
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
    Ok(())
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

    fn key(limits: Limits, models: BTreeMap<String, Limits>) -> ApiKey {
        ApiKey {
            id: "k".into(),
            sha256: [0; 32],
            any_model: true,
            models: Default::default(),
            limits: KeyLimits {
                key: limits,
                models,
                ..KeyLimits::default()
            },
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
                .settle(&c, 10, USD / 4, NOW)
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
            .settle(&c, 10, USD / 4, NOW)
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
        a.settle(&c, 0, 0, NOW).unwrap();
        reserve(&c, &k, "m", est(1, 1), false, NOW).unwrap();
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
            .settle(&c, 20, 0, NOW)
            .unwrap();
        reserve(&c, &k, "m", est(70, 0), false, NOW + 1_000)
            .unwrap()
            .settle(&c, 70, 0, NOW + 1_000)
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
        r.settle(&c, 40, 0, NOW).unwrap();
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
        assert_eq!(c.read("tollgate/q/k/concurrent", 0).unwrap(), 1);
        assert_eq!(
            c.read("tollgate/q/k/rpm", period::minute_window(NOW))
                .unwrap(),
            1
        );
        reserve(&c, &k, "small", est(1, 0), false, NOW).unwrap();
        assert_eq!(
            counter_names(&k),
            [
                "tollgate/q/k/concurrent",
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
            .settle(&c, 10, 5, next)
            .unwrap();
        let minute = period::minute_window(NOW);
        assert!(!s.keys().contains(&format!("tollgate/q/k/tpm@{minute}")));
        // ...then the first request ends: its minute is over, its day is not.
        long.settle(&c, 80, 40, next + 1).unwrap();
        assert!(
            !s.keys().contains(&format!("tollgate/q/k/tpm@{minute}")),
            "settling brought back an ended minute: {:?}",
            s.keys()
        );
        assert_eq!(c.read("tollgate/q/k/tpm", minute + 1).unwrap(), 10);
        let day = Period::Daily.window(NOW);
        assert_eq!(c.read("tollgate/q/k/spend", day).unwrap(), 45);
        assert_eq!(c.read("tollgate/q/k/concurrent", 0).unwrap(), 0);
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
