//! An alias's targets as configured: one model ID (as always), or a list of targets, each a
//! model ID, an inference profile or an ARN, optionally with a weight.
//!
//! * Without weights the list is a fallback chain: the first target, then the next.
//! * With weights, a request's first target is picked by weight, deterministically from its
//!   request ID (so a test can predict it and a retried request with the same ID lands on the
//!   same target); the rest of the list, in its order, is the fallback. A target without a
//!   weight in a weighted list has weight 0: it is only ever a fallback.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::ConfigError;
use crate::request::model_id;

/// Most targets one alias may list: each is a possible upstream attempt of one request.
pub const MAX_TARGETS: usize = 8;

/// Largest weight of one target.
pub const MAX_WEIGHT: u64 = 1_000_000;

/// One target of an alias: a model in its canonical spelling (`model_id::canonical`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub model_id: String,
    pub weight: u64,
}

/// An alias that names several targets (two or more).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Targets {
    targets: Vec<Target>,
    /// The sum of the weights; 0 for a plain fallback chain.
    total_weight: u64,
}

/// What an alias resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// One model: the alias and the model are the same model for allowlists and limits.
    One(String),
    Several(Targets),
}

/// The name allowlists and per-model limits know an alias of several targets by: it is not
/// any one model, so it is a model of its own there. A `/` never appears in a model ID that is
/// not an ARN, so no client can name it as a raw model ID.
pub fn key_of(alias: &str) -> String {
    format!("alias/{alias}")
}

impl Targets {
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    pub fn is_weighted(&self) -> bool {
        self.total_weight > 0
    }

    /// The order a request with `request_id` tries the targets in (indexes into
    /// [`Targets::targets`]): a weighted list's pick first, then the rest in list order.
    pub fn order(&self, request_id: Option<&str>) -> Vec<usize> {
        let n = self.targets.len();
        let first = if self.total_weight == 0 {
            0
        } else {
            let point = draw(request_id.unwrap_or("")) % self.total_weight;
            let mut below = 0u64;
            self.targets
                .iter()
                .position(|t| {
                    below = below.saturating_add(t.weight);
                    point < below
                })
                .unwrap_or(0)
        };
        std::iter::once(first)
            .chain((0..n).filter(|&i| i != first))
            .collect()
    }
}

/// A number drawn from the request ID: the first 8 bytes of its SHA-256, so IDs that differ in
/// one character land anywhere in the range.
fn draw(request_id: &str) -> u64 {
    let digest = Sha256::digest(request_id.as_bytes());
    let mut first = [0u8; 8];
    for (to, from) in first.iter_mut().zip(digest.iter()) {
        *to = *from;
    }
    u64::from_be_bytes(first)
}

/// Reads the alias `field` (`aliases.<name>`) of the document: a model ID, or a list of
/// targets (`"id"` or `{"model": "id", "weight": n}`). Every model is put in its canonical
/// spelling for `region`; errors name the field.
pub(crate) fn parse(field: &str, value: &Value, region: &str) -> Result<Resolved, ConfigError> {
    let list = match value {
        Value::String(id) => return model(field, id, region).map(Resolved::One),
        Value::Array(list) => list,
        _ => {
            return Err(ConfigError::new(
                field,
                "must be a Bedrock model ID, or a list of targets",
            ))
        }
    };
    if list.is_empty() {
        return Err(ConfigError::new(field, "lists no target"));
    }
    if list.len() > MAX_TARGETS {
        return Err(ConfigError::new(
            field,
            format!("lists more than {MAX_TARGETS} targets"),
        ));
    }
    let mut targets: Vec<Target> = Vec::with_capacity(list.len());
    let mut weighted = false;
    for (i, entry) in list.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let (id, weight) = match entry {
            Value::String(id) => (id.as_str(), None),
            Value::Object(members) => {
                if let Some(unknown) = members.keys().find(|k| *k != "model" && *k != "weight") {
                    return Err(ConfigError::new(
                        &at,
                        format!("unknown field `{unknown}`, expected `model` or `weight`"),
                    ));
                }
                let id = match members.get("model") {
                    Some(Value::String(id)) => id.as_str(),
                    _ => {
                        return Err(ConfigError::new(
                            format!("{at}.model"),
                            "must be a Bedrock model ID",
                        ))
                    }
                };
                let weight = match members.get("weight") {
                    None => None,
                    Some(w) => Some(w.as_u64().filter(|&w| w <= MAX_WEIGHT).ok_or_else(|| {
                        ConfigError::new(
                            format!("{at}.weight"),
                            format!("must be a whole number from 0 to {MAX_WEIGHT}"),
                        )
                    })?),
                };
                (id, weight)
            }
            _ => {
                return Err(ConfigError::new(
                    at,
                    "must be a Bedrock model ID or an object with `model` (and `weight`)",
                ))
            }
        };
        let model_id = model(&at, id, region)?;
        if targets.iter().any(|t| t.model_id == model_id) {
            return Err(ConfigError::new(
                at,
                format!("`{model_id}` is listed twice"),
            ));
        }
        weighted |= weight.is_some();
        targets.push(Target {
            model_id,
            weight: weight.unwrap_or(0),
        });
    }
    let total_weight = targets.iter().map(|t| t.weight).sum::<u64>();
    if weighted && total_weight == 0 {
        return Err(ConfigError::new(
            field,
            "the weights add up to 0: give at least one target a positive weight",
        ));
    }
    if targets.len() == 1 {
        if let Some(one) = targets.pop() {
            return Ok(Resolved::One(one.model_id));
        }
    }
    Ok(Resolved::Several(Targets {
        targets,
        total_weight,
    }))
}

