//! What the client gets of each chunk of Bedrock's answer: the meter reads the chunk, the
//! client's dialect translates it (Bedrock's own passes unchanged), and a stream whose key has
//! an allowance is ended on a frame boundary once what it delivered would cost more.
//!
//! Hosts make one call per chunk ([`crate::exchange::Exchange::on_response_body`]) and do what
//! the [`Relayed`] says; none of them knows which dialect it serves.

use std::borrow::Cow;

use crate::accounting::pricing::Quote;
use crate::accounting::record;
use crate::dialect::Translator;
use crate::response::meter::{Reading, UsageMeter};

/// What the client is told when the gateway ends a stream because its budget ran out.
pub const CUT_OFF_MESSAGE: &str =
    "The API key's budget is exhausted: this response was ended by the gateway.";

/// What to do with one chunk of the response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relayed<'a> {
    /// The bytes the client gets for this chunk: the chunk itself, borrowed, when unchanged.
    pub bytes: Cow<'a, [u8]>,
    pub verdict: Verdict,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `bytes` is the chunk as it came: send it on.
    Pass,
    /// Send `bytes` in the chunk's place and keep relaying.
    Replace,
    /// Send `bytes` in the chunk's place: the client's response ends with them, and nothing
    /// more of the upstream is needed. `reset_upstream`: nothing is left to deliver either, so
    /// a host whose reset also ends the client's side (Envoy) resets now to stop Bedrock
    /// generating; until then it only sends `bytes` (empty once the end has gone out).
    End { reset_upstream: bool },
}

/// The stream's end when the gateway cuts it off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CutState {
    Running,
    /// The terminal event went out with an earlier chunk.
    Ended,
    /// The host was told to reset the upstream.
    Reset,
}

/// A stream that ends once what it delivered would cost more than its budget reservation.
#[derive(Debug)]
struct CutOff {
    allowance_pico_usd: u64,
    quote: Quote,
    state: CutState,
}

/// The response side of one exchange.
pub(crate) struct Relay {
    translator: Box<dyn Translator>,
    cut_off: Option<CutOff>,
}

impl Relay {
    pub(crate) fn new(translator: Box<dyn Translator>) -> Self {
        Self {
            translator,
            cut_off: None,
        }
    }

    /// Ends the stream once what it delivered, priced at `quote`, would cost more than
    /// `allowance_pico_usd`.
    pub(crate) fn cut_off_at(&mut self, allowance_pico_usd: u64, quote: Quote) {
        self.cut_off = Some(CutOff {
            allowance_pico_usd,
            quote,
            state: CutState::Running,
        });
    }

    /// The gateway ended this stream.
    pub(crate) fn was_cut_off(&self) -> bool {
        matches!(&self.cut_off, Some(c) if c.state != CutState::Running)
    }

    /// One chunk of the response body: `ok` when the response is a 2xx (only those are cut
    /// off), `request_bytes` for estimating a cut stream's input as billing would.
    pub(crate) fn chunk<'a>(
        &mut self,
        chunk: &'a [u8],
        ok: bool,
        meter: &mut UsageMeter,
        request_bytes: u64,
    ) -> Relayed<'a> {
        let Some(cut) = self.cut_off.as_mut().filter(|_| ok) else {
            meter.on_body(chunk);
            return relay(self.translator.as_mut(), chunk);
        };
        match cut.state {
            CutState::Running => {}
            CutState::Ended => {
                cut.state = CutState::Reset;
                return ended(true);
            }
            CutState::Reset => return ended(false),
        }
        // After each message: would what has been delivered cost more than the allowance?
        // (Estimated as for any cut stream.)
        let over = |r: &Reading| {
            cut.quote
                .cost(&record::billable(200, true, r, request_bytes, &Default::default()).0)
                > cut.allowance_pico_usd
        };
        let Some(end) = meter.on_body_until(chunk, over) else {
            return relay(self.translator.as_mut(), chunk);
        };
        cut.state = CutState::Ended;
        let delivered = chunk.get(..end).unwrap_or(chunk);
        let mut out = self.translator.body(delivered).into_owned();
        out.extend_from_slice(&self.translator.cut_off(CUT_OFF_MESSAGE));
        Relayed {
            bytes: Cow::Owned(out),
            verdict: Verdict::End {
                reset_upstream: false,
            },
        }
    }
}

/// `chunk` translated for the client; [`Verdict::Pass`] when that is the chunk itself.
fn relay<'a>(translator: &mut dyn Translator, chunk: &'a [u8]) -> Relayed<'a> {
    let bytes = translator.body(chunk);
    let unchanged = matches!(&bytes, Cow::Borrowed(b) if std::ptr::eq(*b, chunk));
    Relayed {
        bytes,
        verdict: if unchanged {
            Verdict::Pass
        } else {
            Verdict::Replace
        },
    }
}

