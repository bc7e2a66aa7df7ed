//! Test directives embedded in a request body: `[[emu:NAME]]` or `[[emu:NAME=VALUE]]`.
//!
//! They are found in the raw body bytes, so they work in any body (Converse JSON, Anthropic
//! Messages JSON, anything else) wherever the test puts them, typically in a message's text.
//! Unknown names and malformed values are ignored; when a name appears more than once the
//! last occurrence wins (so the latest message of a conversation decides).

/// Most output tokens the emulator will serve.
pub const MAX_OUTPUT_TOKENS: u64 = 100_000;
/// Cap on `input`, `cache-read` and `cache-write`.
pub const MAX_OTHER_TOKENS: u64 = 1_000_000_000;
/// Cap on `slow`, in milliseconds.
pub const MAX_SLOW_MS: u64 = 10_000;
/// Cap on `events` and `fail-after`.
pub const MAX_EVENTS: u32 = 10_000;
/// Cap on `images`.
pub const MAX_IMAGES: u64 = 100;
/// Cap on `trickle`, in milliseconds between bytes.
pub const MAX_TRICKLE_MS: u64 = 1_000;
/// Cap on `pad`: bytes of padding per frame (or per non-stream body); a frame stays under the
/// EventStream limit of 16 MiB.
pub const MAX_PAD_BYTES: u64 = 16_000_000;

const OPEN: &[u8] = b"[[emu:";
const CLOSE: &[u8] = b"]]";
/// Longest `NAME=VALUE` considered; an opening `[[emu:` without a close within this many bytes
/// is ignored.
const MAX_DIRECTIVE_LEN: usize = 128;
/// Most directives read from one body.
const MAX_DIRECTIVES: usize = 256;

/// How a response misreports its output count (`reported-output`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportedOutput {
    Omitted,
    Negative,
}

/// How a request to one model fails (`[[emu:fail=KIND@MODEL]]`, or a schedule of
/// `/_emulator/faults`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `throttle`: 429 ThrottlingException.
    Throttle,
    /// `500`…`599`: that status, with Bedrock's error type for it.
    Status(u16),
    /// `reset`: the connection is closed before any byte of a response.
    Reset,
    /// `reset-after-N`: a 200 whose body stops after N content events (a stream) or after part
    /// of the body (otherwise), the connection closed under it.
    ResetAfter(u32),
}

impl Fault {
    /// `throttle`, `503`, `reset`, `reset-after-2`.
    pub fn parse(kind: &str) -> Option<Self> {
        match kind {
            "throttle" => Some(Self::Throttle),
            "reset" => Some(Self::Reset),
            _ => {
                if let Some(n) = kind.strip_prefix("reset-after-") {
                    return n
                        .parse::<u32>()
                        .ok()
                        .map(|n| Self::ResetAfter(n.min(MAX_EVENTS)));
                }
                kind.parse::<u16>()
                    .ok()
                    .filter(|s| (500..=599).contains(s))
                    .map(Self::Status)
            }
        }
    }

    /// As a directive writes it.
    pub fn name(&self) -> String {
        match self {
            Self::Throttle => "throttle".into(),
            Self::Status(s) => s.to_string(),
            Self::Reset => "reset".into(),
            Self::ResetAfter(n) => format!("reset-after-{n}"),
        }
    }

