//! Token usage read off Bedrock responses.
//!
//! The meter only observes copies of the response bytes; it never delays or alters them, and it
//! never fails: anything it cannot make sense of is recorded in [`Reading::problem`].
//!
//! - Converse and Invoke bodies are JSON (`json.rs`). Up to [`MAX_JSON_BODY`] bytes are copied
//!   and parsed at [`UsageMeter::finish`]; if the body has no usage (or is too large or
//!   malformed) the `x-amzn-bedrock-*-token-count` response headers are used.
//! - ConverseStream and InvokeWithResponseStream bodies are AWS EventStream (`stream.rs`).
//!   Events are decoded as they arrive, so [`UsageMeter::reading`] is current mid-stream; only
//!   the payloads that carry usage or generated text are parsed.
//!
//! Both read the same usage fields, under every name Bedrock and its model families give them
//! (`wire.rs`).

mod json;
mod stream;
mod wire;

use crate::accounting::guardrail::GuardrailUsage;
use crate::{Operation, Usage};

use json::JsonReader;
use stream::StreamReader;

/// Largest non-stream body copied for parsing; past it the headers are the only source.
pub const MAX_JSON_BODY: usize = 8 * 1024 * 1024;

/// What the meter knows about a response so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    /// Best knowledge so far.
    pub usage: Usage,
    /// The response's own final usage was seen: a JSON body's usage (or, failing that, the
    /// token-count headers), ConverseStream `metadata`, or InvokeWithResponseStream
    /// `amazon-bedrock-invocationMetrics` / Anthropic `message_delta` usage followed by
    /// `message_stop`.
    pub complete: bool,
    /// The first EventStream `:exception-type` (or `:error-code`), an Anthropic stream `error`
    /// event's type, or the `x-amzn-errortype` response header's type.
    pub exception: Option<String>,
    /// UTF-8 bytes of generated text (text, reasoning, tool-input JSON) seen in stream deltas.
    pub output_text_bytes: u64,
    /// EventStream messages seen, exceptions included.
    pub events: u64,
    /// The first thing that went wrong: bad frames, CRC errors, malformed JSON, body over cap.
    pub problem: Option<String>,
    /// What a guardrail's trace reported (its policy units), and whether it intervened.
    pub guardrail: GuardrailUsage,
}

impl Reading {
    fn note_problem(&mut self, problem: impl FnOnce() -> String) {
        if self.problem.is_none() {
            self.problem = Some(problem());
        }
    }

    fn note_exception(&mut self, exception: &str) {
        if self.exception.is_none() {
            self.exception = Some(exception.to_owned());
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Buffer (capped) and parse at the end.
    Json,
    /// Decode EventStream as it arrives.
    Stream,
}

impl Mode {
    /// The operation and the status decide, never the response's content type: a non-stream
    /// answer is JSON (whatever it claims, it is read as such, and its headers are the
    /// fallback); a stream operation's 2xx answer is EventStream; its refusal, sent before
    /// any event, is Bedrock's JSON error. `status` is `None` when no head was seen.
    fn of(op: Operation, status: Option<u16>) -> Self {
        let refused = status.is_some_and(|s| !(200..300).contains(&s));
        if op.is_stream() && !refused {
            Self::Stream
        } else {
            Self::Json
        }
    }
}

/// Extracts token usage from one response. See the module docs.
#[derive(Debug)]
pub struct UsageMeter {
    op: Operation,
    /// Fixed by the content-type header, or by the operation at the first body byte.
    mode: Option<Mode>,
    reading: Reading,
    json: JsonReader,
    stream: StreamReader,
    finished: bool,
}

impl UsageMeter {
    pub fn new(op: Operation) -> Self {
        Self {
            op,
            mode: None,
            reading: Reading::default(),
            json: JsonReader::default(),
            stream: StreamReader::new(op),
            finished: false,
        }
    }

    /// The response's status and headers: `x-amzn-errortype` and InvokeModel's
    /// `x-amzn-bedrock-{input,output,cache-read-input,cache-write-input}-token-count` (names
    /// case-insensitive). The token counts are used for non-stream responses only, when the
    /// body has ended (see [`UsageMeter::finish`]).
    pub fn on_response_headers<'a>(
        &mut self,
        status: u16,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        let op = self.op;
        self.mode.get_or_insert_with(|| Mode::of(op, Some(status)));
        for (name, value) in headers {
            if name.eq_ignore_ascii_case("x-amzn-errortype") {
                // "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"
                let kind = value.split(':').next().unwrap_or("").trim();
                if !kind.is_empty() {
                    self.reading.note_exception(kind);
                }
            } else {
                self.json.on_header(name, value, &mut self.reading);
            }
        }
    }

    /// A copy of the next body chunk.
    pub fn on_body(&mut self, chunk: &[u8]) {
        self.on_body_until(chunk, |_| false);
    }

    /// Like [`UsageMeter::on_body`], checking `stop` after each EventStream message. At the
    /// first message after which it holds, metering stops (later messages are not counted:
    /// they will not be delivered) and the offset just past that message in `chunk` is
    /// returned — a clean frame boundary to end the stream at.
    pub fn on_body_until(
        &mut self,
        chunk: &[u8],
        stop: impl FnMut(&Reading) -> bool,
    ) -> Option<usize> {
        if self.finished || chunk.is_empty() {
            return None;
        }
        let op = self.op;
        match *self.mode.get_or_insert_with(|| Mode::of(op, None)) {
            Mode::Json => {
                self.json.on_body(chunk, &mut self.reading);
                None
            }
            Mode::Stream => {
                let stopped_at = self.stream.on_body_until(chunk, &mut self.reading, stop);
                if stopped_at.is_some() {
                    // Nothing after this message will reach the client.
                    self.finished = true;
                }
                stopped_at
            }
        }
    }

    /// A streamed body holds the start of an EventStream message it has not finished: if the
    /// body ends now, it ends inside a message (a cut stream, not a whole one).
    pub fn inside_a_message(&self) -> bool {
        self.mode == Some(Mode::Stream) && self.stream.buffered() > 0
    }

    /// What is known so far; callable at any time.
    #[must_use]
    pub fn reading(&self) -> Reading {
        self.reading.clone()
    }

    /// The body has ended: parses a buffered JSON body, flags a stream cut inside a message.
    /// Later calls return the same reading; later body chunks are ignored.
    pub fn finish(&mut self) -> Reading {
        if !self.finished {
            self.finished = true;
            let op = self.op;
            match self.mode.unwrap_or_else(|| Mode::of(op, None)) {
                Mode::Stream => self.stream.finish(&mut self.reading),
                Mode::Json => self.json.finish(&mut self.reading),
            }
        }
        self.reading.clone()
    }
}

/// Raises each count of `usage` to `to`'s, never lowering one: readings only grow.
fn raise(usage: &mut Usage, to: &Usage) {
    usage.input_tokens = usage.input_tokens.max(to.input_tokens);
    usage.output_tokens = usage.output_tokens.max(to.output_tokens);
    usage.cache_read_tokens = usage.cache_read_tokens.max(to.cache_read_tokens);
    usage.cache_write_tokens = usage.cache_write_tokens.max(to.cache_write_tokens);
    usage.images = usage.images.max(to.images);
}

#[cfg(test)]
mod tests;
