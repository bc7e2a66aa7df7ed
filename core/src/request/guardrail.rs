//! A key's Bedrock guardrail: added to every request the key makes, where the operation takes
//! it — Converse's `guardrailConfig`, InvokeModel's `X-Amzn-Bedrock-GuardrailIdentifier` /
//! `-Version` / `X-Amzn-Bedrock-Trace` headers — replacing whatever guardrail the client named,
//! so a client can neither remove nor swap it.

use serde::Deserialize;

use crate::config::ConfigError;

/// The guardrail headers of InvokeModel (lowercase). A key with a guardrail sets them; the
/// client's own are dropped.
pub const HEADERS: &[&str] = &[
    "x-amzn-bedrock-guardrailidentifier",
    "x-amzn-bedrock-guardrailversion",
    "x-amzn-bedrock-trace",
];

/// Whether Bedrock returns the guardrail's trace, which carries its usage (the policy units
/// it bills).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trace {
    Enabled,
    Disabled,
    EnabledFull,
}

/// A guardrail as a key's `guardrail` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guardrail {
    pub identifier: String,
    pub version: String,
    pub trace: Trace,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GuardrailDocument {
    identifier: String,
    version: String,
    #[serde(default)]
    trace: Option<Trace>,
}

impl GuardrailDocument {
    /// Validates against Bedrock's own patterns for `guardrailIdentifier` (an ID or a guardrail
    /// ARN) and `guardrailVersion` (a number or `DRAFT`). `field`: `api_keys[i].guardrail`.
    pub(crate) fn validate(self, field: &str) -> Result<Guardrail, ConfigError> {
        if !is_identifier(&self.identifier) {
            return Err(ConfigError::new(
                format!("{field}.identifier"),
                "must be a guardrail ID (lowercase letters and digits) or a guardrail ARN",
            ));
        }
        if !is_version(&self.version) {
            return Err(ConfigError::new(
                format!("{field}.version"),
                "must be a version number (1 to 99999999) or `DRAFT`",
            ));
        }
        Ok(Guardrail {
            identifier: self.identifier,
            version: self.version,
            // Enabled by default: only the trace reports the units Bedrock bills for it.
            trace: self.trace.unwrap_or(Trace::Enabled),
        })
    }
}

fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// `[a-z0-9]+`, or `arn:aws(-…)?:bedrock:<region>:<12 digits>:guardrail/[a-z0-9]+`.
fn is_identifier(s: &str) -> bool {
    if s.len() > 2048 {
        return false;
    }
    let Some(rest) = s.strip_prefix("arn:") else {
        return is_id(s);
    };
    let parts: Vec<&str> = rest.splitn(5, ':').collect();
    let [partition, service, region, account, resource] = parts.as_slice() else {
        return false;
    };
    partition.starts_with("aws")
        && *service == "bedrock"
        && (1..=20).contains(&region.len())
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && resource.strip_prefix("guardrail/").is_some_and(is_id)
}

fn is_version(s: &str) -> bool {
    s == "DRAFT"
        || (!s.is_empty()
            && s.len() <= 8
            && !s.starts_with('0')
            && s.bytes().all(|b| b.is_ascii_digit()))
}

impl Guardrail {
    /// Converse's `guardrailConfig` value for this guardrail (JSON).
    pub fn converse_config(&self) -> String {
        let trace = match self.trace {
            Trace::Enabled => "enabled",
            Trace::Disabled => "disabled",
            Trace::EnabledFull => "enabled_full",
        };
        // Identifier and version are validated: nothing in them needs escaping.
        format!(
            r#"{{"guardrailIdentifier":"{}","guardrailVersion":"{}","trace":"{trace}"}}"#,
            self.identifier, self.version
        )
    }

    /// InvokeModel's guardrail headers for this guardrail.
    pub fn invoke_headers(&self) -> Vec<(String, String)> {
        let trace = match self.trace {
            Trace::Enabled => "ENABLED",
            Trace::Disabled => "DISABLED",
            Trace::EnabledFull => "ENABLED_FULL",
        };
        vec![
            (HEADERS[0].to_string(), self.identifier.clone()),
            (HEADERS[1].to_string(), self.version.clone()),
            (HEADERS[2].to_string(), trace.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(identifier: &str, version: &str, trace: Option<Trace>) -> GuardrailDocument {
        GuardrailDocument {
            identifier: identifier.into(),
            version: version.into(),
            trace,
        }
    }

    #[test]
    fn identifiers_and_versions_follow_bedrocks_patterns() {
        for id in [
            "gr0abc123",
            "arn:aws:bedrock:us-east-1:123456789012:guardrail/abc123",
            "arn:aws-us-gov:bedrock:us-gov-west-1:123456789012:guardrail/x1",
        ] {
            assert!(doc(id, "1", None).validate("g").is_ok(), "{id}");
        }
        for id in [
            "",
            "Abc",
            "a-b",
            "arn:aws:bedrock:us-east-1:123:guardrail/abc",
            "arn:aws:s3:us-east-1:123456789012:guardrail/abc",
            "arn:aws:bedrock:us-east-1:123456789012:agent/abc",
        ] {
            let e = doc(id, "1", None)
                .validate("api_keys[0].guardrail")
                .unwrap_err();
            assert_eq!(e.field, "api_keys[0].guardrail.identifier", "{id}");
        }
        for v in ["1", "12345678", "DRAFT"] {
            assert!(doc("g", v, None).validate("g").is_ok(), "{v}");
        }
        for v in ["", "0", "01", "123456789", "draft", "1.0"] {
            let e = doc("g", v, None)
                .validate("api_keys[0].guardrail")
                .unwrap_err();
            assert_eq!(e.field, "api_keys[0].guardrail.version", "{v}");
        }
    }

    #[test]
    fn converse_config_and_invoke_headers() {
        let g = doc("gr1", "DRAFT", None).validate("g").unwrap();
        assert_eq!(g.trace, Trace::Enabled);
        assert_eq!(
            g.converse_config(),
            r#"{"guardrailIdentifier":"gr1","guardrailVersion":"DRAFT","trace":"enabled"}"#
        );
        let g = doc("gr1", "3", Some(Trace::Disabled))
            .validate("g")
            .unwrap();
        assert_eq!(
            g.invoke_headers(),
            [
                (
                    "x-amzn-bedrock-guardrailidentifier".to_string(),
                    "gr1".to_string()
                ),
                ("x-amzn-bedrock-guardrailversion".into(), "3".into()),
                ("x-amzn-bedrock-trace".into(), "DISABLED".into()),
            ]
        );
    }
}
