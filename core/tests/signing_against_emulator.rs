//! The gateway's signer (aws-sigv4) against the emulator's independent, hand-written verifier:
//! what Tollgate sends upstream must verify, and any change to it must not.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tollgate_core::config::UpstreamAuth;
use tollgate_core::request::model_id::encode_path_label;
use tollgate_core::upstream::signing::{upstream_auth_headers, SigningKeyCache};
use tollgate_emulator::sigv4_verify::{verify, Credentials};

const REGION: &str = "eu-west-1";
const HOST: &str = "bedrock-runtime.eu-west-1.amazonaws.com";

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_795_000_000)
}

fn auth(token: Option<&str>) -> (UpstreamAuth, Credentials) {
    let (ak, sk) = ("AKIDTOLLGATE", "tollgate/secret+key");
    (
        UpstreamAuth::SigV4 {
            access_key_id: ak.into(),
            secret_access_key: sk.into(),
            session_token: token.map(Into::into),
        },
        Credentials {
            access_key_id: ak.into(),
            secret_access_key: sk.into(),
            session_token: token.map(Into::into),
        },
    )
}

/// Signs like the gateway and returns the request headers the upstream would see.
fn signed(auth: &UpstreamAuth, host: &str, path: &str, body: &[u8]) -> Vec<(String, String)> {
    let mut headers = vec![
        ("host".to_string(), host.to_string()),
        ("content-type".to_string(), "application/json".to_string()),
        // Added by Envoy after signing; unsigned, so harmless.
        ("x-forwarded-proto".to_string(), "https".to_string()),
    ];
    let keys = &mut SigningKeyCache::default();
    headers.extend(upstream_auth_headers(keys, auth, REGION, host, path, body, now()).unwrap());
    headers
}

const MODELS: &[&str] = &[
    "us.anthropic.claude-haiku-4-5-20251001-v1:0",
    "amazon.nova-lite-v1:0",
    "arn:aws:bedrock:eu-west-1:123456789012:inference-profile/eu.anthropic.claude-sonnet-4-5-20250929-v1:0",
    "arn:aws:bedrock:eu-west-1:123456789012:application-inference-profile/a1b2c3d4e5",
];
const OPS: &[&str] = &[
    "converse",
    "converse-stream",
    "invoke",
    "invoke-with-response-stream",
];

#[test]
fn every_route_and_model_form_verifies() {
    for token in [None, Some("FwoGZXIvYXdzEJr//////////token+with/slashes==")] {
        let (auth, creds) = auth(token);
        for model in MODELS {
            for op in OPS {
                let path = format!("/model/{}/{op}", encode_path_label(model));
                let body = br#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#;
                let headers = signed(&auth, HOST, &path, body);
                verify(
                    "POST",
                    &path,
                    "",
                    &headers,
                    body,
                    &creds,
                    REGION,
                    "bedrock",
                    now(),
                )
                .unwrap_or_else(|e| panic!("{model} {op} token={token:?}: {e}"));
            }
        }
    }
}

#[test]
fn a_port_in_the_host_is_signed_as_sent() {
    let (auth, creds) = auth(None);
    let path = "/model/amazon.nova-lite-v1%3A0/converse";
    let headers = signed(&auth, "127.0.0.1:9100", path, b"{}");
    verify(
        "POST",
        path,
        "",
        &headers,
        b"{}",
        &creds,
        REGION,
        "bedrock",
        now(),
    )
    .unwrap();
}

#[test]
fn any_change_breaks_the_signature() {
    let (auth, creds) = auth(Some("TOKEN"));
    let path = "/model/us.anthropic.claude-haiku-4-5-20251001-v1%3A0/converse";
    let body = br#"{"inferenceConfig":{"maxTokens":10}}"#;
    let headers = signed(&auth, HOST, path, body);
    let check = |path: &str, headers: &[(String, String)], body: &[u8], now: SystemTime| {
        verify(
            "POST", path, "", headers, body, &creds, REGION, "bedrock", now,
        )
    };
    check(path, &headers, body, now()).unwrap();
    // A different body (e.g. a max_tokens rewrite after signing).
    assert!(check(
        path,
        &headers,
        br#"{"inferenceConfig":{"maxTokens":99}}"#,
        now()
    )
    .is_err());
    // The model ID encoded twice in the sent path.
    assert!(check(&path.replace("%3A", "%253A"), &headers, body, now()).is_err());
    // Another host than the one signed.
    let mut other_host = headers.clone();
    other_host[0].1 = "bedrock-runtime.us-east-1.amazonaws.com".into();
    assert!(check(path, &other_host, body, now()).is_err());
    // A stale signature.
    assert!(check(path, &headers, body, now() + Duration::from_secs(3600)).is_err());
    // Without the session token.
    let no_token: Vec<_> = headers
        .iter()
        .filter(|(n, _)| n != "x-amz-security-token")
        .cloned()
        .collect();
    assert!(check(path, &no_token, body, now()).is_err());
}
