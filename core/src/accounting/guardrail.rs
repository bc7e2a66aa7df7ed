//! Guardrail usage: the policy units a Bedrock guardrail's trace reports (its `usage`,
//! Bedrock's `GuardrailUsage`), and what they cost at litellm's per-unit prices
//! ([`GUARDRAIL_UNITS`]). Bedrock bills these on top of the model's tokens, whether or not the
//! guardrail intervened; only a trace reports them, so a guardrail whose trace is disabled is
//! applied but its units go unmetered.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::accounting::pricing::GUARDRAIL_UNITS;

/// How many kinds of unit the price table has.
pub const UNIT_KINDS: usize = GUARDRAIL_UNITS.len();

/// Characters of text in one guardrail text unit (Bedrock's definition).
const CHARS_PER_UNIT: u64 = 1000;

/// Bytes of output text assumed per token when a reservation estimates guardrail units.
const BYTES_PER_TOKEN: u64 = 4;

/// The guardrail units an answer reported, and whether the guardrail intervened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardrailUsage {
    /// Units by kind, in [`GUARDRAIL_UNITS`] order.
    units: [u64; UNIT_KINDS],
    /// The answer reported a guardrail assessment (a trace).
    pub assessed: bool,
    /// The guardrail intervened: blocked or masked input or output.
    pub intervened: bool,
}

impl GuardrailUsage {
    /// Adds `n` units of the kind `name` (a `GuardrailUsage` member name); false for a name
    /// that is no kind of unit.
    pub fn add(&mut self, name: &str, n: u64) -> bool {
        match GUARDRAIL_UNITS.iter().position(|(kind, _)| *kind == name) {
            Some(i) => {
                if let Some(slot) = self.units.get_mut(i) {
                    *slot = slot.saturating_add(n);
                }
                true
            }
            None => false,
        }
    }

    /// Whether `name` is a kind of unit.
    pub fn is_unit(name: &str) -> bool {
        GUARDRAIL_UNITS.iter().any(|(kind, _)| *kind == name)
    }

    /// Keeps the larger count of each kind, and either flag: readings only grow.
    pub fn raise(&mut self, to: &Self) {
        for (mine, theirs) in self.units.iter_mut().zip(to.units) {
            *mine = (*mine).max(theirs);
        }
        self.assessed |= to.assessed;
        self.intervened |= to.intervened;
    }

    pub fn total_units(&self) -> u64 {
        self.units.iter().fold(0u64, |a, n| a.saturating_add(*n))
    }

    /// Exact cost in pico-USD, saturating.
    pub fn cost_pico_usd(&self) -> u64 {
        let total = self
            .units
            .iter()
            .zip(GUARDRAIL_UNITS.iter())
            .map(|(n, (_, price))| u128::from(*n) * u128::from(*price))
            .fold(0u128, u128::saturating_add);
        u64::try_from(total).unwrap_or(u64::MAX)
    }

    /// The units reported, by name (non-zero ones only).
    pub fn units(&self) -> BTreeMap<&'static str, u64> {
        GUARDRAIL_UNITS
            .iter()
            .zip(self.units)
            .filter(|(_, n)| *n > 0)
            .map(|((name, _), n)| (*name, n))
            .collect()
    }
}

/// The most a request's guardrail may cost, for its reservation: the text units of its input
/// (`input_bytes`) and of the most output it allows, each charged by every policy that bills
/// text (the dearest case: a guardrail with all of them).
pub fn estimate_cost_pico_usd(input_bytes: u64, max_output_tokens: u64) -> u64 {
    let units = input_bytes.div_ceil(CHARS_PER_UNIT).saturating_add(
        max_output_tokens
            .saturating_mul(BYTES_PER_TOKEN)
            .div_ceil(CHARS_PER_UNIT),
    );
    let per_unit: u64 = GUARDRAIL_UNITS
        .iter()
        .filter(|(name, _)| *name != "contentPolicyImageUnits")
        .map(|(_, price)| *price)
        .fold(0, u64::saturating_add);
    units.saturating_mul(per_unit)
}

/// What a usage record says about a guardrail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GuardrailRecord {
    /// The key's guardrail (absent for a client's own, which `unpriced_options` allowed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identifier: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub intervened: bool,
    /// Units the answer's trace reported, by kind; empty when it reported none (trace
    /// disabled, or no answer).
    pub units: BTreeMap<&'static str, u64>,
    /// Their cost, part of the record's `cost_pico_usd`.
    pub cost_pico_usd: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_priced_per_kind() {
        let mut g = GuardrailUsage::default();
        assert!(g.add("contentPolicyUnits", 3));
        assert!(g.add("topicPolicyUnits", 1));
        assert!(g.add("wordPolicyUnits", 5));
        assert!(!g.add("automatedReasoningPolicies", 2));
        assert!(!g.add("guardrailProcessingLatency", 80));
        // $0.15 and $0.15 per 1,000 units; word filters are free.
        assert_eq!(g.cost_pico_usd(), 3 * 150_000_000 + 150_000_000);
        assert_eq!(g.total_units(), 9);
        assert_eq!(
            g.units().into_iter().collect::<Vec<_>>(),
            [
                ("contentPolicyUnits", 3),
                ("topicPolicyUnits", 1),
                ("wordPolicyUnits", 5)
            ]
        );
        let mut more = GuardrailUsage::default();
        more.add("contentPolicyUnits", 2);
        more.intervened = true;
        g.raise(&more);
        assert_eq!(g.units()["contentPolicyUnits"], 3);
        assert!(g.intervened);
    }

    #[test]
    fn the_estimate_covers_every_text_policy() {
        // 1,500 bytes in: 2 units; 100 tokens out (400 bytes): 1 unit.
        let per_unit = 170_000_000 + 150_000_000 + 100_000_000 + 100_000_000 + 150_000_000;
        assert_eq!(estimate_cost_pico_usd(1500, 100), 3 * per_unit);
        assert_eq!(estimate_cost_pico_usd(0, 0), 0);
        assert_eq!(estimate_cost_pico_usd(u64::MAX, u64::MAX), u64::MAX);
    }
}
