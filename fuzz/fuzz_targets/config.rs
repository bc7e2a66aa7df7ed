//! The configuration parser (`config::Config::parse`).
//!
//! Properties, for any document:
//! * an accepted document is internally consistent: every alias and allowlisted model is in
//!   its one canonical spelling (canonicalising it again changes nothing), the upstream host
//!   is a bare host (no scheme, path, user info), the body limit is in range, key ids unique;
//! * no secret of the document (secret access key, session token, Bedrock API key, container
//!   authorization token) appears in the parsed configuration's `Debug` output or in a
//!   refusal's message: both reach logs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate_core::config::{Config, UpstreamAuth};
use tollgate_core::request::model_id;
use tollgate_core::upstream::credentials::SourceKind;

/// String values under secret-bearing fields, long enough that finding one by chance in an
/// unrelated message is not a leak.
fn secrets(doc: &Value, out: &mut Vec<String>) {
    match doc {
        Value::Object(map) => {
            for (k, v) in map {
                if matches!(
                    k.as_str(),
                    "secret_access_key" | "session_token" | "api_key" | "authorization_token"
                ) {
                    if let Some(s) = v.as_str().filter(|s| s.len() >= 8) {
                        out.push(s.to_string());
                    }
                }
                secrets(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| secrets(v, out)),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let env = |name: &str| match name {
        "AWS_ACCESS_KEY_ID" => Some("AKIDFROMENVIRONMENT".to_string()),
        "AWS_SECRET_ACCESS_KEY" => Some("env-secret-access-key-0123".to_string()),
        "AWS_SESSION_TOKEN" => Some("env-session-token-0123456".to_string()),
        "AWS_BEARER_TOKEN_BEDROCK" => Some("env-bedrock-api-key-0123".to_string()),
        "AWS_CONTAINER_AUTHORIZATION_TOKEN" => Some("env-container-token-0123".to_string()),
        _ => None,
    };
    let mut planted = vec![
        "env-secret-access-key-0123".to_string(),
        "env-session-token-0123456".to_string(),
        "env-bedrock-api-key-0123".to_string(),
        "env-container-token-0123".to_string(),
    ];
    if let Ok(doc) = serde_json::from_slice::<Value>(data) {
        let mut found = Vec::new();
        secrets(&doc, &mut found);
        // Only secrets written once: the same text elsewhere (an alias, say) may be shown as that.
        let count = |s: &str| data.windows(s.len()).filter(|w| *w == s.as_bytes()).count();
        planted.extend(found.into_iter().filter(|s| count(s) == 1));
    }
    match Config::parse(data, &env) {
        Err(e) => {
            let shown = format!("{e} {e:?}");
            for s in &planted {
                assert!(
                    !shown.contains(s.as_str()),
                    "a refusal shows a secret: {shown}"
                );
            }
        }
        Ok(config) => {
            let shown = format!("{config:?}");
            for s in &planted {
                assert!(!shown.contains(s.as_str()), "Debug shows a secret: {shown}");
            }
            let secret_of_auth = match &config.upstream_auth {
                UpstreamAuth::SigV4 {
                    secret_access_key,
                    session_token,
                    ..
                } => {
                    let mut v = vec![secret_access_key.clone()];
                    v.extend(session_token.clone());
                    v
                }
                UpstreamAuth::Bearer(k) => vec![k.clone()],
                UpstreamAuth::Fetched(source) => match &source.kind {
                    SourceKind::Container {
                        authorization_token,
                    } => authorization_token.iter().cloned().collect(),
                    SourceKind::InstanceMetadata => Vec::new(),
                },
                UpstreamAuth::Envoy => Vec::new(),
            };
            for s in secret_of_auth
                .iter()
                .filter(|s| s.len() >= 8 && planted.contains(s))
            {
                assert!(
                    !shown.contains(s.as_str()),
                    "Debug shows the upstream credential"
                );
            }
            for target in config.aliases.values() {
                assert_eq!(
                    model_id::canonical(target, &config.region).as_deref(),
                    Ok(target.as_str()),
                    "alias target not canonical"
                );
            }
            let mut ids = std::collections::BTreeSet::new();
            for key in &config.api_keys {
                assert!(ids.insert(key.id.clone()), "two keys with id {}", key.id);
                for m in &key.models {
                    assert_eq!(
                        model_id::canonical(m, &config.region).as_deref(),
                        Ok(m.as_str()),
                        "allowlisted model not canonical"
                    );
                }
            }
            let host = &config.upstream_host;
            assert!(!host.is_empty());
            assert!(
                !host.contains(['/', '@', '?', '#', ' ', '\\']),
                "upstream host {host:?}"
            );
            assert!((1..=64 << 20).contains(&config.max_request_body_bytes));
        }
    }
});
