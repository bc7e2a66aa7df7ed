//! Guardrails, echoed: a request that names a guardrail (Converse `guardrailConfig`, InvokeModel
//! `X-Amzn-Bedrock-GuardrailIdentifier` / `-Version` / `X-Amzn-Bedrock-Trace`) is answered as
//! Bedrock answers it — with the guardrail's trace when tracing is on, its policy units in
//! each assessment's `invocationMetrics.usage`, and `amazon-bedrock-guardrailAction` on
//! invoke — and `[[emu:guardrail-intervene]]` has it block the input. The ledger records the
//! guardrail and the units, so tests can check that a gateway forwarded it and billed them.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value};

/// The policies this emulated guardrail has: each bills one unit per 1,000 characters.
pub const POLICIES: [&str; 4] = [
    "contentPolicyUnits",
    "topicPolicyUnits",
    "wordPolicyUnits",
    "sensitiveInformationPolicyUnits",
];

/// The text a blocked input is answered with.
pub const BLOCKED_MESSAGE: &str = "Sorry, the model cannot answer this question.";

/// A request's guardrail, and what it assessed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GuardrailEcho {
    pub identifier: String,
    pub version: String,
    /// The request asked for the trace (`enabled`/`enabled_full`, `ENABLED`/`ENABLED_FULL`).
    pub trace: bool,
    pub intervened: bool,
    /// Units of each policy for the input and for the output.
    #[serde(skip)]
    pub input_units: u64,
    #[serde(skip)]
    pub output_units: u64,
    /// Every policy's units, input and output together (what Bedrock bills).
    pub units: BTreeMap<&'static str, u64>,
}

/// Text units of `chars` characters (at least one for any text).
fn units_of(chars: usize) -> u64 {
    (chars as u64).div_ceil(1000)
}

impl GuardrailEcho {
    /// The guardrail a request names: Converse's body, or InvokeModel's headers (lowercase
    /// names). `input_chars`: the size of what it assesses.
    pub fn of_request(
        converse: bool,
        json: Option<&Value>,
        headers: &[(String, String)],
        input_chars: usize,
        intervene: bool,
    ) -> Option<Self> {
        let (identifier, version, trace) = if converse {
            let g = json?.get("guardrailConfig")?.as_object()?;
            let text = |k: &str| g.get(k).and_then(Value::as_str).map(str::to_string);
            let trace = matches!(
                g.get("trace").and_then(Value::as_str),
                Some("enabled" | "enabled_full")
            );
            (
                text("guardrailIdentifier")?,
                text("guardrailVersion")?,
                trace,
            )
        } else {
            let header = |n: &str| {
                headers
                    .iter()
                    .find(|(name, _)| name == n)
                    .map(|(_, v)| v.clone())
            };
            let trace = matches!(
                header("x-amzn-bedrock-trace").as_deref(),
                Some("ENABLED" | "ENABLED_FULL")
            );
            (
                header("x-amzn-bedrock-guardrailidentifier")?,
                header("x-amzn-bedrock-guardrailversion")?,
                trace,
            )
        };
        Some(Self {
            identifier,
            version,
            trace,
            intervened: intervene,
            input_units: units_of(input_chars),
            output_units: 0,
            units: BTreeMap::new(),
        })
    }

    /// The answer's text is known: its units, and the totals.
    pub fn assess_output(&mut self, output_chars: usize) {
        self.output_units = if self.intervened {
            0
        } else {
            units_of(output_chars)
        };
        self.units = POLICIES
            .iter()
            .map(|p| (*p, self.input_units + self.output_units))
            .collect();
    }

    fn assessment(&self, units: u64, blocked: bool) -> Value {
        let usage: serde_json::Map<String, Value> = POLICIES
            .iter()
            .map(|p| (p.to_string(), json!(units)))
            .chain([
                ("sensitiveInformationPolicyFreeUnits".to_string(), json!(0)),
                ("contextualGroundingPolicyUnits".to_string(), json!(0)),
            ])
            .collect();
        json!({
            "topicPolicy": { "topics": if blocked {
                json!([{ "name": "emulated", "type": "DENY", "action": "BLOCKED", "detected": true }])
            } else { json!([]) } },
            "invocationMetrics": {
                "guardrailProcessingLatency": 7,
                "usage": usage,
                "guardrailCoverage": { "textCharacters": { "guarded": units * 1000, "total": units * 1000 } },
            },
        })
    }

    /// Converse's (and a ConverseStream `metadata` event's) `trace`.
    pub fn converse_trace(&self) -> Value {
        let mut guardrail = json!({
            "inputAssessment": { &self.identifier: self.assessment(self.input_units, self.intervened) },
        });
        if !self.intervened {
            guardrail["outputAssessments"] =
                json!({ &self.identifier: [self.assessment(self.output_units, false)] });
        } else {
            guardrail["actionReason"] = json!("Guardrail blocked.");
        }
        json!({ "guardrail": guardrail })
    }

    /// InvokeModel's `amazon-bedrock-trace`.
    pub fn invoke_trace(&self) -> Value {
        let mut guardrail = json!({
            "input": { &self.identifier: self.assessment(self.input_units, self.intervened) },
        });
        if !self.intervened {
            guardrail["outputs"] =
                json!([{ &self.identifier: self.assessment(self.output_units, false) }]);
        }
        json!({ "guardrail": guardrail })
    }

    /// InvokeModel's `amazon-bedrock-guardrailAction`.
    pub fn action(&self) -> &'static str {
        if self.intervened {
            "INTERVENED"
        } else {
            "NONE"
        }
    }

    /// Adds the action, and the trace if asked for, to an invoke answer (or its last event).
    pub fn add_to_invoke(&self, v: &mut Value) {
        v["amazon-bedrock-guardrailAction"] = json!(self.action());
        if self.trace {
            v["amazon-bedrock-trace"] = self.invoke_trace();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converse_and_invoke_guardrails_are_read_and_echoed() {
        let body = json!({"guardrailConfig":{"guardrailIdentifier":"gr1","guardrailVersion":"3","trace":"enabled"}});
        let mut g = GuardrailEcho::of_request(true, Some(&body), &[], 2500, false).unwrap();
        g.assess_output(10);
        assert_eq!((g.input_units, g.output_units), (3, 1));
        assert_eq!(g.units["contentPolicyUnits"], 4);
        let t = g.converse_trace();
        assert_eq!(
            t["guardrail"]["inputAssessment"]["gr1"]["invocationMetrics"]["usage"]
                ["topicPolicyUnits"],
            3
        );
        assert_eq!(
            t["guardrail"]["outputAssessments"]["gr1"][0]["invocationMetrics"]["usage"]
                ["wordPolicyUnits"],
            1
        );
        let headers = vec![
            (
                "x-amzn-bedrock-guardrailidentifier".to_string(),
                "gr1".to_string(),
            ),
            (
                "x-amzn-bedrock-guardrailversion".to_string(),
                "DRAFT".to_string(),
            ),
        ];
        let mut g = GuardrailEcho::of_request(false, None, &headers, 10, true).unwrap();
        g.assess_output(500);
        assert!(!g.trace && g.intervened);
        assert_eq!(
            g.units["contentPolicyUnits"], 1,
            "no output assessed when blocked"
        );
        let mut v = json!({});
        g.add_to_invoke(&mut v);
        assert_eq!(v, json!({"amazon-bedrock-guardrailAction":"INTERVENED"}));
        assert!(GuardrailEcho::of_request(false, None, &[], 10, false).is_none());
        assert!(GuardrailEcho::of_request(true, Some(&json!({})), &[], 10, false).is_none());
    }
}
