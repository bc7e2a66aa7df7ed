//! The usage meter (`meter::UsageMeter`), for each operation, fed responses of every model
//! family (the seeds hold each family's real stream and body shapes; see `fuzz/seeds.py`) in
//! random chunkings.
//!
//! Properties:
//! * usage never decreases: after every chunk each count (input, output, cache read and
//!   write, images), the generated-text bytes and the event count are at least what they
//!   were; a reading once complete stays complete; the first exception and problem stay;
//! * `finish` never lowers a count a stream reading showed, and is idempotent; bytes after it
//!   change nothing;
//! * the reading does not depend on how the body is cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_core::response::meter::{Reading, UsageMeter};
use tollgate_fuzz::{chunks, response_body, Input, OPERATIONS};

const CONTENT_TYPES: [&str; 4] = [
    "application/vnd.amazon.eventstream",
    "application/json",
    "text/html",
    "",
];
const STATUSES: [u16; 4] = [200, 400, 429, 500];

fn never_lower(before: &Reading, after: &Reading) {
    let (b, a) = (&before.usage, &after.usage);
    assert!(a.input_tokens >= b.input_tokens, "{before:?} -> {after:?}");
    assert!(
        a.output_tokens >= b.output_tokens,
        "{before:?} -> {after:?}"
    );
    assert!(
        a.cache_read_tokens >= b.cache_read_tokens,
        "{before:?} -> {after:?}"
    );
    assert!(
        a.cache_write_tokens >= b.cache_write_tokens,
        "{before:?} -> {after:?}"
    );
    assert!(a.images >= b.images, "{before:?} -> {after:?}");
    assert!(after.output_text_bytes >= before.output_text_bytes);
    assert!(after.events >= before.events);
    assert!(after.complete || !before.complete);
    if before.exception.is_some() {
        assert_eq!(after.exception, before.exception);
    }
    if before.problem.is_some() {
        assert_eq!(after.problem, before.problem);
    }
}

fn meter(op_index: u8, flags: u8) -> UsageMeter {
    let op = OPERATIONS[usize::from(op_index) % 4];
    let mut m = UsageMeter::new(op);
    if flags & 1 == 1 {
        let status = STATUSES[usize::from(flags >> 1) % 4];
        let ct = CONTENT_TYPES[usize::from(flags >> 3) % 4];
        let mut headers = vec![("content-type", ct)];
        if flags & 0x20 != 0 {
            headers.push(("x-amzn-bedrock-input-token-count", "17"));
            headers.push(("x-amzn-bedrock-output-token-count", "5"));
        }
        if flags & 0x40 != 0 {
            headers.push(("x-amzn-errortype", "ThrottlingException:http://internal"));
        }
        m.on_response_headers(status, headers);
    }
    m
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let (op, flags) = (input.u8(), input.u8());
    let cut_seed = input.bytes(8).to_vec();
    let body = response_body(&mut input);

    let mut chunked = meter(op, flags);
    let mut last = chunked.reading();
    for piece in chunks(&body, &cut_seed, 257) {
        chunked.on_body(piece);
        let now = chunked.reading();
        never_lower(&last, &now);
        last = now;
    }
    let finished = chunked.finish();
    never_lower(&last, &finished);
    assert_eq!(chunked.finish(), finished);
    chunked.on_body(b"\x00\x00\x00\x10after the end");
    assert_eq!(chunked.finish(), finished);
    assert_eq!(chunked.reading(), finished);

    let mut whole = meter(op, flags);
    whole.on_body(&body);
    assert_eq!(
        whole.finish(),
        finished,
        "the reading depends on the chunking"
    );
});
