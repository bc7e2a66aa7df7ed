//! A request's plan: the targets it tries, in order, each with the output cap its attempt is
//! clamped to; and the targets it leaves out without calling them.

use crate::accounting::pricing;
use crate::request::model_family;
use crate::request::model_id;
use crate::request::operation::Operation;
use crate::routing::attempts::Reason;

/// One target of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub model_id: String,
    /// The output cap this target's attempt is clamped to (`None`: the request's own limit).
    pub max_output_tokens: Option<u64>,
}

/// The targets one request tries, in order (at least one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub operation: Operation,
    pub targets: Vec<Planned>,
}

/// A target left out of a request's plan, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub model_id: String,
    pub reason: Reason,
}

/// The targets a request tries, from `ordered` (its alias's targets in this request's order),
/// for a request of `operation` whose input is estimated at `input_tokens`:
///
/// * a target whose context window (litellm's `max_input_tokens`) the input does not fit is
///   left out, as long as some target fits it: the estimate is the request's size, which
///   over-counts (JSON framing, base64 images), so when no target fits, every target is kept
///   and Bedrock judges;
/// * on invoke, whose body is written in one provider's format, the targets of any provider
///   other than the first target's are left out (a Nova body sent to Claude is refused).
pub fn choose(
    ordered: &[&str],
    operation: Operation,
    input_tokens: u64,
    region: &str,
) -> (Vec<String>, Vec<Skipped>) {
    let fits = |id: &str| {
        pricing::quote(region, id)
            .max_input_tokens
            .is_none_or(|window| input_tokens <= u64::from(window))
    };
    let any_fits = ordered.iter().any(|id| fits(id));
    let mut kept: Vec<String> = Vec::with_capacity(ordered.len());
    let mut skipped = Vec::new();
    for &id in ordered {
        let reason = if any_fits && !fits(id) {
            Some(Reason::ContextWindow)
        } else if is_invoke(operation)
            && kept.first().is_some_and(|first| !same_provider(first, id))
        {
            Some(Reason::BodyFormat)
        } else {
            None
        };
        match reason {
            Some(reason) => skipped.push(Skipped {
                model_id: id.to_string(),
                reason,
            }),
            None => kept.push(id.to_string()),
        }
    }
    (kept, skipped)
}

fn is_invoke(operation: Operation) -> bool {
    matches!(
        operation,
        Operation::Invoke | Operation::InvokeWithResponseStream
    )
}

