//! Key entries: who may call (a key's hash, mTLS principals, JWT claims), which models, under
//! which limits. The document's `api_keys[]` and the keys created at runtime (`crate::admin`)
//! are validated here alike.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::identity::{self, Identities, JwtDocument};
use super::{ApiKey, ConfigError};
use crate::quota::limits::LimitsDocument;
use crate::request::guardrail::GuardrailDocument;
use crate::request::model_id;
use crate::routing::targets::{self, Targets};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyDocument {
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) sha256: Option<String>,
    #[serde(default)]
    pub(crate) principals: Vec<String>,
    #[serde(default)]
    pub(crate) jwt: Vec<JwtDocument>,
    pub(crate) models: Vec<String>,
    #[serde(default)]
    pub(crate) limits: LimitsDocument,
    #[serde(default)]
    pub(crate) guardrail: Option<GuardrailDocument>,
}

/// An `admin_keys[]` entry: the admin API's keys (Spin), never API keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminKeyDocument {
    id: String,
    sha256: String,
}

/// A key of the admin API: only its hash is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminKey {
    pub id: String,
    pub sha256: [u8; 32],
}

/// Key ids are labels in records, metrics and store keys.
pub(crate) fn is_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

pub(crate) fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.trim(), &mut out).ok()?;
    Some(out)
}

impl KeyDocument {
    /// Validates one entry on its own; `field` is its path (`api_keys[3]`). `aliases` (of one
    /// model, already canonical) and `several` (aliases of several targets) are the document's.
    pub(crate) fn validate(
        self,
        field: &str,
        aliases: &BTreeMap<String, String>,
        several: &BTreeMap<String, Targets>,
        region: &str,
    ) -> Result<ApiKey, ConfigError> {
        let at = |f: &str| format!("{field}.{f}");
        if !is_key_id(&self.id) {
            return Err(ConfigError::new(
                at("id"),
                "1 to 128 letters, digits, `-`, `_` or `.`",
            ));
        }
        let sha256 = match &self.sha256 {
            None => None,
            Some(s) => Some(parse_sha256(s).ok_or_else(|| {
                ConfigError::new(at("sha256"), "must be 64 hex digits (SHA-256 of the key)")
            })?),
        };
        for (j, p) in self.principals.iter().enumerate() {
            identity::validate_principal(p, &format!("{field}.principals[{j}]"))?;
        }
        let jwt = self
            .jwt
            .into_iter()
            .enumerate()
            .map(|(j, m)| m.validate(&format!("{field}.jwt[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let identities = Identities {
            principals: self.principals,
            jwt,
        };
        if sha256.is_none() && identities.is_empty() {
            return Err(ConfigError::new(
                field,
                "name how the caller is known: `sha256` (a key), `principals` (mTLS) or `jwt` (identity provider)",
            ));
        }
        if self.models.is_empty() {
            return Err(ConfigError::new(
                at("models"),
                "list the aliases or model IDs this key may use, or `*`",
            ));
        }
        let resolve = |m: &str| match aliases.get(m) {
            Some(target) => Some(target.clone()),
            None if several.contains_key(m) => Some(targets::key_of(m)),
            None if model_id::is_model_id(m) => model_id::canonical(m, region).ok(),
            None => None,
        };
        let mut any_model = false;
        let mut models = BTreeSet::new();
        for (j, m) in self.models.iter().enumerate() {
            if m == "*" {
                any_model = true;
            } else if let Some(target) = resolve(m) {
                models.insert(target);
            } else {
                return Err(ConfigError::new(
                    format!("{field}.models[{j}]"),
                    format!("`{m}` is neither a configured alias nor a Bedrock model ID"),
                ));
            }
        }
        let limits = self.limits.validate(&at("limits"), &resolve)?;
        let guardrail = self
            .guardrail
            .map(|g| g.validate(&at("guardrail")))
            .transpose()?;
        Ok(ApiKey {
            id: self.id,
            sha256,
            identities,
            any_model,
            models,
            limits,
            guardrail,
        })
    }
}

/// Validates `admin_keys`: ids and hashes unique, and no admin key is also an API key (an admin
/// key must never reach a model, nor an API key the admin API).
pub(crate) fn admin_keys(
    docs: Vec<AdminKeyDocument>,
    api_keys: &[std::sync::Arc<ApiKey>],
) -> Result<Vec<AdminKey>, ConfigError> {
    let mut out: Vec<AdminKey> = Vec::with_capacity(docs.len());
    for (i, doc) in docs.into_iter().enumerate() {
        let at = |f: &str| format!("admin_keys[{i}].{f}");
        if !is_key_id(&doc.id) {
            return Err(ConfigError::new(
                at("id"),
                "1 to 128 letters, digits, `-`, `_` or `.`",
            ));
        }
        let sha256 = parse_sha256(&doc.sha256).ok_or_else(|| {
            ConfigError::new(at("sha256"), "must be 64 hex digits (SHA-256 of the key)")
        })?;
        if out.iter().any(|k| k.id == doc.id || k.sha256 == sha256) {
            return Err(ConfigError::new(
                at("id"),
                "two admin keys have the same id or hash",
            ));
        }
        if api_keys.iter().any(|k| k.sha256 == Some(sha256)) {
            return Err(ConfigError::new(
                at("sha256"),
                "an admin key must not also be an API key",
            ));
        }
        out.push(AdminKey { id: doc.id, sha256 });
    }
    Ok(out)
}
