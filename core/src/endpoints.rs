//! Tollgate's own endpoints, answered without going upstream.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::accounting::money::PicoUsd;
use crate::accounting::totals::{Lifetime, Sums, UsageTotals};
use crate::config::{ApiKey, Config};
use crate::error::{ErrorKind, GatewayError, Reply};
use crate::quota::counters::Counters;
use crate::quota::limits::Scope;
use crate::quota::period;
use crate::quota::{counter_name, in_flight, leased_name, Lease, Leased};

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
    /// Of `spent`: reserved by requests in flight (their leases live), not settled yet.
    in_flight_pico_usd: u64,
    /// Seconds until the period starts afresh; absent for `total`.
    #[serde(skip_serializing_if = "Option::is_none")]
    resets_in_s: Option<u64>,
}

#[derive(Serialize)]
struct DialectView {
    requests: u64,
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
    /// Lifetime requests by the API dialect the client spoke (`bedrock`, `anthropic`, `openai`).
    dialects: BTreeMap<String, DialectView>,
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
pub fn usage_reply(
    key: &ApiKey,
    totals: &Lifetime,
    dialects: &BTreeMap<String, u64>,
    counters: &dyn Counters,
    now_ms: u64,
    lease: Lease,
) -> Reply {
    let limits = &key.limits.key;
    let read = |what: &str, window: u64| {
        counters
            .read(&counter_name(&key.id, Scope::Key, "", what), window)
            .ok()
            .map(|v| u64::try_from(v).unwrap_or(0))
    };
    let leased = |what| {
        in_flight(
            counters,
            &leased_name(&key.id, Scope::Key, "", what),
            lease,
            now_ms,
        )
        .ok()
    };
    let minute = period::minute_window(now_ms);
    let budget = limits.budget.and_then(|b| {
        let spent = read("spend", b.period.window(now_ms))?;
        let in_flight_pico_usd = leased(Leased::BudgetReservations)?.min(spent);
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
            in_flight_pico_usd,
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
        dialects: dialects
            .iter()
            .map(|(d, n)| (d.clone(), DialectView { requests: *n }))
            .collect(),
        budget,
        requests_per_minute: limit(limits.requests_per_minute, "rpm", minute),
        tokens_per_minute: limit(limits.tokens_per_minute, "tpm", minute),
        concurrent_requests: limits.max_concurrent_requests.and_then(|limit| {
            Some(LimitView {
                limit,
                used: leased(Leased::Concurrency)?,
            })
        }),
    };
    Reply::json(200, &view)
}

/// The aliases and model IDs `key` may use, each once: aliases first (with the model ID they
/// name), then the key's own model IDs. A `*` key lists every alias; any other Bedrock model
/// ID works for it too but cannot be listed.
fn listed_models<'a>(config: &'a Config, key: &'a ApiKey) -> Vec<(&'a str, Option<&'a str>)> {
    let aliases = config
        .aliases
        .iter()
        .filter(|(_, target)| key.may_use(target))
        .map(|(alias, target)| (alias.as_str(), Some(target.as_str())));
    let ids = key.models.iter().map(|m| (m.as_str(), None));
    let mut seen = std::collections::BTreeSet::new();
    aliases
        .chain(ids)
        .filter(|(id, _)| seen.insert(*id))
        .collect()
}

/// `GET /v1/models`: the aliases and model IDs the key may use, in the list shapes of both
/// APIs that have this route: OpenAI's (`object`, `data[].owned_by`; the OpenAI SDK's
/// `client.models.list()`) and Anthropic's (`data[].type`, `display_name`, `created_at`,
/// `has_more`; the Anthropic SDK, and Claude Code's gateway model discovery, which keeps the
/// IDs that begin with `claude`).
pub fn models_reply(config: &Config, key: &ApiKey) -> Reply {
    #[derive(Serialize)]
    struct Model<'a> {
        id: &'a str,
        object: &'static str,
        created: u64,
        owned_by: &'static str,
        r#type: &'static str,
        display_name: &'a str,
        created_at: &'static str,
        /// The Bedrock model ID an alias names.
        #[serde(skip_serializing_if = "Option::is_none")]
        bedrock_model_id: Option<&'a str>,
    }
    let data: Vec<_> = listed_models(config, key)
        .into_iter()
        .map(|(id, bedrock_model_id)| Model {
            id,
            object: "model",
            created: 0,
            owned_by: "aws-bedrock",
            r#type: "model",
            display_name: id,
            created_at: "1970-01-01T00:00:00Z",
            bedrock_model_id,
        })
        .collect();
    #[derive(Serialize)]
    struct List<'a> {
        object: &'static str,
        first_id: Option<&'a str>,
        last_id: Option<&'a str>,
        has_more: bool,
        data: Vec<Model<'a>>,
    }
    Reply::json(
        200,
        &List {
            object: "list",
            first_id: data.first().map(|m| m.id),
            last_id: data.last().map(|m| m.id),
            has_more: false,
            data,
        },
    )
}

