//! Bedrock's runtime API, the gateway's native dialect: responses pass through byte for byte,
//! and errors are Bedrock's own.
//!
//! Bedrock's runtime API is restJson1: the error class travels in `x-amzn-ErrorType` and the
//! body is `{"message": …}`. botocore reads that header to pick the exception class, so a boto3
//! caller gets `client.exceptions.AccessDeniedException` and friends, as from Bedrock itself.

use std::borrow::Cow;

use serde::Serialize;

use super::Translator;
use crate::error::{ErrorKind, GatewayError, Reply};
use crate::response::eventstream;

/// The exception type of the terminal frame that ends a stream whose budget ran out. It is
/// one both stream unions (ConverseStream, InvokeModelWithResponseStream) model, so SDKs raise
/// it with its message; an unmodeled type reaches boto3 with neither code nor message.
pub const CUT_OFF_EXCEPTION: &str = "throttlingException";

/// Bedrock's responses, unchanged.
#[derive(Clone, Copy, Debug, Default)]
pub struct PassThrough;

impl Translator for PassThrough {
    fn body<'a>(&mut self, bedrock: &'a [u8]) -> Cow<'a, [u8]> {
        Cow::Borrowed(bedrock)
    }

    /// A terminal EventStream exception frame ([`CUT_OFF_EXCEPTION`]): the stream ends on a
    /// clean frame boundary with an error boto3 raises as `EventStreamError`.
    fn cut_off(&mut self, message: &str) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body<'a> {
            message: &'a str,
        }
        let payload = serde_json::to_vec(&Body { message }).unwrap_or_default();
        eventstream::encode(
            &[
                (":message-type", "exception"),
                (":exception-type", CUT_OFF_EXCEPTION),
                (":content-type", "application/json"),
            ],
            &payload,
        )
    }
}

impl ErrorKind {
    /// The Bedrock error class (`x-amzn-ErrorType`).
    pub fn bedrock_type(self) -> &'static str {
        match self {
            Self::MissingKey | Self::UnknownKey => "UnrecognizedClientException",
            Self::ModelNotAllowed => "AccessDeniedException",
            Self::UnknownModel | Self::BadRequest | Self::BodyTooLarge => "ValidationException",
            Self::NotFound => "UnknownOperationException",
            Self::RequestRateLimited | Self::TokenRateLimited | Self::ConcurrencyLimited => {
                "ThrottlingException"
            }
            Self::BudgetExhausted => "ServiceQuotaExceededException",
            Self::NotConfigured | Self::Internal => "InternalServerException",
            Self::UpstreamUnavailable | Self::StateUnavailable | Self::CredentialsUnavailable => {
                "ServiceUnavailableException"
            }
        }
    }
}

impl GatewayError {
    /// The error as Bedrock would send it.
    pub fn to_bedrock_reply(&self) -> Reply {
        #[derive(Serialize)]
        struct Body<'a> {
            message: &'a str,
        }
        let mut reply = Reply::json(
            self.kind.status(),
            &Body {
                message: &self.message,
            },
        );
        reply
            .headers
            .push(("x-amzn-errortype", self.kind.bedrock_type().to_string()));
        if let Some(s) = self.retry_after_s {
            reply.headers.push(("retry-after", s.to_string()));
        }
        reply
    }
}
