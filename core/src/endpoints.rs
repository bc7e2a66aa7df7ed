//! Tollgate's own endpoints, answered without going upstream.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::accounting::money::PicoUsd;
use crate::accounting::totals::{Lifetime, Sums, UsageTotals};
use crate::config::{ApiKey, Config};
use crate::error::{ErrorKind, GatewayError, Reply};
use crate::quota::counter_name;
use crate::quota::counters::Counters;
use crate::quota::limits::Scope;
use crate::quota::period;

#[derive(Serialize)]
struct CountsView {
    requests: u64,
    input_tokens: u64,
    output_tokens: u64,
    cache_read_tokens: u64,
    cache_write_tokens: u64,
    /// A JSON integer, exact: a lifetime total can pass 2^64 pico-USD (≈ $18.4M).
    cost_pico_usd: u128,
    /// Exact decimal USD, as a string so no client rounds it through a float.
    cost_usd: String,
}

impl From<&Sums> for CountsView {
    fn from(c: &Sums) -> Self {
        Self {
            requests: c.requests,
            input_tokens: c.input_tokens,
            output_tokens: c.output_tokens,
            cache_read_tokens: c.cache_read_tokens,
            cache_write_tokens: c.cache_write_tokens,
            cost_pico_usd: c.cost_pico_usd,
            cost_usd: PicoUsd(c.cost_pico_usd).to_string(),
        }
    }
}

#[derive(Serialize)]
struct BudgetView {
    period: &'static str,
    /// `2026-11-22`, `2026-11` or `total`.
    current: String,
    limit_usd: String,
    /// Settled spend plus what requests in flight have reserved.
    spent_usd: String,
    remaining_usd: String,
    spent_pico_usd: u64,
    remaining_pico_usd: u64,
    /// Seconds until the period starts afresh; absent for `total`.
    #[serde(skip_serializing_if = "Option::is_none")]
    resets_in_s: Option<u64>,
}

#[derive(Serialize)]
struct LimitView {
    limit: u64,
    used: u64,
}

#[derive(Serialize)]
struct UsageView<'a> {
    key_id: &'a str,
    /// Lifetime totals.
    #[serde(flatten)]
    all: CountsView,
    /// Lifetime totals by model (alias as the client named it, or model ID).
    models: BTreeMap<&'a str, CountsView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    budget: Option<BudgetView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    requests_per_minute: Option<LimitView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens_per_minute: Option<LimitView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    concurrent_requests: Option<LimitView>,
}

/// `GET /usage`: the caller's own totals and where it stands against its limits; never
/// another key's data. Counters that cannot be read are left out rather than guessed.
pub fn usage_reply(key: &ApiKey, totals: &Lifetime, counters: &dyn Counters, now_ms: u64) -> Reply {
    let limits = &key.limits.key;
    let read = |what: &str, window: u64| {
        counters
            .read(&counter_name(&key.id, Scope::Key, "", what), window)
            .ok()
            .map(|v| u64::try_from(v).unwrap_or(0))
    };
    let minute = period::minute_window(now_ms);
    let budget = limits.budget.and_then(|b| {
        let spent = read("spend", b.period.window(now_ms))?;
        let remaining = b.pico_usd.saturating_sub(spent);
        Some(BudgetView {
            period: match b.period {
                period::Period::Daily => "daily",
                period::Period::Monthly => "monthly",
                period::Period::Total => "total",
            },
            current: b.period.label(now_ms),
            limit_usd: PicoUsd::from(b.pico_usd).to_string(),
            spent_usd: PicoUsd::from(spent).to_string(),
            remaining_usd: PicoUsd::from(remaining).to_string(),
            spent_pico_usd: spent,
            remaining_pico_usd: remaining,
            resets_in_s: b
                .period
                .ends_at_ms(now_ms)
                .map(|end| period::seconds_until(now_ms, end)),
        })
    });
    let limit = |max: Option<u64>, what: &str, window: u64| {
        max.and_then(|limit| {
            Some(LimitView {
                limit,
                used: read(what, window)?,
            })
        })
    };
    let view = UsageView {
        key_id: &key.id,
        all: (&totals.all).into(),
        models: totals
            .models
            .iter()
            .map(|(m, c)| (m.as_str(), c.into()))
            .collect(),
        budget,
        requests_per_minute: limit(limits.requests_per_minute, "rpm", minute),
        tokens_per_minute: limit(limits.tokens_per_minute, "tpm", minute),
        concurrent_requests: limit(limits.max_concurrent_requests, "concurrent", 0),
    };
    Reply::json(200, &view)
}

