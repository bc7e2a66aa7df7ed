//! Each model family's native InvokeModel format: where its request names the output limit,
//! its response body, and the model events of its InvokeModelWithResponseStream, as the
//! Bedrock user guide ("Inference request parameters and response fields for foundation
//! models") and the providers' own APIs define them. Bedrock wraps each stream event in a
//! `chunk` (`{"bytes":"<base64>"}`) and adds `amazon-bedrock-invocationMetrics` to the last.
//!
//! The family follows from the model ID; IDs of no known family answer as Anthropic models.

use serde_json::{json, Value};

use crate::responses::{Plan, StreamEvent, Usage};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Anthropic Messages (`anthropic.claude-*`).
    Anthropic,
    /// Amazon Nova understanding models: Bedrock's own messages schema.
    Nova,
    /// Amazon Titan Text: `inputText` / `outputText`.
    TitanText,
    /// Meta Llama 2, 3, 4: `prompt` / `generation`.
    Llama,
    /// Mistral 7B, Mixtral 8x7B, Large (2402), Small: `prompt` / `outputs[].text`.
    Mistral,
    /// Mistral Large 2 (2407) and Pixtral: chat messages, `choices[].message` in every chunk.
    MistralChat,
    /// Cohere Command R / R+: `message` / `text`, `text-generation` stream events.
    CohereCommandR,
    /// OpenAI-style chat completions: AI21 Jamba, OpenAI gpt-oss, DeepSeek V3, Writer Palmyra,
    /// Qwen (and the other providers that adopted the format).
    ChatCompletions,
    /// DeepSeek-R1: a text completion, `choices[].text`.
    DeepSeekR1,
    /// Amazon Titan Image Generator and Nova Canvas: `{"images": [...], "error": null}`.
    TitanImage,
    /// Stability's image services (SD3, Stable Image Core/Ultra, edits):
    /// `{"seeds", "finish_reasons", "images"}`.
    StabilityImage,
    /// Stability SDXL: `{"result", "artifacts": [{"seed", "base64", "finishReason"}]}`.
    Sdxl,
}

/// The base64 of a tiny PNG header: what an emulated image is.
const IMAGE_B64: &str = "iVBORw0KGgoAAAANSUhEUg==";

/// The provider and model name of a model ID (an ARN's resource ID, without a cross-region
/// prefix).
fn provider_and_name(model_id: &str) -> (&str, &str) {
    let id = model_id.rsplit('/').next().unwrap_or(model_id);
    let Some((first, rest)) = id.split_once('.') else {
        return ("", id);
    };
    const GEO: &[&str] = &["us", "eu", "apac", "au", "jp", "global", "us-gov", "ca"];
    match rest.split_once('.') {
        Some((provider, name)) if GEO.contains(&first) => (provider, name),
        _ => (first, rest),
    }
}

impl Family {
    pub fn of(model_id: &str) -> Self {
        let (provider, name) = provider_and_name(model_id);
        match provider {
            "amazon" if name.starts_with("nova-canvas") => Self::TitanImage,
            "amazon" if name.starts_with("titan-image") => Self::TitanImage,
            "stability" if name.starts_with("stable-diffusion-xl") => Self::Sdxl,
            "stability" => Self::StabilityImage,
            "amazon" if name.starts_with("nova") => Self::Nova,
            "amazon" if name.starts_with("titan-text") || name.starts_with("titan-tg1") => {
                Self::TitanText
            }
            "meta" => Self::Llama,
            "mistral" if name.starts_with("mistral-large-2407") || name.starts_with("pixtral") => {
                Self::MistralChat
            }
            "mistral" => Self::Mistral,
            "cohere" => Self::CohereCommandR,
            "deepseek" if name.starts_with("r1") => Self::DeepSeekR1,
            "ai21" | "openai" | "deepseek" | "writer" | "qwen" | "minimax" | "moonshotai"
            | "nvidia" | "zai" | "xai" | "google" => Self::ChatCompletions,
            _ => Self::Anthropic,
        }
    }

