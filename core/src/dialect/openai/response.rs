//! Bedrock's answer as a Chat Completions answer: a Converse answer, held until it is whole,
//! becomes one `chat.completion`; a ConverseStream becomes `chat.completion.chunk` events as
//! it arrives ([`super::stream`]); a refusal becomes an OpenAI error.

use std::borrow::Cow;

use serde::Serialize;

use super::stream::Chunks;
use super::{error_body, ENVELOPE};
use crate::dialect::answer::{read_whole, Answer};
use crate::dialect::converse;
use crate::dialect::{request_id, ResponseHead, Translator};

/// The answer to one Chat Completions request.
pub(crate) struct ChatResponse {
    /// The model as the client named it: OpenAI answers carry it.
    model: String,
    /// Seconds since the Unix epoch, when the request was translated.
    created: u64,
    /// `chatcmpl-` and Bedrock's request ID, once the head is in.
    id: String,
    stream: bool,
    include_usage: bool,
    answer: Answer<Box<Chunks>>,
}

impl ChatResponse {
    pub(crate) fn new(model: &str, created: u64, stream: bool, include_usage: bool) -> Self {
        Self {
            model: model.to_string(),
            created,
            id: String::new(),
            stream,
            include_usage,
            answer: Answer::Pass,
        }
    }
}

impl Translator for ChatResponse {
    fn head(&mut self, status: u16, headers: &[(&str, &str)]) -> ResponseHead {
        if let Some(head) = self.answer.refuse(&ENVELOPE, status, headers) {
            return head;
        }
        self.id = format!("chatcmpl-{}", request_id(headers));
        if !self.stream {
            return self.answer.hold();
        }
        self.answer = Answer::Stream(Box::new(Chunks::new(
            &self.id,
            self.created,
            &self.model,
            self.include_usage,
        )));
        ResponseHead {
            status: None,
            set: vec![
                ("content-type", "text/event-stream".into()),
                ("cache-control", "no-cache".into()),
            ],
            remove: vec!["content-length"],
        }
    }

    fn body<'a>(&mut self, bedrock: &'a [u8]) -> Cow<'a, [u8]> {
        self.answer.body(bedrock)
    }

    fn end(&mut self) -> Vec<u8> {
        let (id, created, model) = (&self.id, self.created, &self.model);
        self.answer.end(|buf| completion(buf, id, created, model))
    }

    fn cut_off(&mut self, message: &str) -> Vec<u8> {
        match &mut self.answer {
            Answer::Stream(chunks) => chunks.cut_off(message),
            // Only streams are cut off.
            _ => Vec::new(),
        }
    }
}

/// Converse's stop reason as a Chat Completions `finish_reason`.
pub(super) fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "tool_use" => "tool_calls",
        "max_tokens" | "model_context_window_exceeded" => "length",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        // end_turn, stop_sequence, and whatever Bedrock adds.
        _ => "stop",
    }
}

/// A Chat Completions `usage`: `prompt_tokens` counts all input, cached included (OpenAI's
/// sense), where Converse's `inputTokens` leaves cache reads and writes out.
#[derive(Serialize, Debug, PartialEq, Eq)]
pub(super) struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptDetails,
}

#[derive(Serialize, Debug, PartialEq, Eq)]
struct PromptDetails {
    cached_tokens: u64,
}

impl From<converse::Usage> for Usage {
    fn from(u: converse::Usage) -> Self {
        let prompt = u
            .input_tokens
            .saturating_add(u.cache_read_input_tokens)
            .saturating_add(u.cache_write_input_tokens);
        Self {
            prompt_tokens: prompt,
            completion_tokens: u.output_tokens,
            total_tokens: prompt.saturating_add(u.output_tokens),
            prompt_tokens_details: PromptDetails {
                cached_tokens: u.cache_read_input_tokens,
            },
        }
    }
}

/// The whole Converse answer in `buf` as a `chat.completion` (or an OpenAI error body, if it
/// cannot be read: its head has gone out as a 200 already).
pub(super) fn completion(buf: &[u8], id: &str, created: u64, model: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct Completion<'a> {
        id: &'a str,
        object: &'static str,
        created: u64,
        model: &'a str,
        choices: [Choice<'a>; 1],
        usage: Usage,
    }
    #[derive(Serialize)]
    struct Choice<'a> {
        index: u32,
        message: Message<'a>,
        logprobs: Option<()>,
        finish_reason: &'static str,
    }
    #[derive(Serialize)]
    struct Message<'a> {
        role: &'static str,
        content: Option<String>,
        refusal: Option<()>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall<'a>>,
        /// The model's reasoning, where it shows it (as DeepSeek's and LiteLLM's APIs do).
        #[serde(skip_serializing_if = "Option::is_none")]
        reasoning_content: Option<String>,
    }
    #[derive(Serialize)]
    struct ToolCall<'a> {
        id: Cow<'a, str>,
        r#type: &'static str,
        function: Function<'a>,
    }
    #[derive(Serialize)]
    struct Function<'a> {
        name: Cow<'a, str>,
        /// The input object as JSON text.
        arguments: &'a str,
    }
    let answer: converse::Answer<'_> = match read_whole(buf) {
        Ok(a) => a,
        Err(why) => return error_body("api_error", "upstream_error", &why),
    };
    let mut content: Option<String> = None;
    let mut reasoning: Option<String> = None;
    let mut tool_calls = Vec::new();
    for block in answer.output.message.content {
        if let Some(text) = block.text {
            content.get_or_insert_with(String::new).push_str(&text);
        } else if let Some(t) = block.tool_use {
            tool_calls.push(ToolCall {
                id: t.tool_use_id,
                r#type: "function",
                function: Function {
                    name: t.name,
                    arguments: t.input.get(),
                },
            });
        } else if let Some(r) = block.reasoning_content.and_then(|r| r.reasoning_text) {
            reasoning.get_or_insert_with(String::new).push_str(&r.text);
        }
    }
    serde_json::to_vec(&Completion {
        id,
        object: "chat.completion",
        created,
        model,
        choices: [Choice {
            index: 0,
            message: Message {
                role: "assistant",
                content,
                refusal: None,
                tool_calls,
                reasoning_content: reasoning,
            },
            logprobs: None,
            finish_reason: finish_reason(&answer.stop_reason),
        }],
        usage: answer.usage.into(),
    })
    .unwrap_or_default()
}
