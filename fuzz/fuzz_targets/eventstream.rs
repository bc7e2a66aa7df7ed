//! The EventStream decoder (`eventstream::Decoder`) and encoder (`eventstream::encode`).
//!
//! Properties, for any bytes cut into any chunks:
//! * every decoded message, re-encoded from its parsed headers (all ten types) and payload by
//!   an independent encoder, is exactly the bytes it was decoded from, and the decoded
//!   messages tile the input from its start: nothing skipped, nothing invented;
//! * decoding does not depend on how the bytes are cut: the same messages, the same error;
//! * after an error the decoder stays failed; what it holds over is less than one message;
//! * `encode` of any headers and payload decodes back to them (what it documents to drop
//!   excepted).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_core::response::eventstream::{
    self, DecodeError, Decoder, HeaderValue, MAX_MESSAGE_LEN,
};
use tollgate_fuzz::{chunks, encode_message, Input};

#[derive(Debug, PartialEq)]
struct Decoded {
    /// Each message re-encoded, with where it ended in the input.
    frames: Vec<(Vec<u8>, usize)>,
    error: Option<DecodeError>,
    buffered: usize,
}

fn decode(pieces: &[&[u8]]) -> Decoded {
    let mut dec = Decoder::new();
    let mut frames = Vec::new();
    let mut offset = 0;
    let mut error = None;
    for piece in pieces {
        let r = dec.push_with_ends(piece, |m, end| {
            let headers: Vec<(&str, HeaderValue<'_>)> = m.headers().collect();
            // The known-header accessors agree with the headers themselves.
            let first = |name: &str| {
                headers
                    .iter()
                    .find(|(n, _)| *n == name)
                    .and_then(|(_, v)| v.as_str())
            };
            assert_eq!(m.message_type(), first(":message-type"));
            assert_eq!(m.event_type(), first(":event-type"));
            assert_eq!(m.exception_type(), first(":exception-type"));
            assert_eq!(m.error_code(), first(":error-code"));
            for (name, value) in &headers {
                assert_eq!(
                    m.header(name).as_ref(),
                    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v)
                );
                let _ = value;
            }
            frames.push((encode_message(headers, m.payload), offset + end));
        });
        if let Err(e) = r {
            // Failed for good: every later push answers the same error.
            assert_eq!(
                dec.push(b"more", |_| panic!("a message after an error")),
                Err(e.clone())
            );
            error = Some(e);
            break;
        }
        offset += piece.len();
    }
    assert!(dec.buffered() < MAX_MESSAGE_LEN);
    Decoded {
        frames,
        error,
        buffered: dec.buffered(),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let cut_seed = input.bytes(8).to_vec();
    let bytes = input.rest();

    let whole = decode(&[bytes]);
    // The decoded messages are the input's leading bytes, re-encoded exactly.
    let mut at = 0;
    for (frame, end) in &whole.frames {
        assert_eq!(
            &bytes[at..*end],
            frame.as_slice(),
            "message at {at} does not re-encode to its bytes"
        );
        at = *end;
    }
    if whole.error.is_none() {
        // Whatever was not decoded is an incomplete message held over.
        assert_eq!(whole.buffered, bytes.len() - at);
    }

    let pieces = chunks(bytes, &cut_seed, 97);
    let cut = decode(&pieces);
    assert_eq!(
        whole.frames.iter().map(|f| &f.0).collect::<Vec<_>>(),
        cut.frames.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert_eq!(
        whole.frames.iter().map(|f| f.1).collect::<Vec<_>>(),
        cut.frames.iter().map(|f| f.1).collect::<Vec<_>>()
    );
    assert_eq!(whole.error, cut.error);
    if whole.error.is_none() {
        assert_eq!(whole.buffered, cut.buffered);
    }

    // The encoder: string headers and a payload taken from the same bytes.
    let text = String::from_utf8_lossy(bytes);
    let mut parts = text.split('\u{1}');
    let payload = parts.next().unwrap_or("").as_bytes();
    let rest: Vec<&str> = parts.collect();
    let headers: Vec<(&str, &str)> = rest
        .chunks(2)
        .map(|p| (p[0], *p.get(1).unwrap_or(&"")))
        .collect();
    let encoded = eventstream::encode(&headers, payload);
    let mut dec = Decoder::new();
    let mut got = Vec::new();
    dec.push(&encoded, |m| {
        got.push((
            m.headers()
                .map(|(n, v)| (n.to_string(), v.as_str().map(str::to_string)))
                .collect::<Vec<_>>(),
            m.payload.to_vec(),
        ))
    })
    .expect("encode's output decodes");
    assert_eq!(got.len(), 1);
    assert_eq!(dec.buffered(), 0);
    let (got_headers, got_payload) = &got[0];
    assert_eq!(got_payload.as_slice(), payload);
    // Short names and values (all `encode`'s callers write) come back exactly.
    let short = headers
        .iter()
        .filter(|(n, _)| !n.is_empty())
        .all(|(n, v)| n.len() <= 255 && v.len() <= eventstream::MAX_HEADER_VALUE_LEN);
    if short {
        let want: Vec<(String, Option<String>)> = headers
            .iter()
            .filter(|(n, _)| !n.is_empty())
            .map(|(n, v)| (n.to_string(), Some(v.to_string())))
            .collect();
        assert_eq!(got_headers, &want);
    }
});
