//! Callers known without an API key: workloads by the principal of their mTLS certificate (a
//! SPIFFE ID), people by the claims of a JWT their identity provider issued. A key entry names
//! them; the host establishes them (Envoy: the peer certificate its listener verified, the
//! claims its `jwt_authn` filter verified) and `request::identity` matches them to entries.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::ConfigError;

/// Who a key entry stands for besides (or instead of) its key hash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identities {
    /// URI SANs of client certificates (SPIFFE IDs), compared exactly.
    pub principals: Vec<String>,
    /// Verified JWT claims, each with its issuer.
    pub jwt: Vec<JwtMatch>,
}

impl Identities {
    pub fn is_empty(&self) -> bool {
        self.principals.is_empty() && self.jwt.is_empty()
    }
}

/// One claim of a token from one issuer that identifies a caller.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct JwtMatch {
    /// `iss`, exactly as the identity provider writes it.
    pub issuer: String,
    pub claim: JwtClaim,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum JwtClaim {
    /// `sub`: one person (or service account) of the issuer.
    Subject(String),
    /// `email` (not when the token says `"email_verified": false`).
    Email(String),
    /// One of the names in `groups`.
    Group(String),
}

impl JwtClaim {
    /// Precedence when several entries match one token: the person before their groups.
    pub(crate) fn rank(&self) -> u8 {
        match self {
            Self::Subject(_) => 0,
            Self::Email(_) => 1,
            Self::Group(_) => 2,
        }
    }
}

/// The identity settings of the whole document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityConfig {
    /// Principals of front proxies whose `x-forwarded-client-cert` names the caller. Anyone
    /// else's is ignored.
    pub trusted_proxies: BTreeSet<String>,
    /// Issuers some entry names: where a host looks for verified claims (Envoy's `jwt_authn`
    /// `payload_in_metadata`, one per issuer).
    pub issuers: Vec<String>,
    /// Some entry names a principal, or a proxy is trusted: the host reads the peer certificate.
    pub reads_peer: bool,
}

/// A key entry's `jwt[]` item as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JwtDocument {
    issuer: String,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    group: Option<String>,
}

impl JwtDocument {
    pub(crate) fn validate(self, field: &str) -> Result<JwtMatch, ConfigError> {
        if !is_claim_value(&self.issuer) {
            return Err(ConfigError::new(
                format!("{field}.issuer"),
                "the token issuer (`iss`), 1 to 1024 printable characters",
            ));
        }
        let claim = match (self.subject, self.email, self.group) {
            (Some(s), None, None) => JwtClaim::Subject(s),
            (None, Some(e), None) => JwtClaim::Email(e),
            (None, None, Some(g)) => JwtClaim::Group(g),
            _ => {
                return Err(ConfigError::new(
                    field,
                    "name exactly one of `subject`, `email` or `group`",
                ))
            }
        };
        let (JwtClaim::Subject(v) | JwtClaim::Email(v) | JwtClaim::Group(v)) = &claim;
        if !is_claim_value(v) {
            return Err(ConfigError::new(
                field,
                "claim values are 1 to 1024 printable characters",
            ));
        }
        Ok(JwtMatch {
            issuer: self.issuer,
            claim,
        })
    }
}

fn is_claim_value(s: &str) -> bool {
    !s.is_empty() && s.len() <= 1024 && !s.chars().any(char::is_control)
}

/// A principal as a certificate's URI SAN carries it (`spiffe://trust-domain/path`): a URI with
/// a scheme, without the characters `x-forwarded-client-cert` uses to separate its fields.
pub(crate) fn validate_principal(s: &str, field: &str) -> Result<(), ConfigError> {
    let scheme_ok = s.split_once("://").is_some_and(|(scheme, rest)| {
        !scheme.is_empty()
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
            && !rest.is_empty()
    });
    if !scheme_ok
        || s.len() > 2048
        || !s
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b',' | b';' | b'"' | b'\\'))
    {
        return Err(ConfigError::new(
            field,
            "a URI SAN such as `spiffe://cluster.local/ns/team-a/sa/agent` (no spaces, `,`, `;`, `\"` or `\\`)",
        ));
    }
    Ok(())
}

