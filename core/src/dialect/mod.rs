//! The dialects clients speak. Bedrock's runtime API is the gateway's own: its requests and
//! responses pass through, metered. Every other dialect is translated to and from it:
//!
//! - the request, once its body is in ([`Api::translate`]): the client's body becomes a Bedrock
//!   operation on a model, a body and a few upstream headers — or a local answer;
//! - the response, chunk by chunk as it streams ([`Translator`]), with a last call when Bedrock's
//!   body has ended ([`Translator::end`]) and a say over the response head
//!   ([`Translator::head`]). The meter reads Bedrock's bytes before any translation: billing
//!   never depends on it.
//!
//! A translated route names its model in the body, so admission authenticates the request from
//! its head and everything that depends on the model (alias, allowlist, limits, price, the
//! Bedrock operation) is decided once the body is read ([`crate::exchange::Exchange`]).

use std::borrow::Cow;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::Config;
use crate::error::{ErrorKind, GatewayError, Reply};
use crate::request::operation::Operation;

mod answer;
pub mod anthropic;
pub mod bedrock;
pub mod converse;
pub mod openai;
mod refusal;

/// The API family a client speaks: its routes, its error envelope, its streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Dialect {
    /// Bedrock runtime (restJson1): `{"message"}` + `x-amzn-ErrorType`.
    #[serde(rename = "bedrock")]
    Bedrock,
    /// OpenAI: `{"error": {"message", "type", "code"}}`.
    #[serde(rename = "openai")]
    OpenAi,
    /// Anthropic Messages: `{"type": "error", "error": {"type", "message"}}`.
    #[serde(rename = "anthropic")]
    Anthropic,
}

impl Dialect {
    pub const ALL: [Dialect; 3] = [Self::Bedrock, Self::OpenAi, Self::Anthropic];

    /// Its name in records and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bedrock => "bedrock",
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
        }
    }

    /// The dialect a request's path implies, for answers given before (or without) a route:
    /// Anthropic's paths under `/v1/` (`/v1/messages…`, `/v1/complete`) and any `/v1/` request
    /// of the Anthropic SDK (which always sends `anthropic-version`: `GET /v1/models` is both
    /// APIs'); every other `/v1/` path is OpenAI's; the rest is Bedrock's. `headers` names are
    /// lowercase.
    pub fn of_request(path: &str, headers: &[(&str, &str)]) -> Self {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let Some(rest) = path.strip_prefix("/v1/") else {
            return Self::Bedrock;
        };
        let anthropic_path =
            rest == "messages" || rest.starts_with("messages/") || rest == "complete";
        if anthropic_path || headers.iter().any(|(n, _)| *n == "anthropic-version") {
            Self::Anthropic
        } else {
            Self::OpenAi
        }
    }

    /// The dialect of `path` alone (see [`Dialect::of_request`]).
    pub fn for_path(path: &str) -> Self {
        Self::of_request(path, &[])
    }
}

/// A route in a client's dialect whose model is named in the body: admitted from its head,
/// translated to a Bedrock operation once its body is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// Anthropic `POST /v1/messages`.
    Messages,
    /// Anthropic `POST /v1/messages/count_tokens`.
    CountTokens,
    /// OpenAI `POST /v1/chat/completions`.
    ChatCompletions,
}

impl Api {
    pub fn dialect(self) -> Dialect {
        match self {
            Self::Messages | Self::CountTokens => Dialect::Anthropic,
            Self::ChatCompletions => Dialect::OpenAi,
        }
    }

    /// The request headers its translation reads (lowercase): the exchange keeps them from
    /// the request's head until the body is in.
    pub fn reads_headers(self) -> &'static [&'static str] {
        match self {
            Self::Messages | Self::CountTokens => anthropic::READS_HEADERS,
            Self::ChatCompletions => &[],
        }
    }

    /// Reads the client's (decompressed) body: the model it names, and what to translate.
    pub fn read(self, body: &[u8]) -> Result<Box<dyn ClientRequest + '_>, GatewayError> {
        match self {
            Self::Messages => anthropic::read_messages(body),
            Self::CountTokens => anthropic::read_count_tokens(body),
            Self::ChatCompletions => openai::read_chat_completions(body),
        }
    }
}

