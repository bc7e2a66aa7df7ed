//! Anthropic's Messages API (`/v1/messages`, `/v1/messages/count_tokens`): what the Anthropic
//! SDKs and Claude Code speak. Its error envelope is `{"type": "error", "error": {"type",
//! "message"}}`; the SDKs pick their exception class by status.

use serde::Serialize;

use super::ClientRequest;
use crate::error::{ErrorKind, GatewayError, Reply};

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
        let status = self.kind.status();
        let mut reply = Reply {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: error_body(error_type(status), &self.message),
        };
        if let Some(s) = self.retry_after_s {
            reply.headers.push(("retry-after", s.to_string()));
        }
        reply
    }
}

/// `POST /v1/messages`: not served yet.
pub(crate) fn read_messages(_body: &[u8]) -> Result<Box<dyn ClientRequest + '_>, GatewayError> {
    Err(GatewayError::new(
        ErrorKind::NotFound,
        "POST /v1/messages is not served by this gateway yet",
    ))
}

/// `POST /v1/messages/count_tokens`: not served yet.
pub(crate) fn read_count_tokens(_body: &[u8]) -> Result<Box<dyn ClientRequest + '_>, GatewayError> {
    Err(GatewayError::new(
        ErrorKind::NotFound,
        "POST /v1/messages/count_tokens is not served by this gateway yet",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
