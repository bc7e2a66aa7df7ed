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

use super::{ClientRequest, ResponseHead};
use crate::error::{ErrorKind, GatewayError, Reply};

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
        let status = self.kind.status();
        let mut reply = Reply {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: error_body(error_type(status), self.kind.name(), &self.message),
        };
        if let Some(s) = self.retry_after_s {
            reply.headers.push(("retry-after", s.to_string()));
        }
        reply
    }
}

/// A Bedrock error class (`x-amzn-errortype`, or a stream's `:exception-type`, any case, with
/// or without its namespace suffix) and HTTP status, as the status and error type an OpenAI
/// client gets. Bedrock's overload (503, a model not ready) stays 503, which the SDKs retry;
/// a refusal of the gateway's own AWS credentials is the gateway's failure (500), never the
/// client's `authentication_error`.
pub fn from_bedrock(kind: &str, status: u16) -> (u16, &'static str) {
    let kind = kind.split(':').next().unwrap_or("").trim();
    let is = |name: &str| kind.eq_ignore_ascii_case(name);
    if is("ValidationException") {
        (400, "invalid_request_error")
    } else if is("AccessDeniedException") {
        (403, "permission_error")
    } else if is("ResourceNotFoundException") {
        (404, "not_found_error")
    } else if is("ThrottlingException") || is("ServiceQuotaExceededException") {
        (429, "rate_limit_error")
    } else if is("ServiceUnavailableException") || is("ModelNotReadyException") {
        (503, "api_error")
    } else if is("ModelTimeoutException") {
        (504, "api_error")
    } else if is("ModelErrorException")
        || is("ModelStreamErrorException")
        || is("InternalServerException")
    {
        (500, "api_error")
    } else {
        match status {
            401 | 403 => (500, "api_error"),
            400..=599 => (status, error_type(status)),
            _ => (500, "api_error"),
        }
    }
}

/// Largest Bedrock error body kept to take its message from.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Bedrock refused the request (a non-2xx answer: restJson1 `{"message"}`, its class in
/// `x-amzn-errortype`): its body is held, then written in OpenAI's envelope at the end.
#[derive(Debug)]
pub(crate) struct Refusal {
    status: u16,
    r#type: &'static str,
    kind: String,
    body: Vec<u8>,
}

impl Refusal {
    /// The refusal of a response with `status` and `headers`, and the client's head for it.
    pub(crate) fn new(status: u16, headers: &[(&str, &str)]) -> (Self, ResponseHead) {
        let kind = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("x-amzn-errortype"))
            .map(|(_, v)| v.split(':').next().unwrap_or("").trim().to_string())
            .unwrap_or_default();
        let (to, r#type) = from_bedrock(&kind, status);
        let head = ResponseHead {
            status: (to != status).then_some(to),
            set: vec![("content-type", "application/json".into())],
            remove: vec!["content-length", "x-amzn-errortype"],
        };
        let refusal = Self {
            status,
            r#type,
            kind,
            body: Vec::new(),
        };
        (refusal, head)
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) {
        let room = MAX_ERROR_BODY.saturating_sub(self.body.len());
        self.body
            .extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or_default());
    }

    /// The OpenAI error body, with Bedrock's message and its error class as the `code`.
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        #[derive(serde::Deserialize)]
        struct Body {
            #[serde(alias = "Message")]
            message: String,
        }
        let message = match serde_json::from_slice::<Body>(&self.body) {
            Ok(b) if !b.message.is_empty() => b.message,
            _ => format!(
                "Bedrock answered {} {}",
                self.status,
                if self.kind.is_empty() {
                    "without an error type"
                } else {
                    &self.kind
                }
            ),
        };
        let code = if self.kind.is_empty() {
            "upstream_error"
        } else {
            &self.kind
        };
        error_body(self.r#type, code, &message)
    }
}

/// `POST /v1/chat/completions`: the body read (its model named), ready to translate.
pub(crate) fn read_chat_completions(
    body: &[u8],
) -> Result<Box<dyn ClientRequest + '_>, GatewayError> {
    Ok(Box::new(request::read(body)?))
}

fn bad(message: impl Into<String>) -> GatewayError {
    GatewayError::new(ErrorKind::BadRequest, message)
}

#[cfg(test)]
mod tests;