/// `GET /v1/models`: the aliases and model IDs the key may use, in the OpenAI list shape (what
/// the OpenAI SDK's `client.models.list()` reads). A `*` key lists every alias; any other
/// Bedrock model ID works for it too but cannot be listed.
pub fn models_reply(config: &Config, key: &ApiKey) -> Reply {
    #[derive(Serialize)]
    struct Model<'a> {
        id: &'a str,
        object: &'static str,
        created: u64,
        owned_by: &'static str,
        /// The Bedrock model ID an alias names.
        #[serde(skip_serializing_if = "Option::is_none")]
        bedrock_model_id: Option<&'a str>,
    }
    let aliases = config
        .aliases
        .iter()
        .filter(|(_, target)| key.may_use(target))
        .map(|(alias, target)| (alias.as_str(), Some(target.as_str())));
    let ids = key.models.iter().map(|m| (m.as_str(), None));
    let mut seen = std::collections::BTreeSet::new();
    let data: Vec<_> = aliases
        .chain(ids)
        .filter(|(id, _)| seen.insert(*id))
        .map(|(id, bedrock_model_id)| Model {
            id,
            object: "model",
            created: 0,
            owned_by: "aws-bedrock",
            bedrock_model_id,
        })
        .collect();
    #[derive(Serialize)]
    struct List<'a> {
        object: &'static str,
        data: Vec<Model<'a>>,
    }
    Reply::json(
        200,
        &List {
            object: "list",
            data,
        },
    )
}

/// `GET /usage` for `key_id`, reading its totals from `totals`.
pub fn usage(
    config: &Config,
    totals: &dyn UsageTotals,
    counters: &dyn Counters,
    key_id: &str,
    now_ms: u64,
) -> Reply {
    let Some(key) = config.api_keys.iter().find(|k| k.id == key_id) else {
        return GatewayError::new(ErrorKind::Internal, "the key is no longer configured")
            .to_bedrock_reply();
    };
    match totals.read(key_id) {
        Ok(t) => usage_reply(key, &t, counters, now_ms),
        Err(e) => GatewayError::new(
            ErrorKind::StateUnavailable,
            format!("usage unavailable: the gateway's key-value store failed: {e}"),
        )
        .to_bedrock_reply(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::counters::CasCounters;
    use crate::quota::limits::{Budget, KeyLimits, Limits};
    use crate::quota::period::Period;
    use crate::store::memory::MemoryStore;

    #[test]
    fn usage_reply_shows_the_key_its_models_and_its_budget() {
        let key = ApiKey {
            id: "team-a".into(),
            sha256: [0; 32],
            any_model: true,
            models: Default::default(),
            limits: KeyLimits {
                key: Limits {
                    budget: Some(Budget {
                        pico_usd: 10_000_000_000_000,
                        period: Period::Daily,
                    }),
                    requests_per_minute: Some(60),
                    ..Default::default()
                },
                ..Default::default()
            },
        };
        let store = MemoryStore::default();
        let counters = CasCounters(&store);
        let now = 1_795_383_600_000;
        counters
            .add(
                "tollgate/q/team-a/spend",
                Period::Daily.window(now),
                2_500_000_000_000,
            )
            .unwrap();
        let mut totals = Lifetime::default();
        totals.all.requests = 2;
        totals.all.cost_pico_usd = u128::from(u64::MAX) + 1;
        totals.models.insert(
            "claude-fast".into(),
            Sums {
                requests: 2,
                cost_pico_usd: 5,
                ..Default::default()
            },
        );
        let r = usage_reply(&key, &totals, &counters, now);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["key_id"], "team-a");
        assert_eq!(v["requests"], 2);
        // Past u64, written exactly (a JSON integer; `cost_usd` for clients that parse floats).
        let body = String::from_utf8(r.body.clone()).unwrap();
        assert!(
            body.contains(r#""cost_pico_usd":18446744073709551616,"#),
            "{body}"
        );
        assert_eq!(v["cost_usd"], "18446744.073709551616");
        assert_eq!(v["models"]["claude-fast"]["cost_usd"], "0.000000000005");
        assert_eq!(v["budget"]["current"], "2026-11-22");
        assert_eq!(v["budget"]["spent_usd"], "2.50");
        assert_eq!(v["budget"]["remaining_usd"], "7.50");
        assert_eq!(v["budget"]["resets_in_s"], 8400);
        assert_eq!(v["requests_per_minute"]["limit"], 60);
        assert!(v.get("tokens_per_minute").is_none());
    }
}