/// Two models take the same invoke body: the same provider, or one whose provider is unknown
/// (an application inference profile's opaque ID: the operator's call).
fn same_provider(a: &str, b: &str) -> bool {
    match (model_family::provider(a), model_family::provider(b)) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// The version tag of [`Plan::encode`]: a plan another build wrote is not read.
const VERSION: &str = "p1";

impl Plan {
    /// One line for Envoy's filter state, which Tollgate's upstream filter reads on each
    /// attempt: `p1|converse|<model ID, path-encoded>=<cap or ->|…`.
    pub fn encode(&self) -> String {
        let mut out = format!("{VERSION}|{}", self.operation.path_segment());
        for t in &self.targets {
            out.push('|');
            out.push_str(&model_id::encode_path_label(&t.model_id));
            out.push('=');
            match t.max_output_tokens {
                Some(cap) => out.push_str(&cap.to_string()),
                None => out.push('-'),
            }
        }
        out
    }

    /// The plan [`Plan::encode`] wrote; `None` if it is not one.
    pub fn decode(s: &str) -> Option<Self> {
        let mut parts = s.split('|');
        if parts.next()? != VERSION {
            return None;
        }
        let operation = Operation::from_path_segment(parts.next()?)?;
        let mut targets = Vec::new();
        for part in parts {
            if targets.len() >= crate::routing::targets::MAX_TARGETS {
                return None;
            }
            let (label, cap) = part.split_once('=')?;
            let model_id = model_id::decode_path_label(label)?;
            let max_output_tokens = match cap {
                "-" => None,
                n => Some(n.parse().ok()?),
            };
            targets.push(Planned {
                model_id,
                max_output_tokens,
            });
        }
        if targets.is_empty() {
            return None;
        }
        Some(Self { operation, targets })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HAIKU: &str = "us.anthropic.claude-haiku-4-5-20251001-v1:0";
    const SONNET: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";
    const NOVA: &str = "us.amazon.nova-lite-v1:0";
    /// Context window 8192 in litellm's data.
    const LLAMA3_8B: &str = "meta.llama3-8b-instruct-v1:0";
    const UNKNOWN: &str = "us.example.unreleased-model-v9:0";

    fn ids(kept: &[String]) -> Vec<&str> {
        kept.iter().map(String::as_str).collect()
    }

    #[test]
    fn targets_whose_window_the_input_does_not_fit_are_left_out() {
        let order = [LLAMA3_8B, HAIKU, NOVA];
        let (kept, skipped) = choose(&order, Operation::Converse, 8192, "us-east-1");
        assert_eq!(ids(&kept), order);
        assert!(skipped.is_empty());
        let (kept, skipped) = choose(&order, Operation::Converse, 8193, "us-east-1");
        assert_eq!(ids(&kept), [HAIKU, NOVA]);
        assert_eq!(
            skipped,
            [Skipped {
                model_id: LLAMA3_8B.into(),
                reason: Reason::ContextWindow
            }]
        );
        // Past every window: Bedrock judges, nothing is left out.
        let (kept, skipped) = choose(&order, Operation::Converse, 10_000_000, "us-east-1");
        assert_eq!(ids(&kept), order);
        assert!(skipped.is_empty());
        // An unknown window fits.
        let (kept, _) = choose(
            &[LLAMA3_8B, UNKNOWN],
            Operation::Converse,
            50_000,
            "us-east-1",
        );
        assert_eq!(ids(&kept), [UNKNOWN]);
    }

    #[test]
    fn invoke_keeps_to_the_first_targets_provider() {
        let order = [HAIKU, NOVA, SONNET];
        let (kept, _) = choose(&order, Operation::Converse, 10, "us-east-1");
        assert_eq!(ids(&kept), order);
        for op in [Operation::Invoke, Operation::InvokeWithResponseStream] {
            let (kept, skipped) = choose(&order, op, 10, "us-east-1");
            assert_eq!(ids(&kept), [HAIKU, SONNET]);
            assert_eq!(
                skipped,
                [Skipped {
                    model_id: NOVA.into(),
                    reason: Reason::BodyFormat
                }]
            );
        }
        // The first target that is kept sets the format.
        let (kept, _) = choose(
            &[LLAMA3_8B, NOVA, HAIKU],
            Operation::Invoke,
            9000,
            "us-east-1",
        );
        assert_eq!(ids(&kept), [NOVA]);
    }

    #[test]
    fn a_plan_round_trips_through_its_encoding() {
        let plan = Plan {
            operation: Operation::ConverseStream,
            targets: vec![
                Planned {
                    model_id: HAIKU.into(),
                    max_output_tokens: Some(4096),
                },
                Planned {
                    model_id:
                        "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/ab12"
                            .into(),
                    max_output_tokens: None,
                },
            ],
        };
        let line = plan.encode();
        assert_eq!(
            line,
            "p1|converse-stream|us.anthropic.claude-haiku-4-5-20251001-v1%3A0=4096|\
             arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aapplication-inference-profile%2Fab12=-"
        );
        assert_eq!(Plan::decode(&line), Some(plan));
        for junk in [
            "",
            "p1",
            "p1|converse",
            "p2|converse|a.b=1",
            "p1|chat|a.b=1",
            "p1|converse|a.b",
            "p1|converse|a.b=x",
            "p1|converse|=1",
        ] {
            assert_eq!(Plan::decode(junk), None, "{junk}");
        }
    }
}
