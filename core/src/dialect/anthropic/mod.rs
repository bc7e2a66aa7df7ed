//! Anthropic's Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`): what the
//! Anthropic SDKs and Claude Code speak.
//!
//! - Claude models go to InvokeModel / InvokeModelWithResponseStream, whose body *is* the
//!   Messages API with Bedrock's few differences ([`invoke`]): the answer passes through, a
//!   stream's EventStream `chunk`s become server-sent events as they arrive.
//! - Every other model goes to Converse / ConverseStream, translated both ways ([`converse`]).
//! - Token counts go to Bedrock's CountTokens where the model has it, else are estimated
//!   locally and say so ([`count_tokens`]).
//!
//! Errors are `{"type": "error", "error": {"type", "message"}}` with the statuses the SDKs map
//! to their exception classes; Bedrock's refusals and stream exceptions are rewritten into it.

mod betas;
mod converse;
mod count_tokens;
mod invoke;
mod sse;

use std::borrow::Cow;

use serde::Serialize;

use super::bad;
use super::refusal::{Class, Envelope};
use super::{json_members, member, ClientRequest, Members, Target, Translation};
use crate::error::{GatewayError, Reply};
use crate::request::model_family;

pub use betas::{BEDROCK_BETAS, BETA_FIELDS};

/// Request headers the translation reads.
pub(crate) const READS_HEADERS: &[&str] = &["anthropic-beta", "anthropic-version"];

/// The Anthropic error type of a status, as the API and its SDKs name them.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// An Anthropic error body.
pub fn error_body(r#type: &str, message: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct Inner<'a> {
        r#type: &'a str,
        message: &'a str,
    }
    #[derive(Serialize)]
    struct Body<'a> {
        r#type: &'static str,
        error: Inner<'a>,
    }
    serde_json::to_vec(&Body {
        r#type: "error",
        error: Inner { r#type, message },
    })
    .unwrap_or_default()
}

impl GatewayError {
    /// The error as Anthropic's API shapes it.
    pub fn to_anthropic_reply(&self) -> Reply {
        self.json_reply(|status| error_body(error_type(status), &self.message))
    }
}

/// A Bedrock error class (`x-amzn-errortype`, or a stream's `:exception-type`, any case) and
/// HTTP status, as Anthropic's status and error type. Bedrock's overload (503, a model not
/// ready) is Anthropic's 529 `overloaded_error`, which the SDKs and Claude Code retry; a
/// refusal of the gateway's own AWS credentials is the gateway's failure (500), never the
/// client's `authentication_error`.
pub fn from_bedrock(kind: &str, status: u16) -> (u16, &'static str) {
    match Class::of(kind) {
        Class::Validation => (400, "invalid_request_error"),
        Class::AccessDenied => (403, "permission_error"),
        Class::NotFound => (404, "not_found_error"),
        Class::Throttling => (429, "rate_limit_error"),
        Class::Unavailable => (529, "overloaded_error"),
        Class::Timeout => (504, "timeout_error"),
        Class::Failed => (500, "api_error"),
        Class::Other => match status {
            401 | 403 => (500, "api_error"),
            503 => (529, "overloaded_error"),
            400..=599 => (status, error_type(status)),
            _ => (500, "api_error"),
        },
    }
}

/// Bedrock's refusals and stream exceptions in Anthropic's envelope.
pub(crate) static ENVELOPE: Envelope = Envelope {
    from_bedrock,
    body: |r#type, _kind, message| error_body(r#type, message),
};

/// A `/v1/messages` or `/v1/messages/count_tokens` request, read: its members as the client
/// wrote them, and what the route needs before the model is resolved.
pub(crate) struct MessagesRequest<'a> {
    members: Members<'a>,
    model: String,
    stream: bool,
    count_tokens: bool,
    body_len: usize,
}

pub(crate) fn read_messages(body: &[u8]) -> Result<Box<dyn ClientRequest + '_>, GatewayError> {
    Ok(Box::new(read(body, false)?))
}

pub(crate) fn read_count_tokens(body: &[u8]) -> Result<Box<dyn ClientRequest + '_>, GatewayError> {
    Ok(Box::new(read(body, true)?))
}

fn read(body: &[u8], count_tokens: bool) -> Result<MessagesRequest<'_>, GatewayError> {
    let members = json_members(body)?;
    let model = member(&members, "model")
        .ok_or_else(|| bad("`model` is required"))
        .and_then(|raw| {
            serde_json::from_slice::<String>(raw.get().as_bytes())
                .map_err(|_| bad("`model` must be a string"))
        })?;
    let stream = match member(&members, "stream") {
        None => false,
        Some(raw) => serde_json::from_slice::<Option<bool>>(raw.get().as_bytes())
            .map_err(|_| bad("`stream` must be a boolean"))?
            .unwrap_or(false),
    };
    if member(&members, "messages").is_none() {
        return Err(bad("`messages` is required"));
    }
    Ok(MessagesRequest {
        members,
        model,
        stream: stream && !count_tokens,
        count_tokens,
        body_len: body.len(),
    })
}