    /// The error type Bedrock answers a 5xx with.
    pub fn error_type(status: u16) -> &'static str {
        match status {
            503 => "ServiceUnavailableException",
            _ => "InternalServerException",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directives {
    /// `[[emu:input=N]]`: input tokens to report instead of ceil(body length / 4).
    pub input: Option<u64>,
    /// `[[emu:output=N]]`: output tokens to serve (capped at [`MAX_OUTPUT_TOKENS`]).
    pub output: Option<u64>,
    /// `[[emu:cache-read=N]]`.
    pub cache_read: Option<u64>,
    /// `[[emu:cache-write=N]]`.
    pub cache_write: Option<u64>,
    /// `[[emu:throttle]]`: answer 429 ThrottlingException.
    pub throttle: bool,
    /// `[[emu:images=N]]`: images an image model answers with, instead of the count the
    /// request asks for (capped at [`MAX_IMAGES`]).
    pub images: Option<u64>,
    /// `[[emu:hang-up]]`: read the request, wait `slow` if set, then close the connection
    /// without answering, as an upstream that failed after the request reached it.
    pub hang_up: bool,
    /// `[[emu:error=STATUS:TYPE]]`: answer STATUS (400..=599) with `x-amzn-ErrorType: TYPE`.
    pub error: Option<(u16, String)>,
    /// `[[emu:slow=MS]]`: wait before a non-stream answer, or between stream events.
    pub slow_ms: Option<u64>,
    /// `[[emu:fail-after=N]]`: streams end with a modelStreamErrorException frame after N
    /// content deltas.
    pub fail_after: Option<u32>,
    /// `[[emu:events=N]]`: number of content delta events in a stream (1..=10000).
    pub events: Option<u32>,
    /// `[[emu:tool=NAME]]`: the answer calls the request's tool NAME (after its text), with a
    /// `tool_use` stop reason — unless the latest message carries tool results, which the
    /// answer then follows with text (a tool-call round trip).
    pub tool: Option<String>,
    /// `[[emu:stop=REASON]]`: the stop reason to report instead of `end_turn`.
    pub stop_reason: Option<String>,
    /// `[[emu:content-type=TYPE]]`: the response's `content-type` instead of Bedrock's
    /// (`application/json`, `application/vnd.amazon.eventstream`): a response that lies.
    pub content_type: Option<String>,
    /// `[[emu:fail=KIND@MODEL]]` (repeatable): every call of this request to MODEL (the model
    /// ID as the path names it, compared case-insensitively) fails with KIND (see [`Fault`]);
    /// calls to other models are answered. A fallback chain's attempts carry the same body.
    pub fails: Vec<(Fault, String)>,
    /// `[[emu:guardrail-intervene]]`: a request with a guardrail is blocked by it (input
    /// assessment): no model call, the guardrail's message, `guardrail_intervened`.
    pub guardrail_intervene: bool,
    /// `[[emu:reported-output=none]]` or `[[emu:reported-output=-1]]`: the response's final
    /// usage (Converse `usage`, stream `metadata`, Anthropic `usage`, invocation metrics, the
    /// output-token-count header) omits its output count, or reports -1. What is served (and
    /// the ledger) is unchanged.
    pub reported_output: Option<ReportedOutput>,
    /// `[[emu:reset-after=N]]`: the connection is reset (aborted, no clean end of the body)
    /// before a stream's content delta N+1 (before its closing events if it has N or fewer),
    /// or after N bytes of a non-stream body.
    pub reset_after: Option<u64>,
    /// `[[emu:corrupt-crc=N]]`: stream frame N (0-based, every frame counted) goes out with a
    /// wrong message CRC; the stream goes on after it, as a broken middlebox would send it.
    pub corrupt_crc: Option<u32>,
    /// `[[emu:truncate=N]]`: only the first half of stream frame N goes out, then the body ends
    /// cleanly.
    pub truncate: Option<u32>,
    /// `[[emu:stall=MS]]`: a stream stops for MS (capped at [`MAX_SLOW_MS`]) before content
    /// delta `stall-after` (default 1), then goes on.
    pub stall_ms: Option<u64>,
    /// `[[emu:stall-after=N]]`: see `stall`.
    pub stall_after: Option<u32>,
    /// `[[emu:trickle=MS]]`: the response body (stream or not) goes out one byte at a time,
    /// MS apart (capped at [`MAX_TRICKLE_MS`]).
    pub trickle_ms: Option<u64>,
    /// `[[emu:pad=N]]`: N bytes of padding (capped at [`MAX_PAD_BYTES`]) in every stream
    /// frame's `"p"` member, or in a non-stream JSON body's top-level `"p"`: responses larger
    /// than any buffer on the way.
    pub pad: Option<u64>,
    /// Every directive recognised, as written (`output=5`), in body order.
    pub seen: Vec<String>,
}

impl Directives {
    /// Finds every directive in `body`.
    pub fn parse(body: &[u8]) -> Self {
        let mut d = Directives::default();
        let mut rest = body;
        // Each pass consumes at least OPEN.len() bytes, and at most MAX_DIRECTIVES are read.
        while d.seen.len() < MAX_DIRECTIVES {
            let Some(start) = find(rest, OPEN) else { break };
            rest = &rest[start + OPEN.len()..];
            let window = &rest[..rest.len().min(MAX_DIRECTIVE_LEN + CLOSE.len())];
            let Some(end) = find(window, CLOSE) else {
                continue;
            };
            let Ok(text) = std::str::from_utf8(&rest[..end]) else {
                continue;
            };
            if d.apply(text) {
                d.seen.push(text.to_string());
            }
            rest = &rest[end + CLOSE.len()..];
        }
        d
    }

    /// Applies one `NAME` or `NAME=VALUE`; false if it is unknown or malformed.
    fn apply(&mut self, text: &str) -> bool {
        let (name, value) = match text.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (text, None),
        };
        let number = |cap: u64| {
            value
                .and_then(|v| v.parse::<u64>().ok())
                .map(|n| n.min(cap))
        };
        match (name, value) {
            ("throttle", None) => self.throttle = true,
            ("guardrail-intervene", None) => self.guardrail_intervene = true,
            ("fail", Some(v)) => {
                let Some((kind, model)) = v.split_once('@') else {
                    return false;
                };
                let Some(fault) = Fault::parse(kind) else {
                    return false;
                };
                if model.is_empty() || self.fails.len() >= 16 {
                    return false;
                }
                self.fails.push((fault, model.to_ascii_lowercase()));
            }
            ("hang-up", None) => self.hang_up = true,
            ("images", Some(_)) => match number(MAX_IMAGES) {
                Some(n) => self.images = Some(n),
                None => return false,
            },
            ("input", Some(_)) => match number(MAX_OTHER_TOKENS) {
                Some(n) => self.input = Some(n),
                None => return false,
            },
            ("output", Some(_)) => match number(MAX_OUTPUT_TOKENS) {
                Some(n) => self.output = Some(n),
                None => return false,
            },
            ("cache-read", Some(_)) => match number(MAX_OTHER_TOKENS) {
                Some(n) => self.cache_read = Some(n),
                None => return false,
            },
            ("cache-write", Some(_)) => match number(MAX_OTHER_TOKENS) {
                Some(n) => self.cache_write = Some(n),
                None => return false,
            },
            ("slow", Some(_)) => match number(MAX_SLOW_MS) {
                Some(n) => self.slow_ms = Some(n),
                None => return false,
            },
            ("fail-after", Some(_)) => match number(u64::from(MAX_EVENTS)) {
                Some(n) => self.fail_after = Some(n as u32),
                None => return false,
            },
            ("events", Some(_)) => match number(u64::from(MAX_EVENTS)) {
                Some(n) => self.events = Some((n as u32).max(1)),
                None => return false,
            },
            ("error", Some(v)) => {
                let Some((status, kind)) = v.split_once(':') else {
                    return false;
                };
                let Ok(status) = status.parse::<u16>() else {
                    return false;
                };
                if !(400..=599).contains(&status)
                    || kind.is_empty()
                    || !kind
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
                {
                    return false;
                }
                self.error = Some((status, kind.to_string()));
            }
            ("content-type", Some(v)) => {
                if v.is_empty()
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"/.+-".contains(&b))
                {
                    return false;
                }
                self.content_type = Some(v.to_string());
            }
            ("reset-after", Some(_)) => match number(u64::MAX) {
                Some(n) => self.reset_after = Some(n),
                None => return false,
            },
            ("corrupt-crc", Some(_)) => match number(u64::from(MAX_EVENTS)) {
                Some(n) => self.corrupt_crc = Some(n as u32),
                None => return false,
            },
            ("truncate", Some(_)) => match number(u64::from(MAX_EVENTS)) {
                Some(n) => self.truncate = Some(n as u32),
                None => return false,
            },
            ("stall", Some(_)) => match number(MAX_SLOW_MS) {
                Some(n) => self.stall_ms = Some(n),
                None => return false,
            },
            ("stall-after", Some(_)) => match number(u64::from(MAX_EVENTS)) {
                Some(n) => self.stall_after = Some(n as u32),
                None => return false,
            },
            ("trickle", Some(_)) => match number(MAX_TRICKLE_MS) {
                Some(n) => self.trickle_ms = Some(n),
                None => return false,
            },
            ("pad", Some(_)) => match number(MAX_PAD_BYTES) {
                Some(n) => self.pad = Some(n),
                None => return false,
            },
            ("reported-output", Some("none")) => {
                self.reported_output = Some(ReportedOutput::Omitted)
            }
            ("reported-output", Some("-1")) => {
                self.reported_output = Some(ReportedOutput::Negative)
            }
            ("tool", Some(v)) => {
                if v.is_empty()
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
                {
                    return false;
                }
                self.tool = Some(v.to_string());
            }
            ("stop", Some(v)) => {
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    return false;
                }
                self.stop_reason = Some(v.to_string());
            }
            _ => return false,
        }
        true
    }
}

