//! The OpenAI API's shapes, for the OpenAI-compatible routes under `/v1/`.

use serde::Serialize;

use crate::error::{GatewayError, Reply};

impl GatewayError {
    /// The error as the OpenAI API shapes it; the SDKs pick their exception by status.
    pub fn to_openai_reply(&self) -> Reply {
        #[derive(Serialize)]
        struct Inner<'a> {
            message: &'a str,
            r#type: &'static str,
            code: &'static str,
        }
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        let r#type = match self.kind.status() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            500..=599 => "api_error",
            _ => "invalid_request_error",
        };
        let mut reply = Reply::json(
            self.kind.status(),
            &Body {
                error: Inner {
                    message: &self.message,
                    r#type,
                    code: self.kind.name(),
                },
            },
        );
        if let Some(s) = self.retry_after_s {
            reply.headers.push(("retry-after", s.to_string()));
        }
        reply
    }
}
