//! Token usage as Bedrock reports it.

use serde::Serialize;

/// Tokens of one exchange. `input_tokens` excludes cached tokens, as both Bedrock's Converse
/// `inputTokens` and Anthropic's `input_tokens` do; total input is the sum of the three.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    /// Images generated (image models, priced per image).
    pub images: u64,
}

impl Usage {
    pub fn total_input(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.cache_read_tokens)
            .saturating_add(self.cache_write_tokens)
    }
}