impl Directives {
    /// The fault a call to `model_id` meets, if a `fail` directive names it.
    pub fn fault_for(&self, model_id: &str) -> Option<&Fault> {
        let model = model_id.to_ascii_lowercase();
        self.fails
            .iter()
            .find(|(_, m)| *m == model)
            .map(|(fault, _)| fault)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_directive() {
        let body = br#"{"messages":[{"role":"user","content":[{"text":"hi [[emu:input=10]] [[emu:output=5]]
            [[emu:cache-read=3]][[emu:cache-write=4]] [[emu:throttle]] [[emu:error=500:InternalServerException]]
            [[emu:slow=20]] [[emu:fail-after=2]] [[emu:events=3]] [[emu:stop=max_tokens]]
            [[emu:content-type=text/plain]] [[emu:reported-output=-1]] [[emu:hang-up]] [[emu:images=3]]"}]}]}"#;
        let d = Directives::parse(body);
        assert_eq!(d.input, Some(10));
        assert_eq!(d.output, Some(5));
        assert_eq!(d.cache_read, Some(3));
        assert_eq!(d.cache_write, Some(4));
        assert!(d.throttle);
        assert_eq!(d.error, Some((500, "InternalServerException".into())));
        assert_eq!(d.slow_ms, Some(20));
        assert_eq!(d.fail_after, Some(2));
        assert_eq!(d.events, Some(3));
        assert_eq!(d.stop_reason.as_deref(), Some("max_tokens"));
        assert_eq!(d.content_type.as_deref(), Some("text/plain"));
        assert_eq!(d.reported_output, Some(ReportedOutput::Negative));
        assert!(d.hang_up);
        assert_eq!(d.images, Some(3));
        assert_eq!(d.seen.len(), 14);
        let d = Directives::parse(
            b"[[emu:reported-output=none]] [[emu:reported-output=5]] [[emu:content-type=a b]]",
        );
        assert_eq!(d.reported_output, Some(ReportedOutput::Omitted));
        assert_eq!(d.content_type, None);
    }

    #[test]
    fn parses_the_fault_directives() {
        let d = Directives::parse(
            b"[[emu:reset-after=3]] [[emu:corrupt-crc=2]] [[emu:truncate=4]] [[emu:stall=999999]] \
              [[emu:stall-after=2]] [[emu:trickle=5]] [[emu:pad=99999999999]] [[emu:trickle=x]]",
        );
        assert_eq!(d.reset_after, Some(3));
        assert_eq!(d.corrupt_crc, Some(2));
        assert_eq!(d.truncate, Some(4));
        assert_eq!(d.stall_ms, Some(MAX_SLOW_MS));
        assert_eq!(d.stall_after, Some(2));
        assert_eq!(d.trickle_ms, Some(5));
        assert_eq!(d.pad, Some(MAX_PAD_BYTES));
        assert_eq!(d.seen.len(), 7);
    }

    #[test]
    fn ignores_unknown_and_malformed_and_caps() {
        let d = Directives::parse(
            b"[[emu:nope]] [[emu:output=abc]] [[emu:error=200:Ok]] [[emu:error=500]] [[emu:throttle=1]] \
              [[emu:slow=999999]] [[emu:output=999999999]] [[emu:events=0]] [[emu:input=-1]] [[emu:output",
        );
        assert!(!d.throttle);
        assert_eq!(d.error, None);
        assert_eq!(d.slow_ms, Some(MAX_SLOW_MS));
        assert_eq!(d.output, Some(MAX_OUTPUT_TOKENS));
        assert_eq!(d.events, Some(1));
        assert_eq!(d.input, None);
        assert_eq!(d.seen, vec!["slow=999999", "output=999999999", "events=0"]);
    }

    #[test]
    fn last_occurrence_wins_and_binary_is_fine() {
        let mut body = b"\xff\xfe[[emu:output=1]] \x00 [[emu:output=7]]".to_vec();
        body.extend_from_slice(&[0x80; 10]);
        assert_eq!(Directives::parse(&body).output, Some(7));
        assert_eq!(Directives::parse(b""), Directives::default());
        assert_eq!(Directives::parse(b"[[emu:").output, None);
        // An opening without a close nearby does not swallow a later directive.
        let mut body = b"[[emu:".to_vec();
        body.extend_from_slice(&[b'x'; 300]);
        body.extend_from_slice(b"[[emu:output=3]]");
        assert_eq!(Directives::parse(&body).output, Some(3));
    }

    #[test]
    fn per_model_faults() {
        let d = Directives::parse(
            b"[[emu:fail=throttle@US.Anthropic.X-v1:0]] [[emu:fail=503@b.c]] [[emu:fail=reset@d.e]] \
              [[emu:fail=reset-after-2@f.g]] [[emu:fail=404@h.i]] [[emu:fail=throttle]] [[emu:guardrail-intervene]]",
        );
        assert_eq!(d.fault_for("us.anthropic.x-v1:0"), Some(&Fault::Throttle));
        assert_eq!(d.fault_for("b.c"), Some(&Fault::Status(503)));
        assert_eq!(d.fault_for("d.e"), Some(&Fault::Reset));
        assert_eq!(d.fault_for("f.g"), Some(&Fault::ResetAfter(2)));
        assert_eq!(d.fault_for("h.i"), None, "only 5xx statuses");
        assert_eq!(d.fault_for("other.model"), None);
        assert!(d.guardrail_intervene);
        assert_eq!(d.seen.len(), 5);
    }

    #[test]
    fn bounded_on_huge_bodies() {
        let body = b"[[emu:output=1]]".repeat(10_000);
        let d = Directives::parse(&body);
        assert_eq!(d.seen.len(), MAX_DIRECTIVES);
    }
}
