//! The JSON reader: a Converse or InvokeModel answer (and any refusal) is buffered, capped at
//! [`MAX_JSON_BODY`], and parsed once it has ended; the `x-amzn-bedrock-*-token-count` response
//! headers are the fallback.

use core::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::wire::{Count, UsageFields};
use super::{raise, Reading, MAX_JSON_BODY};
use crate::Usage;

/// A non-stream response so far: its token-count headers and its body.
#[derive(Debug, Default)]
pub(super) struct JsonReader {
    headers: HeaderCounts,
    pub(super) body: Vec<u8>,
    over_cap: bool,
}

impl JsonReader {
    /// A response header: InvokeModel's `x-amzn-bedrock-*-token-count` are kept (names
    /// case-insensitive); others are ignored.
    pub(super) fn on_header(&mut self, name: &str, value: &str, reading: &mut Reading) {
        let slot = if name.eq_ignore_ascii_case("x-amzn-bedrock-input-token-count") {
            &mut self.headers.input
        } else if name.eq_ignore_ascii_case("x-amzn-bedrock-output-token-count") {
            &mut self.headers.output
        } else if name.eq_ignore_ascii_case("x-amzn-bedrock-cache-read-input-token-count") {
            &mut self.headers.cache_read
        } else if name.eq_ignore_ascii_case("x-amzn-bedrock-cache-write-input-token-count") {
            &mut self.headers.cache_write
        } else {
            return;
        };
        match value.trim().parse::<u64>() {
            Ok(n) => *slot = Some(n),
            Err(_) => {
                self.headers.unparseable = true;
                reading
                    .note_problem(|| format!("unparseable {} header", name.to_ascii_lowercase()));
            }
        }
    }

    /// A copy of the next body chunk, kept up to the cap.
    pub(super) fn on_body(&mut self, chunk: &[u8], reading: &mut Reading) {
        if self.over_cap {
            return;
        }
        if self.body.len().saturating_add(chunk.len()) > MAX_JSON_BODY {
            self.over_cap = true;
            self.body = Vec::new();
            reading.note_problem(|| {
                format!("body over the {MAX_JSON_BODY}-byte cap; usage from headers only")
            });
            return;
        }
        self.body.extend_from_slice(chunk);
    }

    /// The body has ended: its usage, else the headers'; failing both, what either said.
    pub(super) fn finish(&mut self, reading: &mut Reading) {
        let body = std::mem::take(&mut self.body);
        let from_body = if body.is_empty() {
            None
        } else {
            match serde_json::from_slice::<JsonBody>(&body) {
                Ok(parsed) => parsed.usage(),
                Err(err) => {
                    reading.note_problem(|| format!("invalid JSON body: {err}"));
                    None
                }
            }
        };
        let from_headers = self.headers.usage();
        let complete = [from_body, from_headers]
            .into_iter()
            .flatten()
            .find(|&(_, complete)| complete);
        if let Some((usage, _)) = complete {
            reading.usage = usage;
            reading.complete = true;
        } else {
            for (usage, _) in [from_body, from_headers].into_iter().flatten() {
                raise(&mut reading.usage, &usage);
            }
            if from_body.is_some() || from_headers.is_some() {
                reading.note_problem(|| {
                    "usage without valid input and output token counts".to_string()
                });
            }
        }
    }
}

/// The `x-amzn-bedrock-*-token-count` response headers (InvokeModel).
#[derive(Clone, Copy, Debug, Default)]
struct HeaderCounts {
    input: Option<u64>,
    output: Option<u64>,
    cache_read: Option<u64>,
    cache_write: Option<u64>,
    /// Some count header did not parse (negative, not a number).
    unparseable: bool,
}

impl HeaderCounts {
    /// What the headers say, and whether that is the response's whole usage: an input count,
    /// and an output count unless none is sent (embeddings generate none); nothing unparseable.
    fn usage(&self) -> Option<(Usage, bool)> {
        if self.input.is_none()
            && self.output.is_none()
            && self.cache_read.is_none()
            && self.cache_write.is_none()
        {
            return None;
        }
        let usage = Usage {
            input_tokens: self.input.unwrap_or(0),
            output_tokens: self.output.unwrap_or(0),
            cache_read_tokens: self.cache_read.unwrap_or(0),
            cache_write_tokens: self.cache_write.unwrap_or(0),
            images: 0,
        };
        Some((usage, self.input.is_some() && !self.unparseable))
    }
}

/// A non-stream body: Converse, Anthropic, Nova (`usage`) or Llama (top-level counts); an
/// image model's images.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct JsonBody {
    usage: Option<UsageFields>,
    prompt_token_count: Count,
    generation_token_count: Count,
    /// Titan Image Generator, Nova Canvas, Stability's image services.
    images: Option<Items>,
    /// Stability SDXL.
    artifacts: Option<Items>,
}

impl JsonBody {
    /// The body's usage, and whether it is whole (see [`UsageFields::is_whole`]); an image
    /// model's answer is whole with its images counted.
    fn usage(&self) -> Option<(Usage, bool)> {
        let images = [self.images, self.artifacts]
            .into_iter()
            .flatten()
            .map(|n| n.0)
            .reduce(u64::saturating_add);
        if let Some(images) = images {
            let tokens = self.usage.map(UsageFields::to_usage).unwrap_or_default();
            return Some((Usage { images, ..tokens }, true));
        }
        if let Some(usage) = self.usage.filter(UsageFields::any) {
            return Some((usage.to_usage(), usage.is_whole()));
        }
        let (input, output) = (self.prompt_token_count.0, self.generation_token_count.0);
        if input.is_none() && output.is_none() {
            return None;
        }
        let usage = Usage {
            input_tokens: input.unwrap_or(0),
            output_tokens: output.unwrap_or(0),
            ..Usage::default()
        };
        Some((usage, input.is_some() && output.is_some()))
    }
}

/// The number of items of an array (each skipped unread); anything else is 0.
#[derive(Clone, Copy, Debug, Default)]
struct Items(u64);

impl<'de> Deserialize<'de> for Items {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Count;
        impl<'de> Visitor<'de> for Count {
            type Value = u64;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
                let mut n = 0u64;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n = n.saturating_add(1);
                }
                Ok(n)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(0)
            }

            fn visit_str<E>(self, _: &str) -> Result<u64, E> {
                Ok(0)
            }

            fn visit_u64<E>(self, _: u64) -> Result<u64, E> {
                Ok(0)
            }

            fn visit_i64<E>(self, _: i64) -> Result<u64, E> {
                Ok(0)
            }

            fn visit_f64<E>(self, _: f64) -> Result<u64, E> {
                Ok(0)
            }

            fn visit_bool<E>(self, _: bool) -> Result<u64, E> {
                Ok(0)
            }
        }
        d.deserialize_any(Count).map(Items)
    }
}