    /// Images an invoke request to an image model asks for (`numberOfImages`, `samples`, else
    /// one); `None` for other models.
    pub fn images_requested(self, body: Option<&Value>) -> Option<u64> {
        let n = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(1).max(1);
        match self {
            Self::TitanImage => {
                Some(n(body.and_then(|b| {
                    b.get("imageGenerationConfig")?.get("numberOfImages")
                })))
            }
            Self::Sdxl => Some(n(body.and_then(|b| b.get("samples")))),
            Self::StabilityImage => Some(1),
            _ => None,
        }
    }

    /// The model makes images (and only answers InvokeModel).
    pub fn makes_images(self) -> bool {
        matches!(self, Self::TitanImage | Self::StabilityImage | Self::Sdxl)
    }

    /// The output limit an invoke request names, in this family's field.
    pub fn requested_max(self, body: &Value) -> Option<u64> {
        let at = |parent: &str, field: &str| body.get(parent)?.get(field)?.as_u64();
        match self {
            Self::Nova => at("inferenceConfig", "max_new_tokens"),
            Self::TitanText => at("textGenerationConfig", "maxTokenCount"),
            Self::Llama => body.get("max_gen_len")?.as_u64(),
            Self::ChatCompletions => body
                .get("max_tokens")
                .or_else(|| body.get("max_completion_tokens"))?
                .as_u64(),
            _ => body.get("max_tokens")?.as_u64(),
        }
    }