/// A chunk after the stream's end: the client gets nothing more.
fn ended(reset_upstream: bool) -> Relayed<'static> {
    Relayed {
        bytes: Cow::Borrowed(&[]),
        verdict: Verdict::End { reset_upstream },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::pricing;
    use crate::dialect::bedrock::{PassThrough, CUT_OFF_EXCEPTION};
    use crate::response::eventstream::{self, Decoder};
    use crate::Operation;

    const HAIKU: &str = "us.anthropic.claude-haiku-4-5-20251001-v1:0";

    fn delta(text: &str) -> Vec<u8> {
        eventstream::encode(
            &[
                (":message-type", "event"),
                (":event-type", "contentBlockDelta"),
                (":content-type", "application/json"),
            ],
            format!(r#"{{"contentBlockIndex":0,"delta":{{"text":"{text}"}}}}"#).as_bytes(),
        )
    }

    fn stream_meter() -> UsageMeter {
        let mut meter = UsageMeter::new(Operation::ConverseStream);
        meter.on_response_headers(
            200,
            [("content-type", "application/vnd.amazon.eventstream")],
        );
        meter
    }

    /// A dialect that writes each piece in brackets and ends with `END(message)`.
    struct Brackets;

    impl Translator for Brackets {
        fn body<'a>(&mut self, bedrock: &'a [u8]) -> Cow<'a, [u8]> {
            Cow::Owned([b"[", bedrock, b"]"].concat())
        }
        fn cut_off(&mut self, message: &str) -> Vec<u8> {
            format!("END({message})").into_bytes()
        }
    }

    #[test]
    fn bedrocks_own_dialect_passes_the_chunk_itself() {
        let mut relay = Relay::new(Box::new(PassThrough));
        let mut meter = stream_meter();
        let chunk = delta("hello");
        let relayed = relay.chunk(&chunk, true, &mut meter, 10);
        assert_eq!(relayed.verdict, Verdict::Pass);
        assert!(matches!(relayed.bytes, Cow::Borrowed(b) if std::ptr::eq(b, &chunk[..])));
        assert_eq!(meter.reading().output_text_bytes, 5);
    }

    #[test]
    fn a_translated_chunk_replaces_it_and_the_meter_reads_bedrocks_bytes() {
        let mut relay = Relay::new(Box::new(Brackets));
        let mut meter = stream_meter();
        let chunk = delta("hello");
        let relayed = relay.chunk(&chunk, true, &mut meter, 10);
        assert_eq!(relayed.verdict, Verdict::Replace);
        assert_eq!(relayed.bytes, [b"[", &chunk[..], b"]"].concat());
        assert_eq!(meter.reading().output_text_bytes, 5);
        assert_eq!(meter.reading().problem, None);
    }

    #[test]
    fn a_cut_stream_ends_in_the_clients_dialect_then_resets_once() {
        for (translator, expect_frame) in [
            (Box::new(PassThrough) as Box<dyn Translator>, true),
            (Box::new(Brackets), false),
        ] {
            let mut relay = Relay::new(translator);
            // Haiku 4.5 input at $1/MTok: 10 tokens of input, and room for a few of output.
            relay.cut_off_at(30_000_000, pricing::quote("us-east-1", HAIKU));
            let mut meter = stream_meter();
            let body: Vec<u8> = (0..10).flat_map(|i| delta(&format!("{i:019}"))).collect();
            let relayed = relay.chunk(&body, true, &mut meter, 40);
            let Verdict::End { reset_upstream } = relayed.verdict else {
                panic!("not cut off: {:?}", relayed.verdict)
            };
            assert!(!reset_upstream, "the end must go out before any reset");
            assert!(relay.was_cut_off());
            if expect_frame {
                let mut kinds = Vec::new();
                let mut decoder = Decoder::default();
                decoder
                    .push(&relayed.bytes, |m| {
                        kinds.push(m.exception_type().unwrap_or("event").to_string())
                    })
                    .unwrap();
                assert_eq!(decoder.buffered(), 0);
                assert_eq!(kinds.last().map(String::as_str), Some(CUT_OFF_EXCEPTION));
                assert!((2..10).contains(&kinds.len()), "{kinds:?}");
            } else {
                assert!(relayed.bytes.starts_with(b"["));
                assert!(relayed
                    .bytes
                    .ends_with(format!("]END({CUT_OFF_MESSAGE})").as_bytes()));
            }
            let after = delta("more");
            for reset in [true, false, false] {
                let relayed = relay.chunk(&after, true, &mut meter, 40);
                assert_eq!(relayed.bytes, Cow::<[u8]>::Borrowed(&[]));
                assert_eq!(
                    relayed.verdict,
                    Verdict::End {
                        reset_upstream: reset
                    }
                );
            }
        }
    }

    #[test]
    fn a_refusal_is_never_cut_off() {
        let mut relay = Relay::new(Box::new(PassThrough));
        relay.cut_off_at(0, pricing::quote("us-east-1", HAIKU));
        let mut meter = UsageMeter::new(Operation::ConverseStream);
        meter.on_response_headers(429, [("x-amzn-errortype", "ThrottlingException")]);
        let body = br#"{"message":"slow down"}"#;
        assert_eq!(
            relay.chunk(body, false, &mut meter, 40).verdict,
            Verdict::Pass
        );
        assert!(!relay.was_cut_off());
    }
}