impl ClientRequest for MessagesRequest<'_> {
    fn model(&self) -> &str {
        &self.model
    }

    fn translate(&self, target: &Target<'_>) -> Result<Translation, GatewayError> {
        if self.count_tokens {
            return count_tokens::translate(self, target);
        }
        if model_family::is_anthropic(target.model_id) {
            invoke::translate(self, target)
        } else {
            converse::translate(self, target)
        }
    }
}

/// `name` as a JSON string.
fn json_string(name: &str) -> Cow<'static, str> {
    Cow::Owned(serde_json::to_string(name).unwrap_or_else(|_| "\"\"".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::refusal::Refusal;
    use crate::error::ErrorKind;

    #[test]
    fn envelope_and_the_types_the_sdk_maps() {
        for (kind, status, ty) in [
            (ErrorKind::BadRequest, 400, "invalid_request_error"),
            (ErrorKind::UnknownModel, 400, "invalid_request_error"),
            (ErrorKind::MissingKey, 401, "authentication_error"),
            (ErrorKind::ModelNotAllowed, 403, "permission_error"),
            (ErrorKind::NotFound, 404, "not_found_error"),
            (ErrorKind::BodyTooLarge, 413, "request_too_large"),
            (ErrorKind::BudgetExhausted, 429, "rate_limit_error"),
            (ErrorKind::Internal, 500, "api_error"),
            (ErrorKind::StateUnavailable, 503, "api_error"),
        ] {
            let r = GatewayError::new(kind, "why")
                .retry_after(7)
                .to_anthropic_reply();
            assert_eq!(r.status, status, "{kind:?}");
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["type"], ty, "{kind:?}");
            assert_eq!(v["error"]["message"], "why");
            assert!(r.headers.contains(&("retry-after", "7".into())));
        }
        assert_eq!(error_type(529), "overloaded_error");
    }

    #[test]
    fn bedrock_errors_in_anthropics_words() {
        for (kind, status, want) in [
            ("ValidationException", 400, (400, "invalid_request_error")),
            (
                "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/",
                429,
                (429, "rate_limit_error"),
            ),
            ("throttlingException", 0, (429, "rate_limit_error")),
            (
                "ServiceUnavailableException",
                503,
                (529, "overloaded_error"),
            ),
            ("ModelNotReadyException", 429, (529, "overloaded_error")),
            ("AccessDeniedException", 403, (403, "permission_error")),
            ("ResourceNotFoundException", 404, (404, "not_found_error")),
            ("ModelTimeoutException", 408, (504, "timeout_error")),
            ("modelStreamErrorException", 424, (500, "api_error")),
            ("UnrecognizedClientException", 403, (500, "api_error")),
            ("", 503, (529, "overloaded_error")),
            ("", 413, (413, "request_too_large")),
            ("", 200, (500, "api_error")),
        ] {
            assert_eq!(from_bedrock(kind, status), want, "{kind} {status}");
        }
    }

    #[test]
    fn a_refusal_keeps_bedrocks_message() {
        let (mut r, head) = Refusal::new(
            &ENVELOPE,
            503,
            &[
                ("x-amzn-errortype", "ServiceUnavailableException"),
                ("content-length", "30"),
            ],
        );
        assert_eq!(head.status, Some(529));
        assert!(head.remove.contains(&"content-length"));
        r.push(br#"{"message":"Too many "#);
        r.push(br#"connections"}"#);
        let v: serde_json::Value = serde_json::from_slice(&r.finish()).unwrap();
        assert_eq!(v["error"]["type"], "overloaded_error");
        assert_eq!(v["error"]["message"], "Too many connections");
        let (mut r, head) = Refusal::new(&ENVELOPE, 400, &[]);
        assert_eq!(head.status, None);
        r.push(b"not json");
        let v: serde_json::Value = serde_json::from_slice(&r.finish()).unwrap();
        assert_eq!(
            v["error"]["message"],
            "Bedrock answered 400 without an error type"
        );
    }

    #[test]
    fn a_request_names_its_model_and_messages() {
        let r = read(
            br#"{"model":"claude-fast","messages":[],"stream":true}"#,
            false,
        )
        .unwrap();
        assert_eq!((r.model.as_str(), r.stream), ("claude-fast", true));
        let r = read(br#"{"model":"m","messages":[],"stream":true}"#, true).unwrap();
        assert!(!r.stream, "a token count never streams");
        for (body, why) in [
            (&br#"{"messages":[]}"#[..], "`model` is required"),
            (br#"{"model":5,"messages":[]}"#, "`model` must be a string"),
            (br#"{"model":"m"}"#, "`messages` is required"),
            (
                br#"{"model":"m","messages":[],"stream":"yes"}"#,
                "`stream` must be a boolean",
            ),
        ] {
            let e = read(body, false).err().unwrap();
            assert_eq!((e.kind, e.message.as_str()), (ErrorKind::BadRequest, why));
        }
    }
}
