//! The usage record: one per exchange, what is logged and billed.

use serde::Serialize;

use crate::accounting::pricing::{self, PriceSource, ServiceTier};
use crate::accounting::usage::Usage;
use crate::request::operation::Operation;
use crate::response::meter::Reading;

/// Where a record's token counts come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    /// The response's own usage (JSON `usage`, stream metadata or invocation metrics).
    Reported,
    /// A successful response whose final usage never arrived (cut stream, mid-stream exception,
    /// unreadable body): billed from what was seen, never zero.
    Estimated,
    /// Nothing to bill: the request was refused, locally or by Bedrock.
    None,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UsageRecord {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub key_id: String,
    /// The model as the client named it (alias or ID).
    pub model: String,
    /// The Bedrock model ID sent upstream.
    pub model_id: String,
    pub operation: Operation,
    pub streamed: bool,
    /// The request went upstream (it was not refused by the gateway).
    pub forwarded: bool,
    pub status: u16,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    /// Images generated (image models, priced per image); absent when none.
    #[serde(skip_serializing_if = "is_zero")]
    pub images: u64,
    /// Exact cost in pico-USD (1e-12 USD).
    pub cost_pico_usd: u64,
    pub usage_source: UsageSource,
    pub priced_as: PriceSource,
    /// The service tier the request was priced at, when not the standard one.
    #[serde(skip_serializing_if = "is_standard")]
    pub service_tier: ServiceTier,
    /// Options the key allowed although Tollgate cannot price them (`limits.unpriced_options`):
    /// the request is billed as if it had not used them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unpriced_options: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exception: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    pub request_bytes: u64,
    pub latency_ms: u64,
}

impl UsageRecord {
    /// The model as totals and metrics name it, with bounded cardinality: the alias the client
    /// used, else the priced Bedrock model ID (an ARN by its resource ID), else `other` (a
    /// client can send any string as a model ID).
    pub fn model_label(&self) -> &str {
        model_label(&self.model, &self.model_id, self.priced_as)
    }

    /// The record as hosts log it: one line, `tollgate.usage {json}`.
    pub fn log_line(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string());
        format!("{LOG_PREFIX}{json}")
    }

    /// A warning to log with the record: it was billed at a fallback price.
    pub fn price_warning(&self) -> Option<String> {
        (self.priced_as == PriceSource::UnknownModel && self.cost_pico_usd > 0).then(|| {
            format!(
                "tollgate: no price for model `{}`: billed at the most expensive chat tier",
                self.model_id
            )
        })
    }

    pub fn usage(&self) -> Usage {
        Usage {
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cache_read_tokens: self.cache_read_tokens,
            cache_write_tokens: self.cache_write_tokens,
            images: self.images,
        }
    }
}

/// The `model` label of a model that is neither a configured alias nor in the price table.
pub const OTHER_MODEL: &str = "other";

/// The `model` label of an exchange, from a bounded set (what `UsageRecord::model_label`
/// returns, so totals and metrics name models alike):
///
/// 1. `model`, what the client named, when it is an alias: exchanges resolve only configured
///    aliases to a different `model_id`, so `model != model_id` means a configured alias;
/// 2. else the model ID when it is priced (`priced_as`, from `pricing::quote`), as the price
///    table spells it: an ARN counts as the resource ID after its last `/`, which is what it is
///    priced as — otherwise every account number or region in a client's ARN would be a new
///    series;
/// 3. else [`OTHER_MODEL`]: a client can send any string as a model ID.
///
/// Step 2 takes an ID with a `%` (which the pricer decodes first) as `other`, so that encoded
/// spellings of one model cannot each become a series: what is left is an ID the price table
/// holds verbatim.
pub fn model_label<'a>(model: &'a str, model_id: &'a str, priced_as: PriceSource) -> &'a str {
    if model != model_id {
        return model;
    }
    if priced_as == PriceSource::UnknownModel || model_id.contains('%') {
        return OTHER_MODEL;
    }
    let id = if model_id.starts_with("arn:") {
        model_id.rsplit('/').next().unwrap_or(model_id)
    } else {
        model_id
    };
    if id.is_empty() || id.starts_with("arn:") {
        OTHER_MODEL
    } else {
        id
    }
}

