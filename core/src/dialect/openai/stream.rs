//! A ConverseStream as Chat Completions server-sent events, each written as soon as its
//! Bedrock event is whole (nothing is held back but an incomplete EventStream frame):
//!
//! | ConverseStream | `chat.completion.chunk` |
//! |---|---|
//! | `messageStart` | `delta: {role: "assistant", content: ""}` |
//! | `contentBlockDelta` text | `delta: {content}` |
//! | `contentBlockStart` toolUse | `delta: {tool_calls: [{index, id, type, function: {name, arguments: ""}}]}` |
//! | `contentBlockDelta` toolUse | `delta: {tool_calls: [{index, function: {arguments}}]}` |
//! | `contentBlockDelta` reasoningContent text | `delta: {reasoning_content}` |
//! | `messageStop` | `delta: {}`, `finish_reason` |
//! | `metadata` | `choices: []`, `usage` (when `stream_options.include_usage`), then `data: [DONE]` |
//! | an exception frame | `data: {"error": {…}}`, the stream's end (the SDKs raise `APIError`) |
//!
//! With `include_usage`, every chunk carries `"usage": null` but the last, as OpenAI's do.

use serde::Serialize;

use super::response::{finish_reason, Usage};
use super::{error_body, ENVELOPE};
use crate::dialect::answer::{decode, Frames, Stream};
use crate::dialect::converse::{BlockDelta, BlockStart, MessageStop, Metadata};
use crate::dialect::refusal::{exception_body, exception_kind};
use crate::response::eventstream::{Decoder, Message};

const DONE: &[u8] = b"data: [DONE]\n\n";

pub(crate) struct Chunks {
    decoder: Decoder,
    /// `data: {"id":…,"object":"chat.completion.chunk","created":…,"model":…,`: how every
    /// chunk begins.
    head: Vec<u8>,
    include_usage: bool,
    /// The role chunk went out.
    started: bool,
    /// The `contentBlockIndex` of each tool call, in order: a call's place here is its
    /// `index` in `tool_calls`.
    tools: Vec<u64>,
    /// `messageStop` came.
    stopped: bool,
    /// The stream's last event went out (`[DONE]`, or an error).
    ended: bool,
}

impl Stream for Chunks {
    /// The events for a piece of Bedrock's stream.
    fn push(&mut self, bedrock: &[u8]) -> Vec<u8> {
        decode(self, bedrock)
    }

    /// Bedrock's stream has ended: `[DONE]` if its message ended and the usage did not come,
    /// an error if the message never ended.
    fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.ended {
            return out;
        }
        if self.stopped && self.decoder.buffered() == 0 {
            out.extend_from_slice(DONE);
            self.ended = true;
        } else {
            self.error(
                &mut out,
                "api_error",
                "upstream_error",
                "the model's stream ended before its end of message",
            );
        }
        out
    }
}

impl Frames for Chunks {
    fn decoder(&mut self) -> &mut Decoder {
        &mut self.decoder
    }

    fn ended(&self) -> bool {
        self.ended
    }

    fn unreadable(&mut self, out: &mut Vec<u8>, why: &str) {
        self.error(out, "api_error", "upstream_error", why);
    }

