//! Per-key limits as written in the configuration document, and their validated form.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::accounting::money::{ParseUsdError, PicoUsd};
use crate::config::error::ConfigError;
use crate::quota::period::Period;
use crate::request::options::Unpriced;

/// Limits of one key, or of one model for one key. `None` means unlimited.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub budget: Option<Budget>,
    pub requests_per_minute: Option<u64>,
    /// Input plus output tokens (cache tokens included) per minute.
    pub tokens_per_minute: Option<u64>,
    pub max_concurrent_requests: Option<u64>,
    /// Requests asking for more output (or naming none) are clamped to this.
    pub max_output_tokens: Option<u64>,
}

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub pico_usd: u64,
    pub period: Period,
}

/// A key's limits: its own, and those of particular models (by Bedrock model ID).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyLimits {
    pub key: Limits,
    pub models: BTreeMap<String, Limits>,
    /// End a stream with an EventStream exception frame once the budget is exhausted.
    pub cut_off_streams: bool,
    /// Options Tollgate cannot price that this key may use anyway (billed at the standard
    /// price); any other is refused.
    pub unpriced_options: Vec<Unpriced>,
}

impl KeyLimits {
    /// The limits that apply to one model: the key's, then the model's own, if any.
    pub fn for_model(&self, model_id: &str) -> impl Iterator<Item = (Scope, &Limits)> {
        std::iter::once((Scope::Key, &self.key))
            .chain(self.models.get(model_id).map(|l| (Scope::Model, l)))
    }

    /// The tightest output cap among the limits that apply.
    pub fn max_output_tokens(&self, model_id: &str) -> Option<u64> {
        self.for_model(model_id)
            .filter_map(|(_, l)| l.max_output_tokens)
            .min()
    }
}

