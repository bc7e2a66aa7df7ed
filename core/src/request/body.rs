//! What the gateway reads from (and may change in) a request body: the fields that set the
//! output-token limit.
//!
//! The limit is where a request says how much it may cost, so admission reserves against it,
//! and a key's `max_output_tokens` clamps it: every field that can set it, wherever a model
//! family puts it. A body is read only if it is one strict JSON object: no byte-order mark, no
//! trailing data, no invalid UTF-8 or lone surrogate escapes, no duplicate member names at any
//! depth. Anything looser is refused, because another parser (Bedrock's) might read it
//! differently from ours, and a limit we did not see is a limit we did not clamp or price.
//!
//! The body is walked once without building a document tree (`serde_json::Value` costs tens of
//! bytes per JSON value: a 64 MiB array of zeros would take more than a gigabyte). Only the
//! members that can hold a limit are kept, as borrowed slices of the body, and a clamp rewrites
//! just their bytes.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::{ErrorKind, GatewayError};
use crate::request::operation::Operation;

/// Member names that set the output limit in some model family's request: Converse
/// (`maxTokens`), Anthropic, Mistral, Cohere, AI21, DeepSeek, Qwen (`max_tokens`), OpenAI
/// (`max_completion_tokens`), Anthropic's legacy completions (`max_tokens_to_sample`), Llama
/// (`max_gen_len`), Nova (`max_new_tokens`), Titan (`maxTokenCount`), and the spellings other
/// APIs use for the same thing.
const LIMIT_NAMES: &[&str] = &[
    "maxTokens",
    "max_tokens",
    "max_completion_tokens",
    "max_tokens_to_sample",
    "max_gen_len",
    "max_new_tokens",
    "maxTokenCount",
    "max_output_tokens",
    "maxOutputTokens",
];

/// A member that sets the output limit.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LimitField {
    /// The bytes of its value in the body.
    span: Range<usize>,
    /// The value, if it is a non-negative integer (anything else Bedrock refuses; a cap
    /// replaces it).
    value: Option<u64>,
    /// The operation's own field: Converse's `inferenceConfig.maxTokens`, or a top-level limit
    /// of an invoke body.
    primary: bool,
}

/// Where a new member can be added to an object: just after its `{`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ObjectStart {
    after_brace: usize,
    has_members: bool,
}

/// What the gateway found in a request body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestBody {
    operation: Operation,
    limits: Vec<LimitField>,
    top: ObjectStart,
    /// Converse's `inferenceConfig` object.
    inference_config: Option<ObjectStart>,
    /// The cost-raising options the body asks for.
    pub options: BodyOptions,
}

/// Converse members that change what a request costs (checked by [`crate::request::options`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BodyOptions {
    /// `serviceTier.type`, when `serviceTier` is present.
    pub service_tier: Option<String>,
    /// `performanceConfig.latency`, when `performanceConfig` is present.
    pub latency: Option<String>,
    /// `guardrailConfig` is present (and not null).
    pub guardrail: bool,
}

/// The request's output limit after applying a cap, and the body to send if it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLimit {
    /// The most output the request now allows; `None` if it names no limit (Bedrock's default
    /// applies).
    pub max_output_tokens: Option<u64>,
    /// The rewritten body, when the cap changed it.
    pub rewritten: Option<Vec<u8>>,
}

fn refused(why: impl fmt::Display) -> GatewayError {
    GatewayError::new(
        ErrorKind::BadRequest,
        format!("the request body must be one JSON object, without duplicate member names: {why}"),
    )
}

