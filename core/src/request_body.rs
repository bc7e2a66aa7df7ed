//! What the gateway reads from (and may change in) a request body: the output-token limit.
//!
//! The limit is where a request says how much it may cost, so admission reserves against it,
//! and a key's `max_output_tokens` clamps it. Bodies that are not JSON objects pass unchanged:
//! Bedrock answers them with its own ValidationException.

use serde_json::{Map, Value};

use crate::operation::Operation;

/// Where a request body keeps its output-token limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    /// Converse: `inferenceConfig.maxTokens`.
    ConverseMaxTokens,
    /// Anthropic Messages, Mistral, Cohere: `max_tokens`.
    MaxTokens,
    /// Meta Llama: `max_gen_len`.
    MaxGenLen,
    /// Amazon Nova: `inferenceConfig.max_new_tokens`.
    NovaMaxNewTokens,
    /// Amazon Titan text: `textGenerationConfig.maxTokenCount`.
    TitanMaxTokenCount,
}

impl Field {
    fn path(self) -> (Option<&'static str>, &'static str) {
        match self {
            Self::ConverseMaxTokens => (Some("inferenceConfig"), "maxTokens"),
            Self::MaxTokens => (None, "max_tokens"),
            Self::MaxGenLen => (None, "max_gen_len"),
            Self::NovaMaxNewTokens => (Some("inferenceConfig"), "max_new_tokens"),
            Self::TitanMaxTokenCount => (Some("textGenerationConfig"), "maxTokenCount"),
        }
    }

    fn get(self, body: &Map<String, Value>) -> Option<&Value> {
        match self.path() {
            (Some(parent), name) => body.get(parent)?.as_object()?.get(name),
            (None, name) => body.get(name),
        }
    }

    fn set(self, body: &mut Map<String, Value>, value: u64) -> bool {
        match self.path() {
            (Some(parent), name) => {
                let entry = body
                    .entry(parent)
                    .or_insert_with(|| Value::Object(Map::new()));
                match entry.as_object_mut() {
                    Some(obj) => {
                        obj.insert(name.to_string(), value.into());
                        true
                    }
                    None => false,
                }
            }
            (None, name) => {
                body.insert(name.to_string(), value.into());
                true
            }
        }
    }
}

/// The fields that may hold the limit for this operation, and the one to add when a body
/// names none (only where the field is certain: Converse, and Anthropic models on invoke).
fn fields(operation: Operation, model_id: &str) -> (&'static [Field], Option<Field>) {
    match operation {
        Operation::Converse | Operation::ConverseStream => {
            (&[Field::ConverseMaxTokens], Some(Field::ConverseMaxTokens))
        }
        Operation::Invoke | Operation::InvokeWithResponseStream => (
            &[
                Field::MaxTokens,
                Field::MaxGenLen,
                Field::NovaMaxNewTokens,
                Field::TitanMaxTokenCount,
            ],
            model_id.contains("anthropic.").then_some(Field::MaxTokens),
        ),
    }
}

/// The request's output limit after applying `cap`, and the body to send if it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLimit {
    /// The limit the request now carries; `None` if it names none (Bedrock's default applies).
    pub max_output_tokens: Option<u64>,
    /// The rewritten body, when the cap changed it.
    pub rewritten: Option<Vec<u8>>,
}