/// Whether a limit is the key's own or a per-model one (counters are kept apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Key,
    Model,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsDocument {
    #[serde(default)]
    budget: Option<BudgetDocument>,
    #[serde(default)]
    requests_per_minute: Option<u64>,
    #[serde(default)]
    tokens_per_minute: Option<u64>,
    #[serde(default)]
    max_concurrent_requests: Option<u64>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
    #[serde(default)]
    cut_off_streams: Option<bool>,
    #[serde(default)]
    unpriced_options: Option<Vec<Unpriced>>,
    #[serde(default)]
    models: BTreeMap<String, LimitsDocument>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetDocument {
    /// Decimal USD, as a string ("25.50") or a JSON number (read from its text, never as f64).
    usd: serde_json::Value,
    period: Period,
}

impl LimitsDocument {
    /// Validates; `resolve` turns a model name (alias or ID) into a Bedrock model ID.
    pub(crate) fn validate(
        self,
        field: &str,
        resolve: &dyn Fn(&str) -> Option<String>,
    ) -> Result<KeyLimits, ConfigError> {
        let cut_off_streams = self.cut_off_streams.unwrap_or(false);
        let mut unpriced_options = self.unpriced_options.clone().unwrap_or_default();
        unpriced_options.sort_unstable();
        unpriced_options.dedup();
        let mut models = BTreeMap::new();
        for (name, doc) in &self.models {
            let at = format!("{field}.models.{name}");
            if doc.cut_off_streams.is_some()
                || doc.unpriced_options.is_some()
                || !doc.models.is_empty()
            {
                return Err(ConfigError::new(
                    at,
                    "per-model limits cannot set `cut_off_streams`, `unpriced_options` or `models`",
                ));
            }
            let model_id = resolve(name).ok_or_else(|| {
                ConfigError::new(
                    &at,
                    format!("`{name}` is neither a configured alias nor a Bedrock model ID"),
                )
            })?;
            if models.insert(model_id, doc.limits(&at)?).is_some() {
                return Err(ConfigError::new(at, "two entries name the same model"));
            }
        }
        Ok(KeyLimits {
            key: self.limits(field)?,
            models,
            cut_off_streams,
            unpriced_options,
        })
    }

    fn limits(&self, field: &str) -> Result<Limits, ConfigError> {
        let positive = |name: &str, v: Option<u64>| match v {
            Some(0) => Err(ConfigError::new(
                format!("{field}.{name}"),
                "must be at least 1 (omit it for no limit)",
            )),
            v => Ok(v),
        };
        let budget = match &self.budget {
            None => None,
            Some(b) => Some(Budget {
                pico_usd: parse_usd(&b.usd, &format!("{field}.budget.usd"))?,
                period: b.period,
            }),
        };
        Ok(Limits {
            budget,
            requests_per_minute: positive("requests_per_minute", self.requests_per_minute)?,
            tokens_per_minute: positive("tokens_per_minute", self.tokens_per_minute)?,
            max_concurrent_requests: positive(
                "max_concurrent_requests",
                self.max_concurrent_requests,
            )?,
            max_output_tokens: positive("max_output_tokens", self.max_output_tokens)?,
        })
    }
}

/// A budget's `usd`: exact decimal USD as a string or a JSON number (read from its text, never
/// as f64), in pico-USD.
fn parse_usd(v: &serde_json::Value, field: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::new(field, "must be a decimal amount of USD, e.g. \"25.00\"");
    let text = match v {
        serde_json::Value::String(s) => s.trim().to_string(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => return Err(bad()),
    };
    match PicoUsd::parse(&text) {
        Ok(amount) => Ok(amount.saturating_u64()),
        Err(ParseUsdError::Malformed) => Err(bad()),
        Err(ParseUsdError::TooPrecise) => Err(ConfigError::new(
            field,
            "at most 12 decimal places (pico-USD)",
        )),
        Err(ParseUsdError::TooLarge) => Err(ConfigError::new(field, "too large")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::money::PICO_PER_USD;
    use serde_json::json;

    #[test]
    fn usd_amounts_are_exact() {
        let f = "b";
        assert_eq!(parse_usd(&json!("25.50"), f).unwrap(), 25_500_000_000_000);
        assert_eq!(parse_usd(&json!(0.1), f).unwrap(), 100_000_000_000);
        assert_eq!(parse_usd(&json!(3), f).unwrap(), 3 * PICO_PER_USD);
        assert_eq!(parse_usd(&json!("0.000000000001"), f).unwrap(), 1);
        for bad in [
            json!("-1"),
            json!("1e3"),
            json!(""),
            json!(".5"),
            json!("1.0000000000001"),
            json!(null),
            json!("99999999999"),
        ] {
            assert!(parse_usd(&bad, f).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_validate_and_resolve_models() {
        let doc: LimitsDocument = serde_json::from_value(json!({
            "budget": {"usd": "10", "period": "daily"},
            "requests_per_minute": 60,
            "max_output_tokens": 1000,
            "cut_off_streams": true,
            "models": {"claude-smart": {"requests_per_minute": 5, "max_output_tokens": 200}}
        }))
        .unwrap();
        let resolve = |n: &str| (n == "claude-smart").then(|| "us.sonnet".to_string());
        let l = doc.validate("api_keys[0].limits", &resolve).unwrap();
        assert_eq!(
            l.key.budget,
            Some(Budget {
                pico_usd: 10 * PICO_PER_USD,
                period: Period::Daily
            })
        );
        assert!(l.cut_off_streams);
        assert_eq!(l.models["us.sonnet"].requests_per_minute, Some(5));
        assert_eq!(l.max_output_tokens("us.sonnet"), Some(200));
        assert_eq!(l.max_output_tokens("other"), Some(1000));
        assert_eq!(l.for_model("us.sonnet").count(), 2);
    }

    #[test]
    fn bad_limits_name_the_field() {
        let doc: LimitsDocument =
            serde_json::from_value(json!({"requests_per_minute": 0})).unwrap();
        assert_eq!(
            doc.validate("api_keys[2].limits", &|_| None)
                .unwrap_err()
                .field,
            "api_keys[2].limits.requests_per_minute"
        );
        let doc: LimitsDocument = serde_json::from_value(json!({"models": {"nope": {}}})).unwrap();
        assert_eq!(
            doc.validate("l", &|_| None).unwrap_err().field,
            "l.models.nope"
        );
        assert!(serde_json::from_value::<LimitsDocument>(
            json!({"budget": {"usd": 1, "period": "weekly"}})
        )
        .is_err());
        assert!(serde_json::from_value::<LimitsDocument>(json!({"rpm": 1})).is_err());
        assert!(serde_json::from_value::<LimitsDocument>(
            json!({"unpriced_options": ["guardrail"]})
        )
        .is_err());
        let doc: LimitsDocument = serde_json::from_value(json!({"unpriced_options":
            ["service_tier", "guardrails", "service_tier"]}))
        .unwrap();
        assert_eq!(
            doc.validate("l", &|_| None).unwrap().unpriced_options,
            [Unpriced::Guardrails, Unpriced::ServiceTier]
        );
        let doc: LimitsDocument = serde_json::from_value(
            json!({"models": {"m.x": {"unpriced_options": ["guardrails"]}}}),
        )
        .unwrap();
        assert!(doc.validate("l", &|n| Some(n.to_string())).is_err());
    }
}
