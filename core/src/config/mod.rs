//! The configuration document: one JSON object, the same for every host.
//!
//! Parsing is strict (unknown fields are errors) so that a typo can never silently disable a
//! rule; every error names the field it is about.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::quota::limits::{KeyLimits, LimitsDocument};
use crate::request::model_id;
use crate::upstream::credentials::Source;
pub use crate::upstream::credentials::UpstreamAuth;

pub mod error;

pub use error::ConfigError;

/// Every name [`Config::parse`] may look up in the host's environment (credentials of type
/// `environment` and `bedrock_api_key`; the endpoints of `container` and `instance_metadata`, as
/// the AWS SDKs read them). Hosts whose lookups are asynchronous (Spin variables) fetch exactly
/// these before parsing.
pub const ENVIRONMENT_NAMES: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_BEARER_TOKEN_BEDROCK",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
];

/// Default cap on a buffered request body: Envoy's default per-connection buffer is 1 MiB too.
pub const DEFAULT_MAX_REQUEST_BODY_BYTES: u64 = 1 << 20;

/// The document as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    region: String,
    #[serde(default)]
    upstream_host: Option<String>,
    #[serde(default)]
    upstream_scheme: Option<String>,
    #[serde(default)]
    aliases: BTreeMap<String, String>,
    api_keys: Vec<KeyDocument>,
    credentials: CredentialsDocument,
    #[serde(default)]
    max_request_body_bytes: Option<u64>,
    #[serde(default)]
    test_hooks: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyDocument {
    id: String,
    sha256: String,
    models: Vec<String>,
    #[serde(default)]
    limits: LimitsDocument,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum CredentialsDocument {
    /// Static credentials written in the document (tests, demos).
    Inline {
        access_key_id: String,
        secret_access_key: String,
        #[serde(default)]
        session_token: Option<String>,
    },
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` from the host's
    /// environment (Envoy: `vm_config.environment_variables`; Spin: variables).
    Environment,
    /// A Bedrock API key sent upstream as `Authorization: Bearer`, inline or from
    /// `AWS_BEARER_TOKEN_BEDROCK`.
    BedrockApiKey {
        #[serde(default)]
        api_key: Option<String>,
    },
    /// Rotating credentials from EC2's instance metadata service (IMDSv2), fetched by the host.
    InstanceMetadata {
        #[serde(default)]
        endpoint: Option<String>,
        #[serde(default)]
        cluster: Option<String>,
    },
    /// Rotating credentials from the container endpoint (ECS task roles, EKS Pod Identity).
    Container {
        #[serde(default)]
        endpoint: Option<String>,
        #[serde(default)]
        authorization_token: Option<String>,
        #[serde(default)]
        authorization_token_file: Option<String>,
        #[serde(default)]
        cluster: Option<String>,
    },
    /// Envoy's `aws_request_signing` filter, placed after Tollgate, signs.
    Envoy,
}

/// One client API key: only its SHA-256 is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub sha256: [u8; 32],
    /// Every model may be used (`*`).
    pub any_model: bool,
    /// Bedrock model IDs this key may use, after alias resolution.
    pub models: BTreeSet<String>,
    pub limits: KeyLimits,
}

impl ApiKey {
    pub fn may_use(&self, model_id: &str) -> bool {
        self.any_model || self.models.contains(model_id)
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub region: String,
    pub upstream_host: String,
    /// `https` (default) or `http` (the emulator). Hosts that open the upstream connection
    /// themselves (Spin) use it; in Envoy the cluster decides.
    pub upstream_scheme: &'static str,
    pub aliases: BTreeMap<String, String>,
    pub api_keys: Vec<ApiKey>,
    pub upstream_auth: UpstreamAuth,
    pub max_request_body_bytes: u64,
    /// Lets tests set the quota clock with `x-tollgate-test-now-ms`. Never in production.
    pub test_hooks: bool,
}

impl Config {
    /// Parses and validates `json`. `env` looks up the host's environment (or Spin variables)
    /// for credentials that live there; core never reads it itself.
    pub fn parse(json: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let doc: Document = serde_json::from_slice(json).map_err(|e| {
            // serde names unknown and missing fields itself ("unknown field `x`").
            ConfigError::new("", format!("{e}"))
        })?;
        Self::validate(doc, env)
    }

    fn validate(doc: Document, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        if !is_region(&doc.region) {
            return Err(ConfigError::new(
                "region",
                "must be an AWS region such as `us-east-1`",
            ));
        }
        let upstream_scheme = match doc.upstream_scheme.as_deref() {
            None | Some("https") => "https",
            Some("http") => "http",
            Some(_) => {
                return Err(ConfigError::new(
                    "upstream_scheme",
                    "must be `https` or `http`",
                ))
            }
        };
        let upstream_host = match doc.upstream_host {
            Some(h) if is_host(&h) => h,
            Some(_) => {
                return Err(ConfigError::new(
                    "upstream_host",
                    "must be a host name with an optional port, without a scheme or path",
                ))
            }
            None => format!("bedrock-runtime.{}.amazonaws.com", doc.region),
        };

        // Every model is kept in its canonical spelling (`model_id::canonical`), the one
        // requests are resolved to: allowlists and per-model limits match however a client
        // spells the model.
        let mut aliases = BTreeMap::new();
        for (alias, target) in &doc.aliases {
            let field = format!("aliases.{alias}");
            if !is_alias_name(alias) {
                return Err(ConfigError::new(
                    field,
                    "alias names use letters, digits, `-`, `_` and `.`",
                ));
            }
            if !model_id::is_model_id(target) {
                return Err(ConfigError::new(
                    field,
                    format!("`{target}` is not a Bedrock model ID or ARN"),
                ));
            }
            let canonical = model_id::canonical(target, &doc.region)
                .map_err(|why| ConfigError::new(&field, why))?;
            aliases.insert(alias.clone(), canonical);
        }

        if doc.api_keys.is_empty() {
            return Err(ConfigError::new("api_keys", "at least one key is needed"));
        }
        let mut ids = BTreeSet::new();
        let mut hashes = BTreeSet::new();
        let mut api_keys = Vec::with_capacity(doc.api_keys.len());
        for (i, key) in doc.api_keys.into_iter().enumerate() {
            let at = |f: &str| format!("api_keys[{i}].{f}");
            if key.id.is_empty() || key.id.len() > 128 || !key.id.bytes().all(is_id_byte) {
                return Err(ConfigError::new(
                    at("id"),
                    "1 to 128 letters, digits, `-`, `_` or `.`",
                ));
            }
            if !ids.insert(key.id.clone()) {
                return Err(ConfigError::new(
                    at("id"),
                    format!("`{}` is used by two keys", key.id),
                ));
            }
            let sha256 = parse_sha256(&key.sha256).ok_or_else(|| {
                ConfigError::new(at("sha256"), "must be 64 hex digits (SHA-256 of the key)")
            })?;
            if !hashes.insert(sha256) {
                return Err(ConfigError::new(
                    at("sha256"),
                    "two keys have the same hash",
                ));
            }
            if key.models.is_empty() {
                return Err(ConfigError::new(
                    at("models"),
                    "list the aliases or model IDs this key may use, or `*`",
                ));
            }
            let resolve = |m: &str| match aliases.get(m) {
                Some(target) => Some(target.clone()),
                None if model_id::is_model_id(m) => model_id::canonical(m, &doc.region).ok(),
                None => None,
            };
            let mut any_model = false;
            let mut models = BTreeSet::new();
            for (j, m) in key.models.iter().enumerate() {
                if m == "*" {
                    any_model = true;
                } else if let Some(target) = resolve(m) {
                    models.insert(target);
                } else {
                    return Err(ConfigError::new(
                        format!("api_keys[{i}].models[{j}]"),
                        format!("`{m}` is neither a configured alias nor a Bedrock model ID"),
                    ));
                }
            }
            let limits = key.limits.validate(&at("limits"), &resolve)?;
            api_keys.push(ApiKey {
                id: key.id,
                sha256,
                any_model,
                models,
                limits,
            });
        }

        let upstream_auth = match doc.credentials {
            CredentialsDocument::Inline {
                access_key_id,
                secret_access_key,
                session_token,
            } => {
                if access_key_id.is_empty() {
                    return Err(ConfigError::new(
                        "credentials.access_key_id",
                        "must not be empty",
                    ));
                }
                if secret_access_key.is_empty() {
                    return Err(ConfigError::new(
                        "credentials.secret_access_key",
                        "must not be empty",
                    ));
                }
                UpstreamAuth::SigV4 {
                    access_key_id,
                    secret_access_key,
                    session_token: session_token.filter(|t| !t.is_empty()),
                }
            }
            CredentialsDocument::Environment => {
                let need = |name: &str| {
                    env(name).filter(|v| !v.is_empty()).ok_or_else(|| {
                        ConfigError::new(
                            "credentials",
                            format!("type `environment` needs {name} in the host environment"),
                        )
                    })
                };
                UpstreamAuth::SigV4 {
                    access_key_id: need("AWS_ACCESS_KEY_ID")?,
                    secret_access_key: need("AWS_SECRET_ACCESS_KEY")?,
                    session_token: env("AWS_SESSION_TOKEN").filter(|v| !v.is_empty()),
                }
            }
            CredentialsDocument::BedrockApiKey { api_key } => {
                let key = api_key
                    .filter(|k| !k.is_empty())
                    .or_else(|| env("AWS_BEARER_TOKEN_BEDROCK").filter(|v| !v.is_empty()))
                    .ok_or_else(|| {
                        ConfigError::new(
                            "credentials.api_key",
                            "give the Bedrock API key inline or as AWS_BEARER_TOKEN_BEDROCK in the host environment",
                        )
                    })?;
                if !key.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(ConfigError::new(
                        "credentials.api_key",
                        "must be printable ASCII",
                    ));
                }
                UpstreamAuth::Bearer(key)
            }
            CredentialsDocument::InstanceMetadata { endpoint, cluster } => {
                UpstreamAuth::Fetched(Source::instance_metadata(endpoint, cluster, env)?)
            }
            CredentialsDocument::Container {
                endpoint,
                authorization_token,
                authorization_token_file,
                cluster,
            } => UpstreamAuth::Fetched(Source::container(
                endpoint,
                authorization_token,
                authorization_token_file,
                cluster,
                env,
            )?),
            CredentialsDocument::Envoy => UpstreamAuth::Envoy,
        };

        let max_request_body_bytes = doc
            .max_request_body_bytes
            .unwrap_or(DEFAULT_MAX_REQUEST_BODY_BYTES);
        if max_request_body_bytes == 0 || max_request_body_bytes > 64 << 20 {
            return Err(ConfigError::new(
                "max_request_body_bytes",
                "must be between 1 and 67108864",
            ));
        }

        Ok(Self {
            region: doc.region,
            upstream_host,
            upstream_scheme,
            aliases,
            api_keys,
            upstream_auth,
            max_request_body_bytes,
            test_hooks: doc.test_hooks,
        })
    }
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

fn is_alias_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(is_id_byte)
}

fn is_region(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_host(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'[' | b']'))
}

fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.trim(), &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn doc(extra: &str) -> String {
        format!(
            r#"{{"region":"us-east-1",
                "aliases":{{"claude-fast":"us.anthropic.claude-haiku-4-5-20251001-v1:0"}},
                "api_keys":[{{"id":"team-a","sha256":"{}","models":["claude-fast"]}}],
                "credentials":{{"type":"inline","access_key_id":"AKID","secret_access_key":"SECRET"}}
                {extra}}}"#,
            "ab".repeat(32)
        )
    }

    #[test]
    fn parses_a_minimal_document() {
        let c = Config::parse(doc("").as_bytes(), &no_env).unwrap();
        assert_eq!(c.upstream_host, "bedrock-runtime.us-east-1.amazonaws.com");
        assert_eq!(c.max_request_body_bytes, DEFAULT_MAX_REQUEST_BODY_BYTES);
        let key = &c.api_keys[0];
        assert!(key.may_use("us.anthropic.claude-haiku-4-5-20251001-v1:0"));
        assert!(!key.may_use("us.anthropic.claude-sonnet-4-5-20250929-v1:0"));
    }

    #[test]
    fn unknown_field_is_named() {
        let e = Config::parse(doc(r#","regoin":"x""#).as_bytes(), &no_env).unwrap_err();
        assert!(e.to_string().contains("regoin"), "{e}");
    }

    #[test]
    fn bad_hash_names_the_field() {
        let json = doc("").replace(&"ab".repeat(32), "xyz");
        let e = Config::parse(json.as_bytes(), &no_env).unwrap_err();
        assert_eq!(e.field, "api_keys[0].sha256");
    }

    #[test]
    fn unknown_model_in_allowlist_is_rejected() {
        let json = doc("").replace(r#"["claude-fast"]"#, r#"["claude-fats"]"#);
        let e = Config::parse(json.as_bytes(), &no_env).unwrap_err();
        assert_eq!(e.field, "api_keys[0].models[0]");
    }

    #[test]
    fn environment_credentials_come_from_the_host() {
        let json = doc("").replace(
            r#"{"type":"inline","access_key_id":"AKID","secret_access_key":"SECRET"}"#,
            r#"{"type":"environment"}"#,
        );
        let e = Config::parse(json.as_bytes(), &no_env).unwrap_err();
        assert!(e.message.contains("AWS_ACCESS_KEY_ID"));
        let env = |k: &str| match k {
            "AWS_ACCESS_KEY_ID" => Some("AK".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("SK".to_string()),
            "AWS_SESSION_TOKEN" => Some("TOK".to_string()),
            _ => None,
        };
        let c = Config::parse(json.as_bytes(), &env).unwrap();
        assert_eq!(
            c.upstream_auth,
            UpstreamAuth::SigV4 {
                access_key_id: "AK".into(),
                secret_access_key: "SK".into(),
                session_token: Some("TOK".into())
            }
        );
        assert!(!format!("{:?}", c.upstream_auth).contains("SK\""));
    }

    #[test]
    fn bedrock_api_key_from_environment() {
        let json = doc("").replace(
            r#"{"type":"inline","access_key_id":"AKID","secret_access_key":"SECRET"}"#,
            r#"{"type":"bedrock_api_key"}"#,
        );
        assert_eq!(
            Config::parse(json.as_bytes(), &no_env).unwrap_err().field,
            "credentials.api_key"
        );
        let env = |k: &str| (k == "AWS_BEARER_TOKEN_BEDROCK").then(|| "ABSK-test".to_string());
        let c = Config::parse(json.as_bytes(), &env).unwrap();
        assert_eq!(c.upstream_auth, UpstreamAuth::Bearer("ABSK-test".into()));
    }

    #[test]
    fn fetched_and_envoy_credentials() {
        let with = |credentials: &str| {
            doc("").replace(
                r#"{"type":"inline","access_key_id":"AKID","secret_access_key":"SECRET"}"#,
                credentials,
            )
        };
        let c = Config::parse(with(r#"{"type":"instance_metadata"}"#).as_bytes(), &no_env).unwrap();
        let UpstreamAuth::Fetched(source) = &c.upstream_auth else {
            panic!("{:?}", c.upstream_auth)
        };
        assert_eq!(
            source.describe(),
            "instance metadata at http://169.254.169.254"
        );
        let json = with(
            r#"{"type":"container","endpoint":"http://127.0.0.1:1/v1/credentials",
                "authorization_token":"pod-secret","cluster":"creds"}"#,
        );
        let c = Config::parse(json.as_bytes(), &no_env).unwrap();
        let UpstreamAuth::Fetched(source) = &c.upstream_auth else {
            panic!()
        };
        assert_eq!(source.cluster, "creds");
        assert!(!format!("{c:?}").contains("pod-secret"));
        let e = Config::parse(with(r#"{"type":"container"}"#).as_bytes(), &no_env).unwrap_err();
        assert_eq!(e.field, "credentials.endpoint");
        let e = Config::parse(
            with(r#"{"type":"instance_metadata","token":"x"}"#).as_bytes(),
            &no_env,
        )
        .unwrap_err();
        assert!(e.to_string().contains("token"), "{e}");
        let c = Config::parse(with(r#"{"type":"envoy"}"#).as_bytes(), &no_env).unwrap();
        assert_eq!(c.upstream_auth, UpstreamAuth::Envoy);
    }

    #[test]
    fn duplicate_ids_and_bad_limits_are_rejected() {
        let two = doc("").replacen(
            r#"}]"#,
            &format!(
                r#"}},{{"id":"team-a","sha256":"{}","models":["*"]}}]"#,
                "cd".repeat(32)
            ),
            1,
        );
        assert_eq!(
            Config::parse(two.as_bytes(), &no_env).unwrap_err().field,
            "api_keys[1].id"
        );
        let e =
            Config::parse(doc(r#","max_request_body_bytes":0"#).as_bytes(), &no_env).unwrap_err();
        assert_eq!(e.field, "max_request_body_bytes");
        let e = Config::parse(doc(r#","upstream_host":"https://x/y""#).as_bytes(), &no_env)
            .unwrap_err();
        assert_eq!(e.field, "upstream_host");
    }

    #[test]
    fn environment_lookups_are_only_the_listed_names() {
        let asked = std::cell::RefCell::new(Vec::new());
        let env = |k: &str| {
            asked.borrow_mut().push(k.to_string());
            Some(format!("value-of-{k}"))
        };
        for credentials in [r#"{"type":"environment"}"#, r#"{"type":"bedrock_api_key"}"#] {
            let json = doc("").replace(
                r#"{"type":"inline","access_key_id":"AKID","secret_access_key":"SECRET"}"#,
                credentials,
            );
            Config::parse(json.as_bytes(), &env).unwrap();
        }
        let asked = asked.into_inner();
        assert!(!asked.is_empty());
        for name in &asked {
            assert!(ENVIRONMENT_NAMES.contains(&name.as_str()), "{name}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for junk in [
            &b""[..],
            b"null",
            b"[]",
            b"{",
            b"\xff\xfe",
            b"{\"region\":1}",
        ] {
            assert!(Config::parse(junk, &no_env).is_err());
        }
    }
}
