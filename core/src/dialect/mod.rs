//! The dialects clients speak. Bedrock's runtime API is the gateway's own: its requests and
//! responses pass through, metered. Every other dialect is translated to and from it, the
//! response chunk by chunk ([`Translator`]); today the OpenAI-compatible routes under `/v1/`
//! are local endpoints, and only their error envelope differs.

use std::borrow::Cow;

pub mod bedrock;
pub mod openai;

/// The error shape a client expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Bedrock runtime (restJson1): `{"message"}` + `x-amzn-ErrorType`.
    Bedrock,
    /// OpenAI: `{"error": {"message", "type", "code"}}`.
    OpenAi,
}

impl Dialect {
    /// OpenAI-compatible routes live under `/v1/`; everything else speaks Bedrock.
    pub fn for_path(path: &str) -> Self {
        if path.starts_with("/v1/") {
            Self::OpenAi
        } else {
            Self::Bedrock
        }
    }
}

/// Turns Bedrock's response, as it streams, into the client's dialect. The meter has read each
/// piece before it is translated; a translator only changes what the client receives.
pub trait Translator {
    /// What the client gets for `bedrock`, a piece of Bedrock's response body (it may end in
    /// the middle of a message: a translator keeps what it cannot translate yet). Borrowed when
    /// the bytes pass unchanged.
    fn body<'a>(&mut self, bedrock: &'a [u8]) -> Cow<'a, [u8]>;

    /// The last thing the client gets when the gateway ends a stream itself (the key's budget
    /// ran out): an error event, in this dialect, carrying `message`.
    fn cut_off(&mut self, message: &str) -> Vec<u8>;
}
