//! Anthropic's streams: server-sent events, `event: <type>` then `data: <json>`, one per
//! stream event, each ended by a blank line.

use serde::Serialize;

use crate::dialect::ResponseHead;

/// Appends one event. `data` is JSON on one line (serde_json never writes a raw newline).
pub(super) fn event(out: &mut Vec<u8>, r#type: &str, data: &[u8]) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(r#type.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
}

/// Appends `value` as an event of its own `type`.
pub(super) fn json_event(out: &mut Vec<u8>, r#type: &str, value: &impl Serialize) {
    if let Ok(data) = serde_json::to_vec(value) {
        event(out, r#type, &data);
    }
}

/// Appends an `error` event: how Anthropic's streams fail once they have started.
pub(super) fn error(out: &mut Vec<u8>, r#type: &str, message: &str) {
    event(out, "error", &super::error_body(r#type, message));
}

/// The head of a stream's answer.
pub(super) fn head() -> ResponseHead {
    ResponseHead {
        status: None,
        set: vec![
            ("content-type", "text/event-stream".into()),
            ("cache-control", "no-cache".into()),
        ],
        remove: vec!["content-length", "x-amzn-bedrock-content-type"],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_two_lines_and_a_blank_one() {
        let mut out = Vec::new();
        json_event(&mut out, "ping", &serde_json::json!({"type": "ping"}));
        error(&mut out, "overloaded_error", "busy\nnow");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "event: ping\ndata: {\"type\":\"ping\"}\n\n\
             event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"busy\\nnow\"}}\n\n"
        );
    }
}