/// A translated route's request, read from its body.
pub trait ClientRequest {
    /// The model the body names, as the client wrote it (an alias or a model ID).
    fn model(&self) -> &str;

    /// The Bedrock request for it, now that the model is resolved (`target`).
    fn translate(&self, target: &Target<'_>) -> Result<Translation, GatewayError>;
}

/// What a translated request is for, once its model is resolved.
pub struct Target<'a> {
    pub config: &'a Config,
    /// The model in its one spelling (an alias resolved).
    pub model_id: &'a str,
    /// The headers [`Api::reads_headers`] named, as the client sent them (lowercase names).
    pub headers: &'a [(String, String)],
    /// The host's clock when the body was in (milliseconds since the Unix epoch): answers
    /// that carry a creation time (OpenAI's `created`) take it from here.
    pub now_ms: u64,
}

impl Target<'_> {
    /// The first value of request header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a translated request becomes.
pub enum Translation {
    /// A Bedrock operation: the exchange goes on with it (output cap, options, estimate,
    /// reservation, signing) as for Bedrock's own routes.
    Bedrock(BedrockRequest),
    /// An answer the gateway gives itself in place of `operation` (nothing goes upstream,
    /// nothing is billed).
    Reply { reply: Reply, operation: Operation },
}

/// A request in Bedrock's dialect, and how its response goes back.
pub struct BedrockRequest {
    pub operation: Operation,
    pub body: Vec<u8>,
    /// Upstream headers to set, in place of any the client sent (`accept`, `content-type`).
    pub headers: Vec<(&'static str, String)>,
    /// The response's translator for this exchange.
    pub response: Box<dyn Translator>,
    /// What the translation left out of the client's request (flags, fields Bedrock refuses),
    /// for the usage record: `beta:<flag>`, `field:<name>`.
    pub dropped: Vec<String>,
}

impl BedrockRequest {
    /// A translated request: a JSON body for `operation`, whose answer is an EventStream if
    /// the operation streams, else JSON.
    pub(crate) fn json(
        operation: Operation,
        body: Vec<u8>,
        response: Box<dyn Translator>,
        dropped: Vec<String>,
    ) -> Translation {
        let accept = if operation.is_stream() {
            "application/vnd.amazon.eventstream"
        } else {
            "application/json"
        };
        Translation::Bedrock(Self {
            operation,
            body,
            headers: vec![
                ("content-type", "application/json".into()),
                ("accept", accept.into()),
            ],
            response,
            dropped,
        })
    }
}

/// Bedrock's request ID in a response head (`x-amzn-requestid`): translated answers carry it
/// in their IDs, so that an answer can be traced to Bedrock's logs.
pub(crate) fn request_id<'h>(headers: &[(&str, &'h str)]) -> &'h str {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("x-amzn-requestid"))
        .map_or("", |(_, v)| v.trim())
}

/// Changes to the response head, as the client gets it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseHead {
    /// A new `:status`.
    pub status: Option<u16>,
    /// Headers to set (replacing any of the name).
    pub set: Vec<(&'static str, String)>,
    /// Headers to remove (lowercase). A translator whose body may differ in length from
    /// Bedrock's removes `content-length`: Envoy sends the head before the body is read.
    pub remove: Vec<&'static str>,
}

impl ResponseHead {
    pub fn is_empty(&self) -> bool {
        self.status.is_none() && self.set.is_empty() && self.remove.is_empty()
    }
}

/// Turns Bedrock's response, as it streams, into the client's dialect. The meter has read each
/// piece before it is translated; a translator only changes what the client receives.
pub trait Translator {
    /// The response head: Bedrock's status and headers (names as the host gives them) → what
    /// the client's head changes to. Called once, before any body.
    fn head(&mut self, _status: u16, _headers: &[(&str, &str)]) -> ResponseHead {
        ResponseHead::default()
    }