    fn event(&mut self, m: Message<'_>, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        if let Some(kind) = exception_kind(&m) {
            self.data(out, &exception_body(&ENVELOPE, kind, m.payload));
            return;
        }
        match m.event_type() {
            Some("messageStart") => self.start(out),
            Some("contentBlockDelta") => {
                let Ok(d) = serde_json::from_slice::<BlockDelta<'_>>(m.payload) else {
                    return;
                };
                self.start(out);
                if let Some(text) = d.delta.text {
                    self.chunk(out, None, |out| {
                        out.extend_from_slice(b"{\"content\":");
                        write_json(out, &text);
                        out.push(b'}');
                    });
                } else if let Some(tool) = d.delta.tool_use {
                    let Some(index) = self.tool_index(d.content_block_index) else {
                        return;
                    };
                    self.chunk(out, None, |out| {
                        out.extend_from_slice(b"{\"tool_calls\":[{\"index\":");
                        out.extend_from_slice(index.to_string().as_bytes());
                        out.extend_from_slice(b",\"function\":{\"arguments\":");
                        write_json(out, &tool.input);
                        out.extend_from_slice(b"}}]}");
                    });
                } else if let Some(text) = d.delta.reasoning_content.and_then(|r| r.text) {
                    self.chunk(out, None, |out| {
                        out.extend_from_slice(b"{\"reasoning_content\":");
                        write_json(out, &text);
                        out.push(b'}');
                    });
                }
            }
            Some("contentBlockStart") => {
                let Ok(s) = serde_json::from_slice::<BlockStart<'_>>(m.payload) else {
                    return;
                };
                let Some(tool) = s.start.tool_use else {
                    return;
                };
                self.start(out);
                let index = self.tools.len();
                self.tools.push(s.content_block_index);
                self.chunk(out, None, |out| {
                    out.extend_from_slice(b"{\"tool_calls\":[{\"index\":");
                    out.extend_from_slice(index.to_string().as_bytes());
                    out.extend_from_slice(b",\"id\":");
                    write_json(out, &tool.tool_use_id);
                    out.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
                    write_json(out, &tool.name);
                    out.extend_from_slice(b",\"arguments\":\"\"}}]}");
                });
            }
            Some("messageStop") => {
                let Ok(stop) = serde_json::from_slice::<MessageStop<'_>>(m.payload) else {
                    return;
                };
                self.start(out);
                self.stopped = true;
                self.chunk(out, Some(finish_reason(&stop.stop_reason)), |out| {
                    out.extend_from_slice(b"{}")
                });
            }
            Some("metadata") => {
                if self.include_usage {
                    let usage = serde_json::from_slice::<Metadata>(m.payload)
                        .map(|m| m.usage)
                        .unwrap_or_default();
                    out.extend_from_slice(&self.head);
                    out.extend_from_slice(b"\"choices\":[],\"usage\":");
                    write_json(out, &Usage::from(usage));
                    out.extend_from_slice(b"}\n\n");
                }
                out.extend_from_slice(DONE);
                self.ended = true;
            }
            // contentBlockStop, and events Bedrock may add.
            _ => {}
        }
    }
}

impl Chunks {
    pub(crate) fn new(id: &str, created: u64, model: &str, include_usage: bool) -> Self {
        let mut head = b"data: {\"id\":".to_vec();
        write_json(&mut head, id);
        head.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        head.extend_from_slice(created.to_string().as_bytes());
        head.extend_from_slice(b",\"model\":");
        write_json(&mut head, model);
        head.push(b',');
        Self {
            decoder: Decoder::default(),
            head,
            include_usage,
            started: false,
            tools: Vec::new(),
            stopped: false,
            ended: false,
        }
    }

    /// The gateway ends the stream: its budget ran out.
    pub(crate) fn cut_off(&mut self, message: &str) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.ended {
            self.error(&mut out, "rate_limit_error", "budget_exhausted", message);
        }
        out
    }

    fn error(&mut self, out: &mut Vec<u8>, r#type: &str, code: &str, message: &str) {
        self.data(out, &error_body(r#type, code, message));
    }

    /// The stream's last event: an error body.
    fn data(&mut self, out: &mut Vec<u8>, error: &[u8]) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(error);
        out.extend_from_slice(b"\n\n");
        self.ended = true;
    }

    /// The role chunk, once, before anything else.
    fn start(&mut self, out: &mut Vec<u8>) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        self.chunk(out, None, |out| {
            out.extend_from_slice(b"{\"role\":\"assistant\",\"content\":\"\"}")
        });
    }

    /// The `tool_calls` index of the tool use in content block `block`.
    fn tool_index(&self, block: u64) -> Option<usize> {
        self.tools.iter().position(|&b| b == block)
    }

    /// One chunk with one choice, whose `delta` the closure writes.
    fn chunk(
        &self,
        out: &mut Vec<u8>,
        finish_reason: Option<&str>,
        delta: impl FnOnce(&mut Vec<u8>),
    ) {
        out.extend_from_slice(&self.head);
        out.extend_from_slice(b"\"choices\":[{\"index\":0,\"delta\":");
        delta(out);
        out.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
        match finish_reason {
            Some(reason) => {
                out.push(b'"');
                out.extend_from_slice(reason.as_bytes());
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"}]");
        if self.include_usage {
            out.extend_from_slice(b",\"usage\":null");
        }
        out.extend_from_slice(b"}\n\n");
    }
}

/// Appends `value` as JSON (on one line: serde_json escapes every control character).
fn write_json(out: &mut Vec<u8>, value: &(impl Serialize + ?Sized)) {
    // Writing to a Vec cannot fail, and these values always serialize.
    let _ = serde_json::to_writer(&mut *out, value);
}
