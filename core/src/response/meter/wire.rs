//! Wire shapes both readers share. Every struct ignores unknown fields and defaults missing
//! ones; counts and text lengths accept any JSON value, so a surprising type loses that field,
//! not the whole event.

use core::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::raise;
use crate::Usage;

/// Usage under every name Bedrock and its models use. Input counts exclude cached tokens.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct UsageFields {
    // Converse, Nova (and its invoke bodies), Converse-stream `metadata`.
    #[serde(rename = "inputTokens")]
    input_tokens_camel: Count,
    #[serde(rename = "outputTokens")]
    output_tokens_camel: Count,
    #[serde(rename = "cacheReadInputTokens")]
    cache_read_input_tokens_camel: Count,
    #[serde(rename = "cacheWriteInputTokens")]
    cache_write_input_tokens_camel: Count,
    // Nova invoke bodies and `amazon-bedrock-invocationMetrics`.
    #[serde(rename = "cacheReadInputTokenCount")]
    cache_read_input_token_count: Count,
    #[serde(rename = "cacheWriteInputTokenCount")]
    cache_write_input_token_count: Count,
    // `amazon-bedrock-invocationMetrics`.
    #[serde(rename = "inputTokenCount")]
    input_token_count: Count,
    #[serde(rename = "outputTokenCount")]
    output_token_count: Count,
    // Anthropic Messages.
    input_tokens: Count,
    output_tokens: Count,
    cache_read_input_tokens: Count,
    cache_creation_input_tokens: Count,
    // Chat completions (OpenAI-style models).
    prompt_tokens: Count,
    completion_tokens: Count,
}

impl UsageFields {
    pub(super) fn input(&self) -> Option<u64> {
        (self.input_tokens_camel.0)
            .or(self.input_token_count.0)
            .or(self.input_tokens.0)
            .or(self.prompt_tokens.0)
    }

    pub(super) fn output(&self) -> Option<u64> {
        (self.output_tokens_camel.0)
            .or(self.output_token_count.0)
            .or(self.output_tokens.0)
            .or(self.completion_tokens.0)
    }

    pub(super) fn cache_read(&self) -> Option<u64> {
        (self.cache_read_input_tokens_camel.0)
            .or(self.cache_read_input_token_count.0)
            .or(self.cache_read_input_tokens.0)
    }

    pub(super) fn cache_write(&self) -> Option<u64> {
        (self.cache_write_input_tokens_camel.0)
            .or(self.cache_write_input_token_count.0)
            .or(self.cache_creation_input_tokens.0)
    }

    pub(super) fn any(&self) -> bool {
        self.input().is_some()
            || self.output().is_some()
            || self.cache_read().is_some()
            || self.cache_write().is_some()
    }

    /// A final usage to bill from: valid input and output counts (a negative, fractional or
    /// missing output count is not "zero output").
    pub(super) fn is_whole(&self) -> bool {
        self.input().is_some() && self.output().is_some()
    }

    /// Raises the counts to the ones present here (counts are cumulative: a reading never
    /// goes down); absent ones keep what was known.
    pub(super) fn apply(&self, usage: &mut Usage) {
        raise(usage, &self.to_usage());
    }

    pub(super) fn to_usage(self) -> Usage {
        Usage {
            input_tokens: self.input().unwrap_or(0),
            output_tokens: self.output().unwrap_or(0),
            cache_read_tokens: self.cache_read().unwrap_or(0),
            cache_write_tokens: self.cache_write().unwrap_or(0),
            images: 0,
        }
    }
}

/// A token count: a non-negative integer (or a numeric string); anything else is "absent".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Count(pub(super) Option<u64>);

/// The UTF-8 length of a string value; anything else is 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct TextLen(pub(super) u64);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor).map(|s| Count(s.count))
    }
}

impl<'de> Deserialize<'de> for TextLen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
            .map(|s| TextLen(s.text_len))
    }
}

#[derive(Default)]
struct Scalar {
    count: Option<u64>,
    text_len: u64,
}

/// Accepts any JSON value without allocating; only integers and strings carry information.
struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar {
            count: Some(v),
            text_len: 0,
        })
    }

    fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar {
            count: u64::try_from(v).ok(),
            text_len: 0,
        })
    }

    fn visit_f64<E>(self, _: f64) -> Result<Scalar, E> {
        Ok(Scalar::default())
    }

    fn visit_bool<E>(self, _: bool) -> Result<Scalar, E> {
        Ok(Scalar::default())
    }

    fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar {
            count: v.trim().parse().ok(),
            text_len: u64::try_from(v.len()).unwrap_or(u64::MAX),
        })
    }

    fn visit_unit<E>(self) -> Result<Scalar, E> {
        Ok(Scalar::default())
    }

    fn visit_none<E>(self) -> Result<Scalar, E> {
        Ok(Scalar::default())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::default())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::default())
    }
}
