//! How many images a request to an image model asks for: what admission reserves (the answer's
//! own count is what is billed, see `meter`).

use serde::Deserialize;

/// Images a request for an image model asks for: Titan Image Generator's and Nova Canvas's
/// `imageGenerationConfig.numberOfImages`, SDXL's `samples`; Stability's image services make
/// one. An absent or malformed count is one (Bedrock's default, or its ValidationException).
pub fn requested(body: &[u8]) -> u64 {
    #[derive(Default, Deserialize)]
    #[serde(default)]
    struct Request {
        #[serde(rename = "imageGenerationConfig")]
        image_generation_config: Option<Config>,
        samples: Option<serde_json::Value>,
    }
    #[derive(Default, Deserialize)]
    #[serde(default)]
    struct Config {
        #[serde(rename = "numberOfImages")]
        number_of_images: Option<serde_json::Value>,
    }
    let Ok(request) = serde_json::from_slice::<Request>(body) else {
        return 1;
    };
    request
        .image_generation_config
        .and_then(|c| c.number_of_images)
        .or(request.samples)
        .and_then(|n| n.as_u64())
        .unwrap_or(1)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_of_each_request_shape() {
        for (body, n) in [
            (
                &br#"{"taskType":"TEXT_IMAGE","imageGenerationConfig":{"numberOfImages":4}}"#[..],
                4,
            ),
            (
                br#"{"taskType":"TEXT_IMAGE","textToImageParams":{"text":"x"}}"#,
                1,
            ),
            (br#"{"text_prompts":[{"text":"x"}],"samples":2}"#, 2),
            (br#"{"prompt":"x","mode":"text-to-image"}"#, 1),
            (br#"{"imageGenerationConfig":{"numberOfImages":"3"}}"#, 1),
            (br#"{"imageGenerationConfig":{"numberOfImages":0}}"#, 1),
            (br#"{"imageGenerationConfig":null,"samples":-1}"#, 1),
            (b"not json", 1),
            (b"[1,2]", 1),
        ] {
            assert_eq!(requested(body), n, "{}", String::from_utf8_lossy(body));
        }
    }
}