    /// The stop reason this family reports for a finished answer.
    pub fn stop_reason(self) -> &'static str {
        match self {
            Self::Anthropic | Self::Nova => "end_turn",
            Self::TitanText => "FINISH",
            Self::CohereCommandR => "COMPLETE",
            _ => "stop",
        }
    }

    /// The events of an invoke stream around its content deltas: (before, after). The last
    /// one carries the invocation metrics.
    pub fn stream_frame(self) -> (Vec<StreamEvent>, Vec<StreamEvent>) {
        use StreamEvent::{
            BlockStart, BlockStop, MessageDelta, MessageStart, MessageStop, Metadata,
        };
        match self {
            Self::Anthropic => (
                vec![MessageStart, BlockStart],
                vec![BlockStop, MessageDelta, MessageStop],
            ),
            Self::Nova => (vec![MessageStart], vec![BlockStop, MessageStop, Metadata]),
            Self::CohereCommandR | Self::ChatCompletions => (vec![MessageStart], vec![MessageStop]),
            Self::TitanText
            | Self::Llama
            | Self::Mistral
            | Self::MistralChat
            | Self::DeepSeekR1
            | Self::TitanImage
            | Self::StabilityImage
            | Self::Sdxl => (vec![], vec![MessageStop]),
        }
    }

    /// The invoke-stream event that ends the stream and carries the invocation metrics.
    pub fn is_last_event(self, event: &StreamEvent) -> bool {
        match self {
            Self::Nova => matches!(event, StreamEvent::Metadata),
            _ => matches!(event, StreamEvent::MessageStop),
        }
    }

    /// The InvokeModel answer (Anthropic's is built by `responses::invoke_body`).
    pub fn body(self, plan: &Plan, model_id: &str, id: &str) -> Value {
        let mut body = self.body_as_reported(plan, model_id, id);
        match self {
            Self::Nova => plan.misreport(&mut body["usage"], "outputTokens"),
            Self::ChatCompletions => plan.misreport(&mut body["usage"], "completion_tokens"),
            Self::Llama => plan.misreport(&mut body, "generation_token_count"),
            _ => {}
        }
        body
    }

    fn body_as_reported(self, plan: &Plan, model_id: &str, id: &str) -> Value {
        let u = &plan.usage;
        let text = plan.full_text();
        let stop = plan.stop_reason.as_str();
        match self {
            Self::Anthropic => Value::Null,
            Self::Nova => json!({
                "output": { "message": { "role": "assistant", "content": [ { "text": text } ] } },
                "stopReason": stop,
                "usage": {
                    "inputTokens": u.input_tokens,
                    "outputTokens": u.output_tokens,
                    "totalTokens": u.total(),
                    "cacheReadInputTokenCount": u.cache_read_tokens,
                    "cacheWriteInputTokenCount": u.cache_write_tokens,
                },
            }),
            Self::TitanText => json!({
                "inputTextTokenCount": u.input_tokens,
                "results": [ {
                    "tokenCount": u.output_tokens,
                    "outputText": text,
                    "completionReason": stop,
                } ],
            }),
            Self::Llama => json!({
                "generation": text,
                "prompt_token_count": u.input_tokens,
                "generation_token_count": u.output_tokens,
                "stop_reason": stop,
            }),
            Self::Mistral => json!({ "outputs": [ { "text": text, "stop_reason": stop } ] }),
            Self::MistralChat => json!({
                "choices": [ {
                    "index": 0,
                    "message": { "role": "assistant", "content": text },
                    "stop_reason": stop,
                } ],
            }),
            Self::CohereCommandR => json!({
                "response_id": id,
                "text": text,
                "generation_id": id,
                "chat_history": [],
                "finish_reason": stop,
            }),
            Self::ChatCompletions => json!({
                "id": id,
                "object": "chat.completion",
                "created": 0,
                "model": model_id,
                "choices": [ {
                    "index": 0,
                    "message": { "role": "assistant", "content": text },
                    "finish_reason": stop,
                } ],
                "usage": chat_usage(u),
            }),
            Self::DeepSeekR1 => json!({ "choices": [ { "text": text, "stop_reason": stop } ] }),
            Self::TitanImage => json!({
                "images": vec![IMAGE_B64; u.images as usize],
                "error": null,
            }),
            Self::StabilityImage => json!({
                "seeds": (0..u.images).collect::<Vec<_>>(),
                "finish_reasons": vec![Value::Null; u.images as usize],
                "images": vec![IMAGE_B64; u.images as usize],
            }),
            Self::Sdxl => json!({
                "result": "success",
                "artifacts": (0..u.images)
                    .map(|seed| json!({ "seed": seed, "base64": IMAGE_B64, "finishReason": "SUCCESS" }))
                    .collect::<Vec<_>>(),
            }),
        }
    }

    /// The model event of one invoke-stream event (not Anthropic's, nor an exception). The
    /// last event of the stream gets the invocation metrics added by the caller.
    pub fn stream_event(self, event: &StreamEvent, plan: &Plan, model_id: &str, id: &str) -> Value {
        let u = &plan.usage;
        let stop = plan.stop_reason.as_str();
        let chunk_head = |choices: Value| {
            json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model_id,
                "choices": choices,
            })
        };
        match (self, event) {
            (Self::Nova, StreamEvent::MessageStart) => {
                json!({ "messageStart": { "role": "assistant" } })
            }
            (Self::Nova, StreamEvent::Delta { text, .. }) => json!({
                "contentBlockDelta": { "delta": { "text": text }, "contentBlockIndex": 0 },
            }),
            (Self::Nova, StreamEvent::BlockStop) => {
                json!({ "contentBlockStop": { "contentBlockIndex": 0 } })
            }
            (Self::Nova, StreamEvent::MessageStop) => {
                json!({ "messageStop": { "stopReason": stop } })
            }
            (Self::Nova, _) => {
                let mut usage =
                    json!({ "inputTokens": u.input_tokens, "outputTokens": u.output_tokens });
                plan.misreport(&mut usage, "outputTokens");
                json!({ "metadata": { "usage": usage, "metrics": {}, "trace": {} } })
            }
            (
                Self::TitanText,
                StreamEvent::Delta {
                    text,
                    tokens,
                    tokens_before,
                    index,
                },
            ) => json!({
                "outputText": text,
                "index": 0,
                "totalOutputTextTokenCount": tokens_before + tokens,
                "completionReason": null,
                "inputTextTokenCount": if *index == 0 { json!(u.input_tokens) } else { Value::Null },
            }),
            (Self::TitanText, _) => json!({
                "outputText": "",
                "index": 0,
                "totalOutputTextTokenCount": u.output_tokens,
                "completionReason": stop,
                "inputTextTokenCount": null,
            }),
            (
                Self::Llama,
                StreamEvent::Delta {
                    text,
                    tokens,
                    tokens_before,
                    index,
                },
            ) => json!({
                "generation": text,
                "prompt_token_count": if *index == 0 { json!(u.input_tokens) } else { Value::Null },
                "generation_token_count": tokens_before + tokens,
                "stop_reason": null,
            }),
            (Self::Llama, _) => json!({
                "generation": "",
                "prompt_token_count": null,
                "generation_token_count": u.output_tokens,
                "stop_reason": stop,
            }),
            (Self::Mistral, StreamEvent::Delta { text, .. }) => {
                json!({ "outputs": [ { "text": text, "stop_reason": null } ] })
            }
            (Self::Mistral, _) => json!({ "outputs": [ { "text": "", "stop_reason": stop } ] }),
            (Self::MistralChat, StreamEvent::Delta { text, .. }) => json!({
                "choices": [ {
                    "index": 0,
                    "message": { "role": "assistant", "content": text },
                    "stop_reason": null,
                } ],
            }),
            (Self::MistralChat, _) => json!({
                "choices": [ {
                    "index": 0,
                    "message": { "role": "assistant", "content": "" },
                    "stop_reason": stop,
                } ],
            }),
            (Self::DeepSeekR1, StreamEvent::Delta { text, .. }) => {
                json!({ "choices": [ { "text": text, "stop_reason": null } ] })
            }
            (Self::DeepSeekR1, _) => json!({ "choices": [ { "text": "", "stop_reason": stop } ] }),
            (Self::CohereCommandR, StreamEvent::MessageStart) => json!({
                "is_finished": false,
                "event_type": "stream-start",
                "generation_id": id,
            }),
            (Self::CohereCommandR, StreamEvent::Delta { text, .. }) => json!({
                "is_finished": false,
                "event_type": "text-generation",
                "text": text,
            }),
            (Self::CohereCommandR, _) => json!({
                "is_finished": true,
                "event_type": "stream-end",
                "response": {
                    "response_id": id,
                    "text": plan.full_text(),
                    "generation_id": id,
                    "chat_history": [],
                    "finish_reason": stop,
                },
                "finish_reason": stop,
            }),
            (Self::ChatCompletions, StreamEvent::MessageStart) => chunk_head(json!([ {
                "index": 0,
                "delta": { "role": "assistant", "content": "" },
                "finish_reason": null,
            } ])),
            (Self::ChatCompletions, StreamEvent::Delta { text, .. }) => chunk_head(json!([ {
                "index": 0,
                "delta": { "content": text },
                "finish_reason": null,
            } ])),
            (Self::ChatCompletions, _) => {
                let mut v =
                    chunk_head(json!([ { "index": 0, "delta": {}, "finish_reason": stop } ]));
                v["usage"] = chat_usage(u);
                plan.misreport(&mut v["usage"], "completion_tokens");
                v
            }
            (Self::Anthropic | Self::TitanImage | Self::StabilityImage | Self::Sdxl, _) => {
                Value::Null
            }
        }
    }
}