fn is_standard(tier: &ServiceTier) -> bool {
    *tier == ServiceTier::Standard
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What starts every usage record's log line; the JSON follows.
pub const LOG_PREFIX: &str = "tollgate.usage ";

/// Bytes per token assumed when usage must be estimated. Four is the usual English average; a
/// request body's JSON framing makes it over-count input, which is the safe direction.
const BYTES_PER_TOKEN: u64 = 4;

/// Tokens assumed for `bytes` of request or generated text.
pub fn estimate_tokens(bytes: u64) -> u64 {
    bytes.div_ceil(BYTES_PER_TOKEN)
}

/// What billing falls back to when a response's own usage is missing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fallback {
    /// The reservation's estimate: the request's input and the most output it allows.
    pub estimate: Usage,
    /// Bedrock may have generated all the request allowed: a non-stream answer is complete
    /// before it is sent, and an exchange nobody answered may have run to its end.
    pub whole_estimate: bool,
    /// The host answered in Bedrock's place after the request reached it (Envoy's 504 when the
    /// route times out, a 503 after the upstream hung up): the status is not Bedrock's refusal.
    pub host_answered: bool,
    /// The model is priced per image: no tokens are estimated from the request's size.
    pub priced_per_image: bool,
}

/// What to bill for a response that got this far.
///
/// - Refused (`status` not 2xx, from Bedrock or from the gateway before sending): nothing —
///   Bedrock does not bill refused requests.
/// - Never answered after being sent upstream (`status` 0: a client cancel, a reset; or the
///   host's own reply, [`Fallback::host_answered`]): Bedrock may have run it, so it is
///   estimated, at least at the reservation's estimate ([`Fallback::whole_estimate`]).
/// - Reported usage: exactly that.
/// - Otherwise an estimate that never undercounts what was seen: input from the request size
///   (or what the response already reported), output from the generated text seen; raised to
///   the reservation's estimate when Bedrock may have generated it all.
pub fn billable(
    status: u16,
    sent_upstream: bool,
    reading: &Reading,
    request_bytes: u64,
    fallback: &Fallback,
) -> (Usage, UsageSource) {
    let unanswered = sent_upstream && (status == 0 || fallback.host_answered);
    if !(200..300).contains(&status) && !unanswered {
        return (Usage::default(), UsageSource::None);
    }
    // A final usage of zero output for a response that carried text is not believed.
    let believable = !(reading.usage.output_tokens == 0 && reading.output_text_bytes > 0);
    if reading.complete && believable {
        return (reading.usage, UsageSource::Reported);
    }
    let seen = reading.usage;
    let input_estimate = if fallback.priced_per_image {
        0
    } else {
        estimate_tokens(request_bytes).max(1)
    };
    let output_estimate = estimate_tokens(reading.output_text_bytes);
    let mut usage = Usage {
        input_tokens: if seen.total_input() > 0 {
            seen.input_tokens
        } else {
            input_estimate
        },
        output_tokens: seen.output_tokens.max(output_estimate),
        cache_read_tokens: seen.cache_read_tokens,
        cache_write_tokens: seen.cache_write_tokens,
        images: seen.images,
    };
    if unanswered || fallback.whole_estimate {
        let e = &fallback.estimate;
        if seen.total_input() == 0 {
            usage.input_tokens = usage.input_tokens.max(e.input_tokens);
        }
        usage.output_tokens = usage.output_tokens.max(e.output_tokens);
        usage.images = usage.images.max(e.images);
    }
    (usage, UsageSource::Estimated)
}

/// Everything about an exchange the record needs.
pub struct Facts<'a> {
    pub request_id: Option<&'a str>,
    pub key_id: &'a str,
    pub model: &'a str,
    pub model_id: &'a str,
    pub region: &'a str,
    pub operation: Operation,
    /// 0 when no response status was seen.
    pub status: u16,
    pub sent_upstream: bool,
    pub reading: &'a Reading,
    pub request_bytes: u64,
    pub latency_ms: u64,
    /// The service tier the request was admitted at (priced: `options::decide`).
    pub service_tier: ServiceTier,
}

pub fn make(f: Facts<'_>) -> UsageRecord {
    make_with(f, &Fallback::default())
}

