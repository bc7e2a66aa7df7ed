//! Which family a Bedrock model belongs to, from its ID: it decides whether the gateway can
//! meter the model's own invoke-stream format as it arrives, and whether the model makes images
//! (priced per image, not per token).

/// The provider of a model ID: the segment before the first `.`, after the resource ID of an
/// ARN and a cross-region inference-profile prefix (`us.`, `eu.`, `apac.`, `global.`…).
/// `None` for an ID that names no provider (an application inference profile's opaque ID).
fn provider_and_name(model_id: &str) -> Option<(&str, &str)> {
    let id = if model_id.starts_with("arn:") {
        model_id.rsplit('/').next().unwrap_or(model_id)
    } else {
        model_id
    };
    let (first, rest) = id.split_once('.')?;
    // A geographic prefix is followed by `provider.name`; a provider by the model's name.
    match rest.split_once('.') {
        Some((provider, name)) if is_geo_prefix(first) => Some((provider, name)),
        _ => Some((first, rest)),
    }
}

fn is_geo_prefix(segment: &str) -> bool {
    const GEO: &[&str] = &[
        "us", "eu", "apac", "au", "jp", "global", "us-gov", "ca", "sa", "me", "af", "il", "mx",
    ];
    GEO.contains(&segment)
}

/// Providers whose invoke-stream chunks the meter reads as they arrive (see `meter`):
/// Anthropic, Amazon (Nova, Titan text), Meta Llama, Mistral, Cohere, and the OpenAI-style
/// chat-completion formats of AI21 Jamba, OpenAI, DeepSeek, Writer, Qwen and the rest.
const METERED_STREAM_PROVIDERS: &[&str] = &[
    "anthropic",
    "amazon",
    "meta",
    "mistral",
    "cohere",
    "ai21",
    "openai",
    "deepseek",
    "writer",
    "qwen",
    "minimax",
    "moonshotai",
    "moonshot",
    "nvidia",
    "zai",
    "xai",
    "google",
];

/// The meter can price what an InvokeModelWithResponseStream of this model delivered, chunk by
/// chunk: its provider's stream format is known. Only such streams may be admitted with a
/// partial budget allowance and cut off when it runs out.
pub fn invoke_stream_is_metered(model_id: &str) -> bool {
    provider_and_name(model_id).is_some_and(|(provider, name)| {
        METERED_STREAM_PROVIDERS.contains(&provider) && !makes_images_named(provider, name)
    })
}

/// The model generates or edits images: Stability AI, Amazon Titan Image Generator, Amazon
/// Nova Canvas. Bedrock bills these per image.
pub fn makes_images(model_id: &str) -> bool {
    provider_and_name(model_id).is_some_and(|(provider, name)| makes_images_named(provider, name))
}

fn makes_images_named(provider: &str, name: &str) -> bool {
    match provider {
        "stability" => true,
        "amazon" => name.starts_with("titan-image-generator") || name.starts_with("nova-canvas"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_by_id_profile_and_arn() {
        for id in [
            "anthropic.claude-haiku-4-5-20251001-v1:0",
            "us.anthropic.claude-haiku-4-5-20251001-v1:0",
            "us-gov.anthropic.claude-3-haiku-20240307-v1:0",
            "mistral.mistral-large-2402-v1:0",
            "meta.llama3-70b-instruct-v1:0",
            "us.meta.llama4-scout-17b-instruct-v1:0",
            "amazon.titan-text-express-v1",
            "amazon.nova-lite-v1:0",
            "cohere.command-r-plus-v1:0",
            "ai21.jamba-1-5-large-v1:0",
            "openai.gpt-oss-120b-1:0",
            "us.deepseek.r1-v1:0",
            "us.writer.palmyra-x5-v1:0",
            "qwen.qwen3-32b-v1:0",
            "arn:aws:bedrock:us-east-1::foundation-model/mistral.mistral-7b-instruct-v0:2",
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.meta.llama3-2-1b-instruct-v1:0",
        ] {
            assert!(invoke_stream_is_metered(id), "{id}");
            assert!(!makes_images(id), "{id}");
        }
        for id in [
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4e5f6",
            "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/xyz",
            "twelvelabs.pegasus-1-2-v1:0",
            "example.unreleased-model-v9:0",
            "no-dots-at-all",
            "",
        ] {
            assert!(!invoke_stream_is_metered(id), "{id}");
        }
    }

    #[test]
    fn image_models() {
        for id in [
            "stability.sd3-5-large-v1:0",
            "us.stability.stable-image-inpaint-v1:0",
            "stability.stable-diffusion-xl-v1",
            "amazon.titan-image-generator-v2:0",
            "amazon.nova-canvas-v1:0",
            "us.amazon.nova-canvas-v1:0",
            "arn:aws:bedrock:us-west-2::foundation-model/stability.stable-image-ultra-v1:1",
        ] {
            assert!(makes_images(id), "{id}");
            assert!(!invoke_stream_is_metered(id), "{id}");
        }
        for id in [
            "amazon.titan-embed-image-v1",
            "amazon.nova-pro-v1:0",
            "stabilityish",
        ] {
            assert!(!makes_images(id), "{id}");
        }
    }
}