    /// What the client gets for `bedrock`, a piece of Bedrock's response body (it may end in
    /// the middle of a message: a translator keeps what it cannot translate yet). Borrowed when
    /// the bytes pass unchanged.
    fn body<'a>(&mut self, bedrock: &'a [u8]) -> Cow<'a, [u8]>;

    /// Bedrock's body has ended: the last bytes the client gets (what a translator held back).
    /// Not called when the gateway ended the stream itself ([`Translator::cut_off`]).
    fn end(&mut self) -> Vec<u8> {
        Vec::new()
    }

    /// The last thing the client gets when the gateway ends a stream itself (the key's budget
    /// ran out): an error event, in this dialect, carrying `message`.
    fn cut_off(&mut self, message: &str) -> Vec<u8>;
}

/// The members of a JSON object, in order, values as their raw JSON text.
pub(crate) type Members<'a> = Vec<(Cow<'a, str>, &'a RawValue)>;

/// Reads `body` as one JSON object (nothing after it, no member name twice), without reading
/// its values: a translation copies most of them through as they are.
pub(crate) fn json_members(body: &[u8]) -> Result<Members<'_>, GatewayError> {
    #[derive(Deserialize)]
    struct Name<'a>(#[serde(borrow)] Cow<'a, str>);
    struct Object;
    impl<'de> Visitor<'de> for Object {
        type Value = Members<'de>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out: Members<'de> = Vec::new();
            while let Some(Name(name)) = map.next_key()? {
                let value: &'de RawValue = map.next_value()?;
                if out.iter().any(|(n, _)| *n == name) {
                    return Err(de::Error::custom(format!("member `{name}` appears twice")));
                }
                out.push((name, value));
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    de::Deserializer::deserialize_map(&mut de, Object)
        .and_then(|members| de.end().map(|()| members))
        .map_err(|e| {
            GatewayError::new(
                ErrorKind::BadRequest,
                format!("the request body must be one JSON object: {e}"),
            )
        })
}

/// The raw value of member `name`.
pub(crate) fn member<'a>(members: &Members<'a>, name: &str) -> Option<&'a RawValue> {
    members.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

/// A client's request its translation refuses (400).
pub(crate) fn bad(message: impl Into<String>) -> GatewayError {
    GatewayError::new(ErrorKind::BadRequest, message)
}

/// A JSON string, borrowed from the body where it has no escapes.
#[derive(Deserialize)]
pub(crate) struct Str<'a>(#[serde(borrow)] pub Cow<'a, str>);

/// The string `raw`, or a refusal naming `what`.
pub(crate) fn string<'a>(raw: &'a RawValue, what: &str) -> Result<Cow<'a, str>, GatewayError> {
    serde_json::from_str::<Str<'a>>(raw.get())
        .map(|s| s.0)
        .map_err(|_| bad(format!("`{what}` must be a string")))
}

/// The array `raw`, its items unread, or a refusal naming `what`.
pub(crate) fn array<'a>(raw: &'a RawValue, what: &str) -> Result<Vec<&'a RawValue>, GatewayError> {
    serde_json::from_str(raw.get()).map_err(|_| bad(format!("`{what}` must be an array")))
}

impl GatewayError {
    pub fn to_reply(&self, dialect: Dialect) -> Reply {
        match dialect {
            Dialect::Bedrock => self.to_bedrock_reply(),
            Dialect::OpenAi => self.to_openai_reply(),
            Dialect::Anthropic => self.to_anthropic_reply(),
        }
    }

