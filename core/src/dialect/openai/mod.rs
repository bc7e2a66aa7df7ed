//! OpenAI's Chat Completions API (`POST /v1/chat/completions`) on Bedrock's Converse and
//! ConverseStream: what the OpenAI SDKs and most LLM tooling speak.
//!
//! - The request ([`request`]): messages, tools, sampling and output options become a Converse
//!   body; what Converse cannot honour is refused with 400 naming the parameter, and what
//!   changes nothing Bedrock bills or generates is ignored (the lists are in `request.rs`).
//! - The answer ([`response`]): a Converse answer becomes a `chat.completion`; a ConverseStream
//!   becomes `chat.completion.chunk` server-sent events, each written as its Bedrock event
//!   arrives ([`stream`]).
//!
//! Errors are `{"error": {"message", "type", "param", "code"}}` with the statuses the SDKs map
//! to their exception classes; Bedrock's refusals and stream exceptions are rewritten into it.

mod request;
mod response;
mod stream;

use serde::Serialize;

use super::bad;
use super::refusal::{Class, Envelope};
use super::ClientRequest;
use crate::error::{GatewayError, Reply};

/// The OpenAI error type of a status, as the gateway's own errors name them.
pub fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// An OpenAI error body: `{"error": {"message", "type", "param": null, "code"}}`.
pub fn error_body(r#type: &str, code: &str, message: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct Inner<'a> {
        message: &'a str,
        r#type: &'a str,
        param: Option<()>,
        code: &'a str,
    }
    #[derive(Serialize)]
    struct Body<'a> {
        error: Inner<'a>,
    }
    serde_json::to_vec(&Body {
        error: Inner {
            message,
            r#type,
            param: None,
            code,
        },
    })
    .unwrap_or_default()
}

impl GatewayError {
    /// The error as the OpenAI API shapes it; the SDKs pick their exception by status.
    pub fn to_openai_reply(&self) -> Reply {
        self.json_reply(|status| error_body(error_type(status), self.kind.name(), &self.message))
    }
}

/// A Bedrock error class (`x-amzn-errortype`, or a stream's `:exception-type`, any case, with
/// or without its namespace suffix) and HTTP status, as the status and error type an OpenAI
/// client gets. Bedrock's overload (503, a model not ready) stays 503, which the SDKs retry;
/// a refusal of the gateway's own AWS credentials is the gateway's failure (500), never the
/// client's `authentication_error`.
pub fn from_bedrock(kind: &str, status: u16) -> (u16, &'static str) {
    match Class::of(kind) {
        Class::Validation => (400, "invalid_request_error"),
        Class::AccessDenied => (403, "permission_error"),
        Class::NotFound => (404, "not_found_error"),
        Class::Throttling => (429, "rate_limit_error"),
        Class::Unavailable => (503, "api_error"),
        Class::Timeout => (504, "api_error"),
        Class::Failed => (500, "api_error"),
        Class::Other => match status {
            401 | 403 => (500, "api_error"),
            400..=599 => (status, error_type(status)),
            _ => (500, "api_error"),
        },
    }
}

/// Bedrock's refusals and stream exceptions in OpenAI's envelope: Bedrock's error class is
/// the `code`.
pub(crate) static ENVELOPE: Envelope = Envelope {
    from_bedrock,
    body: |r#type, kind, message| {
        let code = if kind.is_empty() {
            "upstream_error"
        } else {
            kind
        };
        error_body(r#type, code, message)
    },
};

/// `POST /v1/chat/completions`: the body read (its model named), ready to translate.
pub(crate) fn read_chat_completions(
    body: &[u8],
) -> Result<Box<dyn ClientRequest + '_>, GatewayError> {
    Ok(Box::new(request::read(body)?))
}

#[cfg(test)]
mod tests;