fn model(field: &str, id: &str, region: &str) -> Result<String, ConfigError> {
    if !model_id::is_model_id(id) {
        return Err(ConfigError::new(
            field,
            format!("`{id}` is not a Bedrock model ID or ARN"),
        ));
    }
    model_id::canonical(id, region).map_err(|why| ConfigError::new(field, why))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HAIKU: &str = "us.anthropic.claude-haiku-4-5-20251001-v1:0";
    const NOVA: &str = "us.amazon.nova-lite-v1:0";
    const SONNET: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";

    fn several(v: Value) -> Targets {
        match parse("aliases.a", &v, "us-east-1").unwrap() {
            Resolved::Several(t) => t,
            other => panic!("{other:?}"),
        }
    }

    fn error(v: Value) -> ConfigError {
        parse("aliases.a", &v, "us-east-1").unwrap_err()
    }

    #[test]
    fn one_model_as_a_string_or_a_list_of_one() {
        for v in [json!(HAIKU), json!([HAIKU]), json!([{ "model": HAIKU }])] {
            assert_eq!(
                parse("aliases.a", &v, "us-east-1").unwrap(),
                Resolved::One(HAIKU.into())
            );
        }
        // An ARN of a foundation model is that model's ID.
        let arn = "arn:aws:bedrock:us-east-1::foundation-model/US.AMAZON.NOVA-LITE-V1:0";
        assert_eq!(
            parse("aliases.a", &json!(arn), "us-east-1").unwrap(),
            Resolved::One(NOVA.into())
        );
    }

    #[test]
    fn a_chain_tries_its_targets_in_order() {
        let t = several(json!([HAIKU, { "model": NOVA }, SONNET]));
        assert!(!t.is_weighted());
        let ids: Vec<_> = t.targets().iter().map(|t| t.model_id.as_str()).collect();
        assert_eq!(ids, [HAIKU, NOVA, SONNET]);
        for id in ["a", "b", ""] {
            assert_eq!(t.order(Some(id)), [0, 1, 2]);
        }
        assert_eq!(t.order(None), [0, 1, 2]);
    }

    #[test]
    fn a_weighted_pick_comes_first_then_the_rest_in_list_order() {
        let t = several(json!([
            { "model": HAIKU, "weight": 90 },
            { "model": NOVA, "weight": 10 },
            SONNET
        ]));
        assert!(t.is_weighted());
        let mut firsts = [0u32; 3];
        for i in 0..10_000 {
            let order = t.order(Some(&format!("req-{i}")));
            assert_eq!(order.len(), 3);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2], "every target once");
            // The rest keep list order.
            let rest: Vec<_> = order.iter().skip(1).copied().collect();
            let mut expected: Vec<_> = (0..3).filter(|&i| i != order[0]).collect();
            expected.sort_unstable();
            assert_eq!(rest, expected);
            firsts[order[0]] += 1;
        }
        // Weight 0 (no weight in a weighted list): never first.
        assert_eq!(firsts[2], 0);
        assert!((8_800..=9_200).contains(&firsts[0]), "{firsts:?}");
        // Deterministic per request ID.
        assert_eq!(t.order(Some("same")), t.order(Some("same")));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (json!([]), "aliases.a", "no target"),
            (json!(7), "aliases.a", "list of targets"),
            (json!([HAIKU, 3]), "aliases.a[1]", "object with `model`"),
            (
                json!([HAIKU, "nope"]),
                "aliases.a[1]",
                "not a Bedrock model ID",
            ),
            (
                json!([HAIKU, { "weight": 1 }]),
                "aliases.a[1].model",
                "model ID",
            ),
            (
                json!([HAIKU, { "model": NOVA, "weight": -1 }]),
                "aliases.a[1].weight",
                "whole number",
            ),
            (
                json!([HAIKU, { "model": NOVA, "weight": 1.5 }]),
                "aliases.a[1].weight",
                "whole number",
            ),
            (
                json!([HAIKU, { "model": NOVA, "wieght": 1 }]),
                "aliases.a[1]",
                "unknown field `wieght`",
            ),
            (
                json!([HAIKU, HAIKU.to_uppercase()]),
                "aliases.a[1]",
                "twice",
            ),
            (
                json!([{ "model": HAIKU, "weight": 0 }, NOVA]),
                "aliases.a",
                "add up to 0",
            ),
            (
                json!([HAIKU, "arn:aws:bedrock:eu-west-1::foundation-model/x.y"]),
                "aliases.a[1]",
                "eu-west-1",
            ),
        ];
        for (v, field, why) in cases {
            let e = error(v.clone());
            assert_eq!(e.field, field, "{v}");
            assert!(e.message.contains(why), "{v}: {}", e.message);
        }
        let many: Vec<_> = (0..=MAX_TARGETS).map(|i| format!("a.m-{i}")).collect();
        assert!(error(json!(many)).message.contains("more than"));
    }

    #[test]
    fn the_key_of_several_targets_is_never_a_model_id() {
        assert!(!model_id::is_model_id(&key_of("claude.chain")));
    }
}