/// `GET /inference-profiles` (Bedrock's ListInferenceProfiles, which Claude Code in Bedrock
/// mode calls at start with `?type=SYSTEM_DEFINED`): the cross-region inference profiles the
/// key may use, in Bedrock's shape — the models its aliases name and the profile IDs it lists.
/// Any other model Claude Code then probes is refused with 403 if the key may not use it.
pub fn inference_profiles_reply(config: &Config, key: &ApiKey) -> Reply {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ModelRef {
        model_arn: String,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Profile<'a> {
        inference_profile_name: &'a str,
        description: String,
        created_at: &'static str,
        updated_at: &'static str,
        inference_profile_arn: String,
        models: Vec<ModelRef>,
        inference_profile_id: &'a str,
        status: &'static str,
        r#type: &'static str,
    }
    let region = &config.region;
    let mut seen = std::collections::BTreeSet::new();
    let profiles: Vec<Profile<'_>> = listed_models(config, key)
        .into_iter()
        .map(|(label, target)| target.unwrap_or(label))
        .filter(|id| crate::request::model_family::is_system_inference_profile(id))
        .filter(|id| seen.insert(*id))
        .map(|id| {
            let foundation = id.split_once('.').map_or(id, |(_, rest)| rest);
            Profile {
                inference_profile_name: id,
                description: format!("{id}, served by Tollgate"),
                created_at: "1970-01-01T00:00:00Z",
                updated_at: "1970-01-01T00:00:00Z",
                inference_profile_arn: format!("arn:aws:bedrock:{region}::inference-profile/{id}"),
                models: vec![ModelRef {
                    model_arn: format!("arn:aws:bedrock:{region}::foundation-model/{foundation}"),
                }],
                inference_profile_id: id,
                status: "ACTIVE",
                r#type: "SYSTEM_DEFINED",
            }
        })
        .collect();
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct List<'a> {
        inference_profile_summaries: Vec<Profile<'a>>,
    }
    Reply::json(
        200,
        &List {
            inference_profile_summaries: profiles,
        },
    )
}

/// `HEAD /`: the gateway is up (Claude Code's connectivity probe).
pub fn probe_reply() -> Reply {
    Reply {
        status: 200,
        headers: Vec::new(),
        body: Vec::new(),
    }
}

/// `GET /usage` for `key`, reading its totals from `totals`.
pub fn usage(
    totals: &dyn UsageTotals,
    counters: &dyn Counters,
    key: &ApiKey,
    now_ms: u64,
    lease: Lease,
) -> Reply {
    let names = crate::dialect::Dialect::ALL.map(|d| d.name());
    let read = totals
        .read(&key.id)
        .and_then(|t| Ok((t, totals.read_dialects(&key.id, &names)?)));
    match read {
        Ok((t, dialects)) => usage_reply(key, &t, &dialects, counters, now_ms, lease),
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
            sha256: Some([0; 32]),
            identities: Default::default(),
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
            guardrail: None,
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
        let dialects = BTreeMap::from([("anthropic".to_string(), 2)]);
        let r = usage_reply(&key, &totals, &dialects, &counters, now, Lease::default());
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["key_id"], "team-a");
        assert_eq!(v["requests"], 2);
        assert_eq!(v["dialects"]["anthropic"]["requests"], 2);
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