/// The record, billed with `fallback` where the response's own usage is missing.
pub fn make_with(f: Facts<'_>, fallback: &Fallback) -> UsageRecord {
    let (usage, usage_source) = billable(
        f.status,
        f.sent_upstream,
        f.reading,
        f.request_bytes,
        fallback,
    );
    let quote = pricing::quote_tier(f.region, f.model_id, f.service_tier)
        .unwrap_or_else(|| pricing::quote(f.region, f.model_id));
    UsageRecord {
        request_id: f.request_id.map(str::to_string),
        key_id: f.key_id.to_string(),
        model: f.model.to_string(),
        model_id: f.model_id.to_string(),
        operation: f.operation,
        streamed: f.operation.is_stream(),
        forwarded: f.sent_upstream,
        status: f.status,
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        cache_read_tokens: usage.cache_read_tokens,
        cache_write_tokens: usage.cache_write_tokens,
        images: usage.images,
        cost_pico_usd: quote.cost(&usage),
        usage_source,
        priced_as: quote.source,
        service_tier: f.service_tier,
        unpriced_options: Vec::new(),
        exception: f.reading.exception.clone(),
        problem: f.reading.problem.clone(),
        request_bytes: f.request_bytes,
        latency_ms: f.latency_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(model_id: &str) -> UsageRecord {
        let reading = Reading {
            complete: true,
            usage: Usage {
                input_tokens: 10,
                output_tokens: 2,
                ..Default::default()
            },
            ..Default::default()
        };
        make(Facts {
            request_id: Some("r-1"),
            key_id: "k",
            model: model_id,
            model_id,
            region: "us-east-1",
            operation: Operation::Converse,
            status: 200,
            sent_upstream: true,
            reading: &reading,
            request_bytes: 40,
            latency_ms: 3,
            service_tier: ServiceTier::Standard,
        })
    }

    #[test]
    fn log_line_is_the_prefix_and_the_json() {
        let r = record("us.anthropic.claude-haiku-4-5-20251001-v1:0");
        let line = r.log_line();
        let json = line.strip_prefix("tollgate.usage ").unwrap();
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["request_id"], "r-1");
        assert_eq!(v["input_tokens"], 10);
        assert!(!line.contains('\n'));
        assert_eq!(r.price_warning(), None);
    }

    #[test]
    fn unknown_models_are_warned_about() {
        let r = record("us.example.unreleased-model-v9:0");
        assert!(r.cost_pico_usd > 0);
        assert_eq!(
            r.price_warning().as_deref(),
            Some("tollgate: no price for model `us.example.unreleased-model-v9:0`: billed at the most expensive chat tier")
        );
    }

    #[test]
    fn refused_requests_bill_nothing() {
        let r = Reading {
            complete: true,
            usage: Usage {
                input_tokens: 5,
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            billable(429, true, &r, 100, &Fallback::default()),
            (Usage::default(), UsageSource::None)
        );
    }

    #[test]
    fn reported_usage_is_billed_exactly() {
        let u = Usage {
            input_tokens: 10,
            output_tokens: 20,
            cache_read_tokens: 3,
            cache_write_tokens: 4,
            images: 0,
        };
        let r = Reading {
            complete: true,
            usage: u,
            ..Default::default()
        };
        assert_eq!(
            billable(200, true, &r, 1_000_000, &Fallback::default()),
            (u, UsageSource::Reported)
        );
    }

    #[test]
    fn cut_streams_are_estimated_never_zero() {
        let nothing = Reading::default();
        let (u, src) = billable(200, true, &nothing, 10, &Fallback::default());
        assert_eq!(src, UsageSource::Estimated);
        assert_eq!(u.input_tokens, 3);
        let partial = Reading {
            usage: Usage {
                input_tokens: 40,
                output_tokens: 2,
                cache_read_tokens: 7,
                ..Default::default()
            },
            output_text_bytes: 100,
            ..Default::default()
        };
        let (u, _) = billable(200, true, &partial, 10, &Fallback::default());
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.cache_read_tokens),
            (40, 25, 7)
        );
    }

    #[test]
    fn a_reported_zero_output_with_text_seen_is_estimated() {
        let r = Reading {
            complete: true,
            usage: Usage {
                input_tokens: 5,
                ..Default::default()
            },
            output_text_bytes: 40,
            ..Default::default()
        };
        let (u, src) = billable(200, true, &r, 100, &Fallback::default());
        assert_eq!(
            (src, u.input_tokens, u.output_tokens),
            (UsageSource::Estimated, 5, 10)
        );
    }

    #[test]
    fn unanswered_requests_are_estimated_only_if_sent() {
        assert_eq!(
            billable(0, true, &Reading::default(), 40, &Fallback::default()).1,
            UsageSource::Estimated
        );
        assert_eq!(
            billable(0, false, &Reading::default(), 40, &Fallback::default()).1,
            UsageSource::None
        );
    }
}