/// Reads a request body of `operation`.
pub fn scan(body: &[u8], operation: Operation) -> Result<RequestBody, GatewayError> {
    let start = body
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if start.and_then(|i| body.get(i)) != Some(&b'{') {
        return Err(refused("it does not start with `{`"));
    }
    let mut found = Found {
        base: body.as_ptr() as usize,
        len: body.len(),
        limits: Vec::new(),
        inference_config: None,
        bad_inference_config: false,
        options: BodyOptions::default(),
        service_tier_present: false,
        performance_present: false,
    };
    let place = match operation {
        Operation::Converse | Operation::ConverseStream => Place::ConverseTop,
        Operation::Invoke | Operation::InvokeWithResponseStream => Place::InvokeTop,
    };
    let has_members = walk(body, Some(&mut found), place).map_err(refused)?;
    if found.bad_inference_config {
        return Err(GatewayError::new(
            ErrorKind::BadRequest,
            "`inferenceConfig` must be a JSON object",
        ));
    }
    for (member, field, present, value) in [
        (
            "serviceTier",
            "type",
            found.service_tier_present,
            &found.options.service_tier,
        ),
        (
            "performanceConfig",
            "latency",
            found.performance_present,
            &found.options.latency,
        ),
    ] {
        if present && value.is_none() {
            return Err(GatewayError::new(
                ErrorKind::BadRequest,
                format!("`{member}` must be a JSON object with a string `{field}`"),
            ));
        }
    }
    Ok(RequestBody {
        operation,
        limits: found.limits,
        top: ObjectStart {
            after_brace: start.map_or(0, |i| i + 1),
            has_members,
        },
        inference_config: found.inference_config,
        options: found.options,
    })
}

impl RequestBody {
    /// The output limit `body` (the body this was scanned from) sets for `model_id`, clamped to
    /// `cap` in every field that can set it. Where the body names no limit, the cap is added in
    /// the operation's own field where that field is certain (Converse, and Anthropic models on
    /// invoke). A body the cap does not change is sent byte for byte as the client sent it.
    pub fn output_limit(&self, body: &[u8], model_id: &str, cap: Option<u64>) -> OutputLimit {
        let requested = self.limits.iter().filter_map(|l| l.value).max();
        let Some(cap) = cap else {
            return OutputLimit {
                max_output_tokens: requested,
                rewritten: None,
            };
        };
        let mut edits: Vec<(Range<usize>, String)> = self
            .limits
            .iter()
            .filter(|l| l.value.is_none_or(|v| v > cap))
            .map(|l| (l.span.clone(), cap.to_string()))
            .collect();
        if let Some(insert) = self.missing_primary(model_id, cap) {
            edits.push(insert);
        }
        let clamped = self
            .limits
            .iter()
            .filter_map(|l| l.value)
            .map(|v| v.min(cap));
        let max_output_tokens = if edits.is_empty() {
            requested
        } else {
            clamped
                .chain(std::iter::once(cap))
                .max()
                .map(|m| m.min(cap))
        };
        OutputLimit {
            max_output_tokens,
            rewritten: (!edits.is_empty()).then(|| apply(body, edits)),
        }
    }