    /// The error as a JSON reply: its status, the dialect's body for it (`body` of the
    /// status), and when to retry.
    fn json_reply(&self, body: impl FnOnce(u16) -> Vec<u8>) -> Reply {
        let status = self.kind.status();
        let mut reply = Reply {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body(status),
        };
        if let Some(s) = self.retry_after_s {
            reply.headers.push(("retry-after", s.to_string()));
        }
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_arrays_of_a_body_or_a_refusal_naming_them() {
        let raw = |text: &str| RawValue::from_string(text.into()).unwrap();
        let plain = raw(r#""ab""#);
        assert!(matches!(string(&plain, "x"), Ok(Cow::Borrowed("ab"))));
        let escaped = raw(r#""a\nb""#);
        assert_eq!(string(&escaped, "x").unwrap(), "a\nb");
        let e = string(&raw("5"), "m.role").unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (ErrorKind::BadRequest, "`m.role` must be a string")
        );
        let list = raw(r#"[1, {"a": 2}]"#);
        let items: Vec<&str> = array(&list, "x").unwrap().iter().map(|v| v.get()).collect();
        assert_eq!(items, ["1", r#"{"a": 2}"#]);
        assert_eq!(
            array(&raw("{}"), "tools").unwrap_err().message,
            "`tools` must be an array"
        );
    }

    #[test]
    fn a_translated_request_accepts_what_its_operation_answers() {
        for (operation, accept) in [
            (Operation::Converse, "application/json"),
            (
                Operation::ConverseStream,
                "application/vnd.amazon.eventstream",
            ),
            (Operation::Invoke, "application/json"),
            (
                Operation::InvokeWithResponseStream,
                "application/vnd.amazon.eventstream",
            ),
            (Operation::CountTokens, "application/json"),
        ] {
            let Translation::Bedrock(r) = BedrockRequest::json(
                operation,
                b"{}".to_vec(),
                Box::new(bedrock::PassThrough),
                vec!["field:x".into()],
            ) else {
                panic!("a Bedrock request")
            };
            assert_eq!(r.operation, operation);
            assert_eq!(
                r.headers,
                [
                    ("content-type", "application/json".to_string()),
                    ("accept", accept.to_string())
                ]
            );
            assert_eq!(
                (r.body.as_slice(), r.dropped.as_slice()),
                (&b"{}"[..], &["field:x".to_string()][..])
            );
        }
    }

    #[test]
    fn members_of_one_strict_object() {
        let m = json_members(br#" {"a":1,"b\u0041":{"x":[1,2]},"c":"s"} "#).unwrap();
        let names: Vec<&str> = m.iter().map(|(n, _)| n.as_ref()).collect();
        assert_eq!(names, ["a", "bA", "c"]);
        assert_eq!(member(&m, "bA").unwrap().get(), r#"{"x":[1,2]}"#);
        for bad in [
            &br#"{"a":1,"a":2}"#[..],
            br#"{"a":1} {}"#,
            br#"[1]"#,
            b"",
            b"\xef\xbb\xbf{}",
        ] {
            let e = json_members(bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadRequest, "{bad:?}");
        }
    }

    #[test]
    fn dialect_from_path_and_headers() {
        for (path, headers, want) in [
            ("/model/x/converse", &[][..], Dialect::Bedrock),
            ("/usage", &[], Dialect::Bedrock),
            ("/v1/messages?beta=true", &[], Dialect::Anthropic),
            ("/v1/messages/count_tokens", &[], Dialect::Anthropic),
            ("/v1/messages/batches", &[], Dialect::Anthropic),
            ("/v1/complete", &[], Dialect::Anthropic),
            ("/v1/chat/completions", &[], Dialect::OpenAi),
            ("/v1/embeddings", &[], Dialect::OpenAi),
            ("/v1/models", &[], Dialect::OpenAi),
            (
                "/v1/models?limit=1000",
                &[("anthropic-version", "2023-06-01")],
                Dialect::Anthropic,
            ),
            ("/v1messages", &[], Dialect::Bedrock),
        ] {
            assert_eq!(Dialect::of_request(path, headers), want, "{path}");
        }
        assert_eq!(Api::Messages.dialect(), Dialect::Anthropic);
        assert_eq!(Api::ChatCompletions.dialect(), Dialect::OpenAi);
        assert_eq!(
            serde_json::to_string(&[Dialect::Bedrock, Dialect::OpenAi, Dialect::Anthropic])
                .unwrap(),
            r#"["bedrock","openai","anthropic"]"#
        );
    }
}
