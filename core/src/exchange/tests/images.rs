//! Image models are billed per image, and refused when they have no per-image price.

use super::*;
use crate::quota::counters::CasCounters;
use crate::request::auth::hash_key;
use crate::store::memory::MemoryStore;

fn config(budget_usd: &str) -> Config {
    let json = format!(
        r#"{{"region":"us-east-1","upstream_host":"h",
            "api_keys":[{{"id":"a","sha256":"{}","models":["*"],
              "limits":{{"budget":{{"usd":"{budget_usd}","period":"total"}}}}}}],
            "credentials":{{"type":"inline","access_key_id":"AK","secret_access_key":"SK"}}}}"#,
        hex::encode(hash_key("k"))
    );
    Config::parse(json.as_bytes(), &|_| None).unwrap()
}

fn admit_model(config: &Config, model_id: &str) -> Admission {
    let path = format!(
        "/model/{}/invoke",
        crate::request::model_id::encode_path_label(model_id)
    );
    admit(config, "POST", &path, &[("authorization", "Bearer k")], 0)
}

/// Invokes `model_id` with `request`, answered by `response`; the record and the spend.
fn invoke(
    config: &Config,
    model_id: &str,
    request: &str,
    response: &str,
) -> Result<(UsageRecord, i64), GatewayError> {
    let store = MemoryStore::default();
    let counters = CasCounters(&store);
    let Admission::Forward(mut ex) = admit_model(config, model_id) else {
        panic!("not admitted")
    };
    ex.upstream_request(
        config,
        &counters,
        &mut SigningKeyCache::default(),
        request.as_bytes(),
        SystemTime::UNIX_EPOCH,
    )?;
    ex.on_response_headers(200, [("content-type", "application/json")]);
    ex.on_response_body(response.as_bytes());
    let record = ex.finish(config, &counters, 1).unwrap();
    let spent = counters
        .read(
            &quota::counter_name("a", crate::quota::limits::Scope::Key, "", "spend"),
            0,
        )
        .unwrap();
    Ok((record, spent))
}

use crate::accounting::money::PICO_PER_USD;

#[test]
fn images_are_billed_per_image_from_the_response() {
    let config = config("1");
    // litellm: Nova Canvas $0.06, Titan Image Generator v2 $0.008, SD3.5 Large $0.08,
    // SDXL 1.0 $0.04 / $0.08 (50 / more steps: the higher, never under).
    for (model_id, request, response, images, usd_per_image_milli) in [
        (
            "amazon.nova-canvas-v1:0",
            r#"{"taskType":"TEXT_IMAGE","textToImageParams":{"text":"a cat"},"imageGenerationConfig":{"numberOfImages":2}}"#,
            r#"{"images":["iVBORw0KGgo=","iVBORw0KGgo="],"error":null}"#,
            2,
            60,
        ),
        (
            "amazon.titan-image-generator-v2:0",
            r#"{"taskType":"TEXT_IMAGE","textToImageParams":{"text":"a cat"},"imageGenerationConfig":{"numberOfImages":3}}"#,
            r#"{"images":["a","b","c"],"error":null}"#,
            3,
            8,
        ),
        (
            "stability.sd3-5-large-v1:0",
            r#"{"prompt":"a cat"}"#,
            r#"{"seeds":[7],"finish_reasons":[null],"images":["iVBORw0KGgo="]}"#,
            1,
            80,
        ),
        (
            "stability.stable-diffusion-xl-v1",
            r#"{"text_prompts":[{"text":"a cat"}],"samples":1}"#,
            r#"{"result":"success","artifacts":[{"seed":1,"base64":"iVBORw0KGgo=","finishReason":"SUCCESS"}]}"#,
            1,
            80,
        ),
    ] {
        let (record, spent) = invoke(&config, model_id, request, response).unwrap();
        let cost = images * usd_per_image_milli * PICO_PER_USD / 1000;
        assert_eq!(record.cost_pico_usd, cost, "{model_id}");
        assert_eq!(
            record.usage_source,
            crate::accounting::record::UsageSource::Reported,
            "{model_id}"
        );
        assert_eq!(spent, i64::try_from(cost).unwrap(), "{model_id}");
    }
}

#[test]
fn the_reservation_counts_the_images_requested() {
    // $0.10 covers one Nova Canvas image ($0.06), not two.
    let config = config("0.1");
    let request = |n: u32| {
        format!(
            r#"{{"taskType":"TEXT_IMAGE","textToImageParams":{{"text":"a cat"}},"imageGenerationConfig":{{"numberOfImages":{n}}}}}"#
        )
    };
    let one = r#"{"images":["a"],"error":null}"#;
    invoke(&config, "amazon.nova-canvas-v1:0", &request(1), one).unwrap();
    let err = invoke(&config, "amazon.nova-canvas-v1:0", &request(2), one).unwrap_err();
    assert_eq!(err.kind, ErrorKind::BudgetExhausted);
}

#[test]
fn an_image_answer_too_large_to_read_is_billed_the_images_requested() {
    // Four 2048x2048 images do not fit the meter's 8 MiB parse cap: the count requested.
    let config = config("1");
    let image = "A".repeat(3 << 20);
    let response = format!(r#"{{"images":["{image}","{image}","{image}","{image}"]}}"#);
    let request = r#"{"taskType":"TEXT_IMAGE","textToImageParams":{"text":"a cat"},"imageGenerationConfig":{"numberOfImages":4,"width":2048,"height":2048}}"#;
    let (record, spent) = invoke(&config, "amazon.nova-canvas-v1:0", request, &response).unwrap();
    assert_eq!(
        record.usage_source,
        crate::accounting::record::UsageSource::Estimated
    );
    assert_eq!(
        (record.images, record.input_tokens, record.output_tokens),
        (4, 0, 0)
    );
    assert_eq!(record.cost_pico_usd, 4 * 60 * PICO_PER_USD / 1000);
    assert_eq!(spent, i64::try_from(record.cost_pico_usd).unwrap());
}

#[test]
fn image_models_without_a_per_image_price_are_refused() {
    for model_id in [
        "stability.unreleased-image-model-v9:0",
        "amazon.nova-canvas-v9:0",
        "us.amazon.titan-image-generator-v7:0",
    ] {
        match admit_model(&config("1"), model_id) {
            Admission::Refused { error, .. } => {
                let reply = error.to_bedrock_reply();
                assert_eq!(reply.status, 400, "{model_id}");
                assert!(
                    reply
                        .headers
                        .iter()
                        .any(|(n, v)| *n == "x-amzn-errortype" && v == "ValidationException"),
                    "{model_id}"
                );
                assert!(error.message.contains(model_id), "{}", error.message);
            }
            _ => panic!("{model_id} admitted"),
        }
    }
}