    /// The member to add when the operation's own limit field is absent, where it is certain.
    fn missing_primary(&self, model_id: &str, cap: u64) -> Option<(Range<usize>, String)> {
        if self.limits.iter().any(|l| l.primary) {
            return None;
        }
        let comma = |start: ObjectStart| if start.has_members { "," } else { "" };
        match self.operation {
            Operation::Converse | Operation::ConverseStream => Some(match self.inference_config {
                Some(ic) => {
                    let at = ic.after_brace;
                    (at..at, format!(r#""maxTokens":{cap}{}"#, comma(ic)))
                }
                None => {
                    let at = self.top.after_brace;
                    (
                        at..at,
                        format!(
                            r#""inferenceConfig":{{"maxTokens":{cap}}}{}"#,
                            comma(self.top)
                        ),
                    )
                }
            }),
            Operation::Invoke | Operation::InvokeWithResponseStream => {
                if !model_id.contains("anthropic.") {
                    return None;
                }
                let at = self.top.after_brace;
                Some((at..at, format!(r#""max_tokens":{cap}{}"#, comma(self.top))))
            }
        }
    }
}

/// `body` with each range replaced (ranges do not overlap; insertions are empty ranges).
fn apply(body: &[u8], mut edits: Vec<(Range<usize>, String)>) -> Vec<u8> {
    edits.sort_by_key(|(r, _)| (r.start, r.end));
    let extra: usize = edits.iter().map(|(_, s)| s.len()).sum();
    let mut out = Vec::with_capacity(body.len() + extra);
    let mut at = 0;
    for (range, text) in edits {
        out.extend_from_slice(body.get(at..range.start).unwrap_or_default());
        out.extend_from_slice(text.as_bytes());
        at = at.max(range.end);
    }
    out.extend_from_slice(body.get(at..).unwrap_or_default());
    out
}

/// What the walk collects.
struct Found {
    /// Address and length of the body: borrowed slices are located by address.
    base: usize,
    len: usize,
    limits: Vec<LimitField>,
    inference_config: Option<ObjectStart>,
    bad_inference_config: bool,
    options: BodyOptions,
    service_tier_present: bool,
    performance_present: bool,
}

impl Found {
    /// Where `part`, a slice of the body, lies in it.
    fn span_of<E: de::Error>(&self, part: &str) -> Result<Range<usize>, E> {
        (part.as_ptr() as usize)
            .checked_sub(self.base)
            .map(|start| start..start + part.len())
            .filter(|r| r.end <= self.len)
            .ok_or_else(|| E::custom("internal: a value outside the body"))
    }

    /// Records a limit member whose value is `raw`.
    fn limit<E: de::Error>(&mut self, raw: &RawValue, primary: bool) -> Result<(), E> {
        let text = raw.get();
        walk(text.as_bytes(), None, Place::Plain).map_err(E::custom)?;
        let span = self.span_of(text)?;
        self.limits.push(LimitField {
            span,
            value: text.parse::<u64>().ok(),
            primary,
        });
        Ok(())
    }

    /// Converse's `inferenceConfig`: its `maxTokens` is the operation's own limit, and a
    /// missing one is added inside it.
    fn inference_config<E: de::Error>(&mut self, raw: &RawValue) -> Result<(), E> {
        let text = raw.get();
        if !text.starts_with('{') {
            self.bad_inference_config = true;
            return walk(text.as_bytes(), None, Place::Plain)
                .map(|_| ())
                .map_err(E::custom);
        }
        let start = self.span_of::<E>(text)?.start;
        let has_members =
            walk(text.as_bytes(), Some(&mut *self), Place::InferenceConfig).map_err(E::custom)?;
        self.inference_config = Some(ObjectStart {
            after_brace: start + 1,
            has_members,
        });
        Ok(())
    }
}

/// Walks all of `json` (a whole value, nothing after it), recording what `place` says into
/// `found`; whether it is an object with members. One reader type and one visitor type for
/// every walk: each more would add a copy of serde_json's parser to the `.wasm`.
fn walk(json: &[u8], found: Option<&mut Found>, place: Place) -> Result<bool, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let has_members = Walk { found, place }.deserialize(&mut de)?;
    de.end()?;
    Ok(has_members)
}

/// A JSON string (a member name, or an option's value), borrowed from the body unless it had
/// escapes.
struct Name<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// The names of one object, to refuse duplicates once it is read: sorted then compared, so a
/// huge object costs O(n log n) time, never O(n²), and one borrowed slice per member (8 bytes
/// on wasm32; a name with escapes, rare, is kept decoded).
#[derive(Default)]
struct Names<'de> {
    borrowed: Vec<&'de str>,
    decoded: Vec<String>,
}

impl<'de> Names<'de> {
    fn push(&mut self, name: Cow<'de, str>) {
        match name {
            Cow::Borrowed(n) => self.borrowed.push(n),
            Cow::Owned(n) => self.decoded.push(n),
        }
    }

    /// Whether the object had members; an error naming the first duplicate name.
    fn check<E: de::Error>(mut self) -> Result<bool, E> {
        self.borrowed.sort_unstable();
        self.decoded.sort_unstable();
        let duplicate = self
            .borrowed
            .windows(2)
            .find_map(|w| {
                w.first()
                    .filter(|a| Some(**a) == w.get(1).copied())
                    .copied()
            })
            .or_else(|| {
                self.decoded.windows(2).find_map(|w| {
                    w.first()
                        .filter(|a| Some(*a) == w.get(1))
                        .map(String::as_str)
                })
            })
            .or_else(|| {
                // A name spelt with escapes and the same name without.
                self.decoded
                    .iter()
                    .map(String::as_str)
                    .find(|d| self.borrowed.binary_search(d).is_ok())
            });
        if let Some(name) = duplicate {
            return Err(E::custom(format_args!("duplicate member `{name}`")));
        }
        Ok(!self.borrowed.is_empty() || !self.decoded.is_empty())
    }
}

/// Where a value is, and so what below it matters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    /// A Converse body.
    ConverseTop,
    /// An InvokeModel body: its top-level limit members are the operation's own.
    InvokeTop,
    /// Converse's `inferenceConfig`: `maxTokens` is the operation's own limit.
    InferenceConfig,
    /// Converse's `serviceTier`: its `type`.
    ServiceTier,
    /// Converse's `performanceConfig`: its `latency`.
    PerformanceConfig,
    /// Members named in [`LIMIT_NAMES`] are limits; members that are objects are walked as
    /// `Limits { depth - 1 }` while `depth > 0`, else as `Plain`.
    Limits { depth: u8 },
    /// Nothing below can hold a limit: only validated.
    Plain,
}

impl Place {
    /// How the member `name` of an object here is read.
    fn member(self, name: &str) -> Member {
        let limit = LIMIT_NAMES.contains(&name);
        match self {
            Self::ConverseTop => match name {
                "inferenceConfig" => Member::InferenceConfig,
                "serviceTier" => Member::Option(Slot::ServiceTierPresent),
                "performanceConfig" => Member::Option(Slot::PerformancePresent),
                "guardrailConfig" => Member::Option(Slot::Guardrail),
                // Model-specific fields Converse passes through to the model.
                "additionalModelRequestFields" => Member::Walk(Self::Limits { depth: 1 }),
                _ => Member::Walk(Self::Plain),
            },
            Self::InvokeTop if limit => Member::Limit { primary: true },
            // Nova's `inferenceConfig`, Titan's `textGenerationConfig`, and the like.
            Self::InvokeTop => Member::Walk(Self::Limits { depth: 0 }),
            Self::InferenceConfig if limit => Member::Limit {
                primary: name == "maxTokens",
            },
            Self::ServiceTier if name == "type" => Member::Capture(Slot::ServiceTierType),
            Self::PerformanceConfig if name == "latency" => Member::Capture(Slot::Latency),
            Self::Limits { .. } if limit => Member::Limit { primary: false },
            Self::Limits { depth } if depth > 0 => Member::Walk(Self::Limits { depth: depth - 1 }),
            _ => Member::Walk(Self::Plain),
        }
    }
}

/// How one member's value is read.
enum Member {
    Limit {
        primary: bool,
    },
    InferenceConfig,
    /// An option object (or a guardrail config): noted, then walked.
    Option(Slot),
    /// A string kept for [`BodyOptions`].
    Capture(Slot),
    Walk(Place),
}

/// Where an option goes in [`Found`].
#[derive(Clone, Copy)]
enum Slot {
    ServiceTierPresent,
    ServiceTierType,
    PerformancePresent,
    Latency,
    Guardrail,
}

/// Walks one value of any type: validates all of it, and records what `place` says matters.
/// Its value: whether it was an object with members.
struct Walk<'f> {
    /// `None` for a validation-only walk.
    found: Option<&'f mut Found>,
    place: Place,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = bool;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    // Strings arrive decoded: serde_json has checked their UTF-8 and escapes (a lone
    // surrogate is an error), which skipping over them would not.
    fn visit_str<E>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        // Nothing in an array can hold a limit.
        while seq
            .next_element_seed(Walk {
                found: None,
                place: Place::Plain,
            })?
            .is_some()
        {}
        Ok(false)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let Walk { mut found, place } = self;
        let mut names = Names::default();
        while let Some(Name(name)) = map.next_key()? {
            match (found.as_deref_mut(), place.member(&name)) {
                (Some(f), Member::Limit { primary }) => {
                    let raw: &RawValue = map.next_value()?;
                    f.limit(raw, primary)?;
                }
                (Some(f), Member::InferenceConfig) => {
                    let raw: &RawValue = map.next_value()?;
                    f.inference_config(raw)?;
                }
                (Some(f), Member::Option(slot)) => {
                    let inner = match slot {
                        Slot::ServiceTierPresent => {
                            f.service_tier_present = true;
                            Place::ServiceTier
                        }
                        Slot::PerformancePresent => {
                            f.performance_present = true;
                            Place::PerformanceConfig
                        }
                        _ => Place::Plain,
                    };
                    // A `null` guardrail config is no guardrail; anything else is one.
                    let raw: &RawValue = map.next_value()?;
                    if matches!(slot, Slot::Guardrail) {
                        f.options.guardrail = raw.get() != "null";
                    }
                    walk(raw.get().as_bytes(), Some(&mut *f), inner).map_err(de::Error::custom)?;
                }
                (Some(f), Member::Capture(slot)) => {
                    let Name(value) = map.next_value()?;
                    let value = Some(value.into_owned());
                    match slot {
                        Slot::ServiceTierType => f.options.service_tier = value,
                        _ => f.options.latency = value,
                    }
                }
                (Some(f), Member::Walk(inner)) if inner != Place::Plain => {
                    map.next_value_seed(Walk {
                        found: Some(f),
                        place: inner,
                    })?;
                }
                _ => {
                    map.next_value_seed(Walk {
                        found: None,
                        place: Place::Plain,
                    })?;
                }
            }
            names.push(name);
        }
        names.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const HAIKU: &str = "us.anthropic.claude-haiku-4-5-20251001-v1:0";

    fn limit(
        body: Value,
        op: Operation,
        model: &str,
        cap: Option<u64>,
    ) -> (Option<u64>, Option<Value>) {
        let bytes = serde_json::to_vec(&body).unwrap();
        let out = scan(&bytes, op).unwrap().output_limit(&bytes, model, cap);
        (
            out.max_output_tokens,
            out.rewritten.map(|b| serde_json::from_slice(&b).unwrap()),
        )
    }

    #[test]
    fn reads_the_limit_of_each_body_shape() {
        let cases = [
            (
                json!({"inferenceConfig": {"maxTokens": 50}}),
                Operation::ConverseStream,
                HAIKU,
            ),
            (
                json!({"max_tokens": 50, "messages": []}),
                Operation::Invoke,
                HAIKU,
            ),
            (
                json!({"max_gen_len": 50}),
                Operation::Invoke,
                "meta.llama3-70b-instruct-v1:0",
            ),
            (
                json!({"inferenceConfig": {"max_new_tokens": 50}}),
                Operation::InvokeWithResponseStream,
                "amazon.nova-lite-v1:0",
            ),
            (
                json!({"textGenerationConfig": {"maxTokenCount": 50}}),
                Operation::Invoke,
                "amazon.titan-text-express-v1",
            ),
            (
                json!({"max_completion_tokens": 50, "messages": []}),
                Operation::Invoke,
                "openai.gpt-oss-120b-1:0",
            ),
        ];
        for (body, op, model) in cases {
            assert_eq!(
                limit(body.clone(), op, model, None),
                (Some(50), None),
                "{body}"
            );
            assert_eq!(
                limit(body.clone(), op, model, Some(60)),
                (Some(50), None),
                "within the cap: {body}"
            );
            let (max, rewritten) = limit(body.clone(), op, model, Some(20));
            assert_eq!(max, Some(20));
            assert!(rewritten.unwrap().to_string().contains("20"), "{body}");
        }
    }

    #[test]
    fn clamping_keeps_everything_else() {
        let body = json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}],
                          "inferenceConfig": {"maxTokens": 9000, "temperature": 0.25}, "system": [{"text": "s"}]});
        let (max, rewritten) = limit(body.clone(), Operation::Converse, HAIKU, Some(100));
        let mut expected = body;
        expected["inferenceConfig"]["maxTokens"] = json!(100);
        assert_eq!((max, rewritten), (Some(100), Some(expected)));
    }

    #[test]
    fn only_the_limit_bytes_change() {
        let body = br#"{ "messages" : [ {"content":[{"text":"max_tokens 9000"}]} ],
            "inferenceConfig" : { "temperature" : 0.5 , "maxTokens" : 9000 } }"#;
        let out = scan(body, Operation::Converse)
            .unwrap()
            .output_limit(body, HAIKU, Some(7));
        let text = String::from_utf8(out.rewritten.unwrap()).unwrap();
        assert_eq!(
            text,
            String::from_utf8_lossy(body).replace("\"maxTokens\" : 9000", "\"maxTokens\" : 7")
        );
    }

    #[test]
    fn adds_the_cap_where_the_field_is_certain() {
        let (max, body) = limit(
            json!({"messages": []}),
            Operation::Converse,
            HAIKU,
            Some(64),
        );
        assert_eq!(
            (max, body.unwrap()["inferenceConfig"]["maxTokens"].clone()),
            (Some(64), json!(64))
        );
        // Into an existing inferenceConfig, empty or not.
        for ic in [json!({}), json!({"temperature": 0.5})] {
            let (max, body) = limit(
                json!({"inferenceConfig": ic.clone(), "messages": []}),
                Operation::Converse,
                HAIKU,
                Some(64),
            );
            let body = body.unwrap();
            assert_eq!(
                (max, &body["inferenceConfig"]["maxTokens"]),
                (Some(64), &json!(64))
            );
            if ic.get("temperature").is_some() {
                assert_eq!(body["inferenceConfig"]["temperature"], 0.5);
            }
        }
        // An empty body object.
        let (_, body) = limit(json!({}), Operation::Converse, HAIKU, Some(64));
        assert_eq!(body.unwrap(), json!({"inferenceConfig": {"maxTokens": 64}}));
        let (max, body) = limit(json!({"messages": []}), Operation::Invoke, HAIKU, Some(64));
        assert_eq!(
            (max, body.unwrap()["max_tokens"].clone()),
            (Some(64), json!(64))
        );
        // An unknown invoke body shape is left alone.
        assert_eq!(
            limit(
                json!({"prompt": "x"}),
                Operation::Invoke,
                "ai21.jamba-1-5-large-v1:0",
                Some(64)
            ),
            (None, None)
        );
        // Anthropic's legacy completions field counts: no max_tokens is added next to it.
        let (_, body) = limit(
            json!({"prompt": "x", "max_tokens_to_sample": 9000}),
            Operation::Invoke,
            "anthropic.claude-v2",
            Some(64),
        );
        assert_eq!(
            body.unwrap(),
            json!({"prompt": "x", "max_tokens_to_sample": 64})
        );
    }

    #[test]
    fn without_a_cap_the_estimate_takes_the_largest_limit() {
        let body = json!({"inferenceConfig": {"maxTokens": 10},
                          "additionalModelRequestFields": {"max_tokens": 900}});
        assert_eq!(
            limit(body, Operation::Converse, HAIKU, None),
            (Some(900), None)
        );
    }

    #[test]
    fn a_limit_that_is_not_an_integer_is_replaced_by_the_cap() {
        for bad in [
            json!("lots"),
            json!(-1),
            json!(1.5),
            json!(null),
            json!(1e30),
        ] {
            let (max, body) = limit(
                json!({"inferenceConfig": {"maxTokens": bad.clone()}}),
                Operation::Converse,
                HAIKU,
                Some(10),
            );
            assert_eq!(max, Some(10), "{bad}");
            assert_eq!(body.unwrap()["inferenceConfig"]["maxTokens"], 10, "{bad}");
        }
    }

    #[test]
    fn loose_json_is_refused() {
        let bom = [&b"\xef\xbb\xbf"[..], b"{}"].concat();
        for body in [
            &b""[..],
            b"   ",
            b"not json",
            b"[1,2]",
            b"5",
            &bom,
            b"{} {}",
            b"{}x",
            br#"{"a":1,"a":2}"#,
            br#"{"a":{"b":1,"b":1}}"#,
            br#"{"a":[{"b":1,"\u0062":1}]}"#,
            br#"{"a":"\udc00"}"#,
            br#"{"a":"\ud800x"}"#,
            b"{\"a\":\"\xff\"}",
            br#"{"inferenceConfig":{"maxTokens":"\ud800"}}"#,
            br#"{"inferenceConfig":5}"#,
            br#"{"inferenceConfig":{"maxTokens":1,"maxTokens":2}}"#,
        ] {
            assert!(
                scan(body, Operation::Converse).is_err(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        // Surrounding whitespace and valid surrogate pairs are fine.
        for body in [
            &b" \n{\"a\":\"\\ud83d\\ude00\"}\n "[..],
            b"{\"a\":{\"a\":{\"a\":1}}}",
        ] {
            assert!(scan(body, Operation::Converse).is_ok());
        }
        // Invoke bodies: a non-object `inferenceConfig` is the model's business.
        assert!(scan(br#"{"inferenceConfig":5}"#, Operation::Invoke).is_ok());
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(scan(deep.as_bytes(), Operation::Converse).is_err());
        assert!(scan(deep.as_bytes(), Operation::Invoke).is_err());
    }

    #[test]
    fn converse_options_are_read() {
        let body =
            br#"{"serviceTier":{"type":"priority"},"performanceConfig":{"latency":"optimized"},
                        "guardrailConfig":{"guardrailIdentifier":"g","guardrailVersion":"1"}}"#;
        let options = scan(body, Operation::Converse).unwrap().options;
        assert_eq!(
            options,
            BodyOptions {
                service_tier: Some("priority".into()),
                latency: Some("optimized".into()),
                guardrail: true,
            }
        );
        let none = scan(
            br#"{"guardrailConfig":null,"messages":[]}"#,
            Operation::Converse,
        )
        .unwrap()
        .options;
        assert_eq!(none, BodyOptions::default());
        // Invoke bodies carry no Converse options.
        let invoke = scan(br#"{"serviceTier":{"type":"priority"}}"#, Operation::Invoke).unwrap();
        assert_eq!(invoke.options, BodyOptions::default());
        for bad in [
            &br#"{"serviceTier":"priority"}"#[..],
            br#"{"serviceTier":{}}"#,
            br#"{"serviceTier":{"type":1}}"#,
            br#"{"performanceConfig":{"latency":null}}"#,
            br#"{"serviceTier":{"type":"flex","type":"priority"}}"#,
        ] {
            assert!(
                scan(bad, Operation::Converse).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn member_names_are_compared_decoded() {
        let body = br#"{"inferenceConfig":{"max\u0054okens":9000}}"#;
        let out = scan(body, Operation::Converse)
            .unwrap()
            .output_limit(body, HAIKU, Some(5));
        let v: Value = serde_json::from_slice(&out.rewritten.unwrap()).unwrap();
        assert_eq!(v["inferenceConfig"]["maxTokens"], 5);
    }
}