fn chat_usage(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.output_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directives::Directives;
    use crate::eventstream_encode::decode_frame;
    use crate::responses::{encode_event, stream_events, Operation, StreamContext};
    use base64::Engine as _;

    const ALL: [(Family, &str); 9] = [
        (Family::Anthropic, "anthropic.claude-3-haiku-20240307-v1:0"),
        (Family::Nova, "amazon.nova-lite-v1:0"),
        (Family::TitanText, "amazon.titan-text-express-v1"),
        (Family::Llama, "meta.llama3-8b-instruct-v1:0"),
        (Family::Mistral, "mistral.mistral-7b-instruct-v0:2"),
        (Family::MistralChat, "mistral.mistral-large-2407-v1:0"),
        (Family::CohereCommandR, "cohere.command-r-v1:0"),
        (Family::ChatCompletions, "openai.gpt-oss-20b-1:0"),
        (Family::DeepSeekR1, "deepseek.r1-v1:0"),
    ];

    /// The model events of an invoke stream, decoded as a client does.
    fn model_events(family: Family, model_id: &str, body: &str) -> (Plan, Vec<Value>) {
        let json: Value = serde_json::from_str(body).unwrap();
        let op = Operation::InvokeWithResponseStream;
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
            seq: 1,
            latency_ms: 9,
            first_byte_latency_ms: 3,
        };
        let events = stream_events(op, family, &plan)
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let frame = encode_event(&ctx, i as u64, e).unwrap();
                let (frame, _) = decode_frame(&frame).unwrap();
                assert_eq!(frame.header(":event-type"), Some("chunk"));
                let outer: Value = serde_json::from_slice(&frame.payload).unwrap();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(outer["bytes"].as_str().unwrap())
                    .unwrap();
                serde_json::from_slice(&bytes).unwrap()
            })
            .collect();
        (plan, events)
    }

    /// The text of a model event, read the way the AWS SDK examples read each family's chunks.
    fn text_of(family: Family, e: &Value) -> String {
        let s = |v: &Value| v.as_str().unwrap_or("").to_string();
        match family {
            Family::Anthropic => s(&e["delta"]["text"]),
            Family::Nova => s(&e["contentBlockDelta"]["delta"]["text"]),
            Family::TitanText => s(&e["outputText"]),
            Family::Llama => s(&e["generation"]),
            Family::Mistral => s(&e["outputs"][0]["text"]),
            Family::MistralChat => s(&e["choices"][0]["message"]["content"]),
            Family::CohereCommandR if e["event_type"] == "text-generation" => s(&e["text"]),
            Family::CohereCommandR => String::new(),
            Family::ChatCompletions => s(&e["choices"][0]["delta"]["content"]),
            Family::DeepSeekR1 => s(&e["choices"][0]["text"]),
            Family::TitanImage | Family::StabilityImage | Family::Sdxl => String::new(),
        }
    }

    #[test]
    fn every_family_streams_its_text_and_ends_with_the_metrics() {
        for (family, model_id) in ALL {
            let (plan, events) = model_events(
                family,
                model_id,
                r#"{"x":"[[emu:output=7]] [[emu:events=3]] [[emu:input=5]]"}"#,
            );
            let text: String = events.iter().map(|e| text_of(family, e)).collect();
            assert_eq!(text, plan.full_text(), "{family:?}");
            let (last, rest) = events.split_last().unwrap();
            let metrics = &last["amazon-bedrock-invocationMetrics"];
            assert_eq!(metrics["inputTokenCount"], 5, "{family:?}");
            assert_eq!(metrics["outputTokenCount"], 7, "{family:?}");
            assert!(
                rest.iter()
                    .all(|e| e.get("amazon-bedrock-invocationMetrics").is_none()),
                "{family:?}: metrics before the last chunk"
            );
        }
    }

    #[test]
    fn running_counts_of_titan_and_llama() {
        let (_, titan) = model_events(
            Family::TitanText,
            "amazon.titan-text-lite-v1",
            r#"{"x":"[[emu:output=7]] [[emu:events=3]] [[emu:input=5]]"}"#,
        );
        let counts: Vec<_> = titan
            .iter()
            .map(|e| e["totalOutputTextTokenCount"].as_u64().unwrap())
            .collect();
        assert_eq!(counts, [3, 5, 7, 7]);
        assert_eq!(titan[0]["inputTextTokenCount"], 5);
        assert!(titan[1]["inputTextTokenCount"].is_null());
        let (_, llama) = model_events(
            Family::Llama,
            "meta.llama3-8b-instruct-v1:0",
            r#"{"x":"[[emu:output=7]] [[emu:events=3]] [[emu:input=5]]"}"#,
        );
        let counts: Vec<_> = llama
            .iter()
            .map(|e| e["generation_token_count"].as_u64().unwrap())
            .collect();
        assert_eq!(counts, [3, 5, 7, 7]);
        assert_eq!(llama[3]["stop_reason"], "stop");
    }

    #[test]
    fn every_family_answers_invoke_in_its_own_body() {
        for (family, model_id) in ALL {
            let body = r#"{"x":"[[emu:output=4]]"}"#;
            let json: Value = serde_json::from_str(body).unwrap();
            let plan = Plan::new(
                Operation::Invoke,
                family,
                body.as_bytes(),
                Some(&json),
                &Directives::parse(body.as_bytes()),
            );
            let v: Value = serde_json::from_slice(&crate::responses::invoke_body(
                family, &plan, model_id, "m-1",
            ))
            .unwrap();
            let text = match family {
                Family::Anthropic => &v["content"][0]["text"],
                Family::Nova => &v["output"]["message"]["content"][0]["text"],
                Family::TitanText => &v["results"][0]["outputText"],
                Family::Llama => &v["generation"],
                Family::Mistral => &v["outputs"][0]["text"],
                Family::MistralChat | Family::ChatCompletions => {
                    &v["choices"][0]["message"]["content"]
                }
                Family::CohereCommandR => &v["text"],
                Family::DeepSeekR1 => &v["choices"][0]["text"],
                Family::TitanImage | Family::StabilityImage | Family::Sdxl => continue,
            };
            assert_eq!(text, "w0 w1 w2 w3", "{family:?}");
        }
    }

    #[test]
    fn families_by_model_id() {
        for (id, family) in [
            (
                "us.anthropic.claude-haiku-4-5-20251001-v1:0",
                Family::Anthropic,
            ),
            ("us.amazon.nova-lite-v1:0", Family::Nova),
            ("amazon.titan-text-express-v1", Family::TitanText),
            ("us.meta.llama3-2-1b-instruct-v1:0", Family::Llama),
            ("mistral.mistral-large-2402-v1:0", Family::Mistral),
            ("mistral.mistral-large-2407-v1:0", Family::MistralChat),
            ("us.mistral.pixtral-large-2502-v1:0", Family::MistralChat),
            ("cohere.command-r-plus-v1:0", Family::CohereCommandR),
            ("ai21.jamba-1-5-mini-v1:0", Family::ChatCompletions),
            ("openai.gpt-oss-20b-1:0", Family::ChatCompletions),
            ("us.deepseek.r1-v1:0", Family::DeepSeekR1),
            ("deepseek.v3-v1:0", Family::ChatCompletions),
            ("us.writer.palmyra-x5-v1:0", Family::ChatCompletions),
            ("qwen.qwen3-32b-v1:0", Family::ChatCompletions),
            ("us.example.unreleased-model-v9:0", Family::Anthropic),
            (
                "arn:aws:bedrock:us-east-1::foundation-model/meta.llama3-8b-instruct-v1:0",
                Family::Llama,
            ),
        ] {
            assert_eq!(Family::of(id), family, "{id}");
        }
    }

    #[test]
    fn image_models_answer_with_the_images_asked_for() {
        for (model_id, body, key) in [
            (
                "amazon.nova-canvas-v1:0",
                r#"{"taskType":"TEXT_IMAGE","imageGenerationConfig":{"numberOfImages":3}}"#,
                "images",
            ),
            (
                "amazon.titan-image-generator-v2:0",
                r#"{"taskType":"TEXT_IMAGE","imageGenerationConfig":{"numberOfImages":3}}"#,
                "images",
            ),
            (
                "stability.stable-diffusion-xl-v1",
                r#"{"samples":3}"#,
                "artifacts",
            ),
        ] {
            let family = Family::of(model_id);
            let json: Value = serde_json::from_str(body).unwrap();
            let plan = Plan::new(
                Operation::Invoke,
                family,
                body.as_bytes(),
                Some(&json),
                &Directives::default(),
            );
            assert_eq!(
                plan.usage,
                Usage {
                    images: 3,
                    ..Usage::default()
                },
                "{model_id}"
            );
            let v = family.body(&plan, model_id, "id");
            assert_eq!(v[key].as_array().unwrap().len(), 3, "{model_id}");
        }
        let family = Family::of("stability.sd3-5-large-v1:0");
        let body = r#"{"prompt":"x [[emu:images=2]]"}"#;
        let json: Value = serde_json::from_str(body).unwrap();
        let plan = Plan::new(
            Operation::Invoke,
            family,
            body.as_bytes(),
            Some(&json),
            &Directives::parse(body.as_bytes()),
        );
        let v = family.body(&plan, "m", "id");
        assert_eq!(
            (
                v["images"].as_array().unwrap().len(),
                v["seeds"].as_array().unwrap().len()
            ),
            (2, 2)
        );
    }

    #[test]
    fn requested_max_per_family() {
        let cases = [
            (
                Family::Nova,
                json!({"inferenceConfig": {"max_new_tokens": 7}}),
            ),
            (
                Family::TitanText,
                json!({"textGenerationConfig": {"maxTokenCount": 7}}),
            ),
            (Family::Llama, json!({"max_gen_len": 7})),
            (Family::Mistral, json!({"max_tokens": 7})),
            (Family::ChatCompletions, json!({"max_completion_tokens": 7})),
            (Family::CohereCommandR, json!({"max_tokens": 7})),
        ];
        for (family, body) in cases {
            assert_eq!(family.requested_max(&body), Some(7), "{family:?}");
        }
        assert_eq!(Family::Llama.requested_max(&json!({"max_tokens": 7})), None);
    }
}
