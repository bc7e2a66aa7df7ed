//! The usage meter against every model family's invoke stream as the emulator serves it: the
//! text each chunk carries is metered as it arrives (so a stream cancelled before its last
//! chunk is billed for what it delivered, and a budget cut-off can trip), and the invocation
//! metrics complete the reading.

use serde_json::Value;
use tollgate_core::response::meter::UsageMeter;
use tollgate_core::Operation;
use tollgate_emulator::directives::Directives;
use tollgate_emulator::families::Family;
use tollgate_emulator::responses::{self, encode_event, stream_events, Plan, StreamContext};

const MODELS: &[&str] = &[
    "us.anthropic.claude-haiku-4-5-20251001-v1:0",
    "us.amazon.nova-lite-v1:0",
    "amazon.titan-text-express-v1",
    "us.meta.llama3-2-1b-instruct-v1:0",
    "mistral.mistral-large-2402-v1:0",
    "mistral.mistral-large-2407-v1:0",
    "cohere.command-r-plus-v1:0",
    "ai21.jamba-1-5-mini-v1:0",
    "openai.gpt-oss-120b-1:0",
    "deepseek.v3-v1:0",
    "us.deepseek.r1-v1:0",
    "us.writer.palmyra-x5-v1:0",
    "qwen.qwen3-32b-v1:0",
];

fn stream(model_id: &str, body: &str) -> (Plan, Vec<Vec<u8>>) {
    let op = responses::Operation::InvokeWithResponseStream;
    let family = Family::of(model_id);
    let json: Value = serde_json::from_str(body).unwrap();
    let plan = Plan::new(
        op,
        family,
        body.as_bytes(),
        Some(&json),
        &Directives::parse(body.as_bytes()),
    );
    let ctx = StreamContext {
        op,
        family,
        plan: &plan,
        model_id,
        message_id: "m-1",
        seq: 7,
        latency_ms: 30,
        first_byte_latency_ms: 10,
    };
    let frames = stream_events(op, family, &plan)
        .iter()
        .enumerate()
        .map(|(i, e)| encode_event(&ctx, i as u64, e).unwrap())
        .collect();
    (plan, frames)
}

#[test]
fn every_family_is_metered_as_it_streams() {
    let body = r#"{"x":"[[emu:output=40]] [[emu:events=8]] [[emu:input=21]]"}"#;
    for model_id in MODELS {
        let (plan, frames) = stream(model_id, body);
        let text_bytes = plan.full_text().len() as u64;
        let mut meter = UsageMeter::new(Operation::InvokeWithResponseStream);
        meter.on_response_headers(
            200,
            [("content-type", "application/vnd.amazon.eventstream")],
        );
        let (last, rest) = frames.split_last().unwrap();
        for frame in rest {
            meter.on_body(frame);
        }
        // Before the last chunk: the text so far, no final usage.
        let before = meter.reading();
        assert_eq!(before.output_text_bytes, text_bytes, "{model_id}");
        assert!(!before.complete, "{model_id}");
        meter.on_body(last);
        let r = meter.finish();
        assert!(r.complete, "{model_id}");
        assert_eq!(
            (r.usage.input_tokens, r.usage.output_tokens),
            (21, 40),
            "{model_id}"
        );
        assert_eq!(r.problem, None, "{model_id}");
    }
}