/// Reads the body's output-token limit and clamps it to `cap` (adding it where absent).
pub fn output_limit(
    body: &[u8],
    operation: Operation,
    model_id: &str,
    cap: Option<u64>,
) -> OutputLimit {
    let unchanged = |max| OutputLimit {
        max_output_tokens: max,
        rewritten: None,
    };
    let Ok(Value::Object(mut doc)) = serde_json::from_slice::<Value>(body) else {
        return unchanged(None);
    };
    let (candidates, default_field) = fields(operation, model_id);
    let found = candidates
        .iter()
        .find_map(|f| f.get(&doc).map(|v| (*f, v.as_u64())));
    let requested = found.and_then(|(_, v)| v);
    let Some(cap) = cap else {
        return unchanged(requested);
    };
    let target = match found {
        // Within the cap: leave the body byte-for-byte as the client sent it.
        Some((_, Some(n))) if n <= cap => return unchanged(Some(n)),
        Some((field, _)) => field,
        None => match default_field {
            Some(field) => field,
            None => return unchanged(None),
        },
    };
    if !target.set(&mut doc, cap) {
        return unchanged(requested);
    }
    match serde_json::to_vec(&doc) {
        Ok(bytes) => OutputLimit {
            max_output_tokens: Some(cap),
            rewritten: Some(bytes),
        },
        Err(_) => unchanged(requested),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HAIKU: &str = "us.anthropic.claude-haiku-4-5-20251001-v1:0";

    fn limit(
        body: Value,
        op: Operation,
        model: &str,
        cap: Option<u64>,
    ) -> (Option<u64>, Option<Value>) {
        let out = output_limit(&serde_json::to_vec(&body).unwrap(), op, model, cap);
        (
            out.max_output_tokens,
            out.rewritten.map(|b| serde_json::from_slice(&b).unwrap()),
        )
    }

    #[test]
    fn reads_the_limit_of_each_body_shape() {
        let cases = [
            (
                json!({"inferenceConfig": {"maxTokens": 50}}),
                Operation::ConverseStream,
                HAIKU,
            ),
            (
                json!({"max_tokens": 50, "messages": []}),
                Operation::Invoke,
                HAIKU,
            ),
            (
                json!({"max_gen_len": 50}),
                Operation::Invoke,
                "meta.llama3-70b-instruct-v1:0",
            ),
            (
                json!({"inferenceConfig": {"max_new_tokens": 50}}),
                Operation::InvokeWithResponseStream,
                "amazon.nova-lite-v1:0",
            ),
            (
                json!({"textGenerationConfig": {"maxTokenCount": 50}}),
                Operation::Invoke,
                "amazon.titan-text-express-v1",
            ),
        ];
        for (body, op, model) in cases {
            assert_eq!(
                limit(body.clone(), op, model, None),
                (Some(50), None),
                "{body}"
            );
            assert_eq!(
                limit(body.clone(), op, model, Some(60)),
                (Some(50), None),
                "within the cap: {body}"
            );
            let (max, rewritten) = limit(body.clone(), op, model, Some(20));
            assert_eq!(max, Some(20));
            assert!(rewritten.unwrap().to_string().contains("20"), "{body}");
        }
    }

    #[test]
    fn clamping_keeps_everything_else() {
        let body = json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}],
                          "inferenceConfig": {"maxTokens": 9000, "temperature": 0.25}, "system": [{"text": "s"}]});
        let (max, rewritten) = limit(body.clone(), Operation::Converse, HAIKU, Some(100));
        let mut expected = body;
        expected["inferenceConfig"]["maxTokens"] = json!(100);
        assert_eq!((max, rewritten), (Some(100), Some(expected)));
    }

    #[test]
    fn adds_the_cap_where_the_field_is_certain() {
        let (max, body) = limit(
            json!({"messages": []}),
            Operation::Converse,
            HAIKU,
            Some(64),
        );
        assert_eq!(
            (max, body.unwrap()["inferenceConfig"]["maxTokens"].clone()),
            (Some(64), json!(64))
        );
        let (max, body) = limit(json!({"messages": []}), Operation::Invoke, HAIKU, Some(64));
        assert_eq!(
            (max, body.unwrap()["max_tokens"].clone()),
            (Some(64), json!(64))
        );
        // An unknown invoke body shape is left alone.
        assert_eq!(
            limit(
                json!({"prompt": "x"}),
                Operation::Invoke,
                "ai21.jamba-1-5-large-v1:0",
                Some(64)
            ),
            (None, None)
        );
    }

    #[test]
    fn odd_bodies_pass_unchanged() {
        for body in [&b"not json"[..], b"[1,2]", b"", b"{\"inferenceConfig\": 5}"] {
            let out = output_limit(body, Operation::Converse, HAIKU, Some(10));
            assert_eq!(out.rewritten, None, "{:?}", String::from_utf8_lossy(body));
        }
        // A non-integer limit is replaced by the cap (Bedrock would reject it anyway).
        let (max, _) = limit(
            json!({"inferenceConfig": {"maxTokens": "lots"}}),
            Operation::Converse,
            HAIKU,
            Some(10),
        );
        assert_eq!(max, Some(10));
    }
}
