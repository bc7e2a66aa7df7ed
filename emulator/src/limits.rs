//! Models' context windows, from litellm's data that Tollgate's prices come from
//! (`pricing/litellm-bedrock.json`), read independently of Tollgate's generated table: a
//! request whose input is larger than its model's window is refused as Bedrock refuses it.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;

const LITELLM: &str = include_str!("../../pricing/litellm-bedrock.json");

fn windows() -> &'static HashMap<String, u64> {
    static WINDOWS: OnceLock<HashMap<String, u64>> = OnceLock::new();
    WINDOWS.get_or_init(|| {
        let Ok(Value::Object(entries)) = serde_json::from_str::<Value>(LITELLM) else {
            return HashMap::new();
        };
        entries
            .into_iter()
            .filter(|(key, _)| !key.contains('/'))
            .filter_map(|(key, entry)| {
                let window = entry.get("max_input_tokens")?.as_u64()?;
                Some((key.to_ascii_lowercase(), window))
            })
            .collect()
    })
}

/// The context window of `model_id` (input tokens), when litellm lists one.
pub fn context_window(model_id: &str) -> Option<u64> {
    windows().get(&model_id.to_ascii_lowercase()).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_come_from_litellm() {
        assert_eq!(context_window("meta.llama3-8b-instruct-v1:0"), Some(8192));
        assert_eq!(
            context_window("US.ANTHROPIC.CLAUDE-HAIKU-4-5-20251001-V1:0"),
            Some(200_000)
        );
        assert_eq!(context_window("example.unknown-v1:0"), None);
    }
}