/// Checks the identities of every entry together (each principal and each claim names one
/// entry; a trusted proxy is never a caller) and derives what hosts need to read.
pub(crate) fn settle<'a>(
    trusted_proxies: Vec<String>,
    entries: impl Iterator<Item = (usize, &'a Identities)>,
) -> Result<IdentityConfig, ConfigError> {
    let mut trusted = BTreeSet::new();
    for (i, p) in trusted_proxies.into_iter().enumerate() {
        validate_principal(&p, &format!("trusted_proxies[{i}]"))?;
        trusted.insert(p);
    }
    let mut principals = BTreeMap::new();
    let mut claims = BTreeMap::new();
    let mut issuers = Vec::new();
    for (i, ids) in entries {
        for (j, p) in ids.principals.iter().enumerate() {
            let field = format!("api_keys[{i}].principals[{j}]");
            if trusted.contains(p) {
                return Err(ConfigError::new(
                    field,
                    format!("`{p}` is a trusted proxy: it forwards callers, it is not one"),
                ));
            }
            if let Some(other) = principals.insert(p.clone(), i) {
                return Err(ConfigError::new(
                    field,
                    format!("`{p}` is also named by api_keys[{other}]"),
                ));
            }
        }
        for (j, m) in ids.jwt.iter().enumerate() {
            if let Some(other) = claims.insert(m.clone(), i) {
                return Err(ConfigError::new(
                    format!("api_keys[{i}].jwt[{j}]"),
                    format!("the same claim of the same issuer is also named by api_keys[{other}]"),
                ));
            }
            if !issuers.contains(&m.issuer) {
                issuers.push(m.issuer.clone());
            }
        }
    }
    Ok(IdentityConfig {
        reads_peer: !principals.is_empty() || !trusted.is_empty(),
        trusted_proxies: trusted,
        issuers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_are_uris_without_xfcc_separators() {
        for good in [
            "spiffe://cluster.local/ns/team-a/sa/agent",
            "spiffe://example.org/x",
        ] {
            validate_principal(good, "p").unwrap();
        }
        for bad in [
            "",
            "team-a",
            "spiffe://",
            "://x",
            "spiffe://a b",
            "spiffe://a;URI=spiffe://b",
            "spiffe://a,b",
            "spiffe://\"a\"",
        ] {
            assert!(validate_principal(bad, "p").is_err(), "{bad}");
        }
    }

    #[test]
    fn a_jwt_entry_names_one_claim() {
        let doc = |v: serde_json::Value| serde_json::from_value::<JwtDocument>(v).unwrap();
        let m = doc(serde_json::json!({"issuer": "https://idp", "email": "a@x"}))
            .validate("f")
            .unwrap();
        assert_eq!(m.claim, JwtClaim::Email("a@x".into()));
        let e = doc(serde_json::json!({"issuer": "https://idp", "email": "a@x", "group": "g"}))
            .validate("f")
            .unwrap_err();
        assert!(e.message.contains("exactly one"));
        assert!(doc(serde_json::json!({"issuer": "", "subject": "s"}))
            .validate("f")
            .is_err());
        assert!(serde_json::from_value::<JwtDocument>(
            serde_json::json!({"issuer": "i", "sub": "s"})
        )
        .is_err());
    }

    #[test]
    fn each_identity_names_one_entry_and_proxies_are_not_callers() {
        let a = Identities {
            principals: vec!["spiffe://t/a".into()],
            jwt: vec![JwtMatch {
                issuer: "https://idp".into(),
                claim: JwtClaim::Group("ml".into()),
            }],
        };
        let settled = settle(vec![], [(0, &a)].into_iter()).unwrap();
        assert!(settled.reads_peer);
        assert_eq!(settled.issuers, ["https://idp"]);
        let e = settle(vec![], [(0, &a), (1, &a)].into_iter()).unwrap_err();
        assert_eq!(e.field, "api_keys[1].principals[0]");
        let e = settle(vec!["spiffe://t/a".into()], [(0, &a)].into_iter()).unwrap_err();
        assert!(e.message.contains("trusted proxy"), "{e}");
        let none = settle(vec![], std::iter::empty()).unwrap();
        assert!(!none.reads_peer && none.issuers.is_empty());
    }
}
