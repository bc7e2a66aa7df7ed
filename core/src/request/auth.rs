//! Client authentication: API keys, stored only as SHA-256 hashes.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ApiKey;
use crate::error::{ErrorKind, GatewayError};

/// What the request's own headers say about its caller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Presented<'a> {
    /// `Authorization: Bearer <key>` (what boto3 sends by itself when
    /// `AWS_BEARER_TOKEN_BEDROCK` is set, and what the OpenAI SDK sends) or `x-api-key` (the
    /// Anthropic SDK).
    pub key: Option<&'a str>,
    /// An AWS SigV4 `authorization`: an AWS SDK signing with its own credentials.
    pub sigv4: bool,
}

/// Reads the caller's key, if any, from `headers` (lowercase names, as both hosts give them).
/// Two different keys are refused: which one would the request be billed to? Neither.
pub fn presented<'a>(headers: &[(&'a str, &'a str)]) -> Result<Presented<'a>, GatewayError> {
    let mut out = Presented::default();
    for &(name, value) in headers {
        let key = match name {
            "authorization" => {
                let value = value.trim();
                match value.split_once(' ') {
                    Some((scheme, token))
                        if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
                    {
                        token.trim()
                    }
                    Some((scheme, _)) => {
                        out.sigv4 |= scheme.starts_with("AWS4-");
                        continue;
                    }
                    None => continue,
                }
            }
            "x-api-key" if !value.trim().is_empty() => value.trim(),
            _ => continue,
        };
        match out.key {
            Some(first) if first != key => {
                return Err(GatewayError::new(
                    ErrorKind::UnknownKey,
                    "two different API keys were presented (`Authorization` and `x-api-key`, or one of them twice): send one",
                ))
            }
            _ => out.key = Some(key),
        }
    }
    Ok(out)
}

/// The key the client presented, or why there is none.
pub fn presented_key<'a>(headers: &[(&'a str, &'a str)]) -> Result<&'a str, GatewayError> {
    let found = presented(headers)?;
    found.key.ok_or_else(|| missing_key(found.sigv4))
}

/// No key, and no identity that names an entry.
pub(crate) fn missing_key(saw_sigv4: bool) -> GatewayError {
    GatewayError::new(
        ErrorKind::MissingKey,
        if saw_sigv4 {
            "this gateway does not accept AWS SigV4 credentials: send your Tollgate API key as \
             `Authorization: Bearer <key>` (for boto3, set AWS_BEARER_TOKEN_BEDROCK)"
        } else {
            "missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`"
        },
    )
}

pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Finds the configured key whose hash matches. Every hash is compared, in constant time, so
/// timing tells nothing about which (if any) key came close.
pub fn authenticate<'k>(
    keys: &'k [Arc<ApiKey>],
    presented: &str,
) -> Result<&'k Arc<ApiKey>, GatewayError> {
    find(keys, &hash_key(presented)).ok_or_else(unknown_key)
}

/// The configured key with this hash (constant time in which key matches).
pub(crate) fn find<'k>(keys: &'k [Arc<ApiKey>], digest: &[u8; 32]) -> Option<&'k Arc<ApiKey>> {
    let mut found = None;
    for key in keys {
        if let Some(sha256) = &key.sha256 {
            if bool::from(sha256.ct_eq(digest)) {
                found = Some(key);
            }
        }
    }
    found
}

pub(crate) fn unknown_key() -> GatewayError {
    GatewayError::new(ErrorKind::UnknownKey, "the API key is not valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn key(id: &str, secret: &str) -> Arc<ApiKey> {
        Arc::new(ApiKey {
            id: id.into(),
            sha256: Some(hash_key(secret)),
            identities: Default::default(),
            any_model: true,
            models: BTreeSet::new(),
            limits: Default::default(),
            guardrail: None,
        })
    }

    #[test]
    fn bearer_and_x_api_key() {
        assert_eq!(
            presented_key(&[("authorization", "Bearer tg-123")]).unwrap(),
            "tg-123"
        );
        assert_eq!(
            presented_key(&[("authorization", "bearer  tg-123 ")]).unwrap(),
            "tg-123"
        );
        assert_eq!(presented_key(&[("x-api-key", "tg-9")]).unwrap(), "tg-9");
    }

    #[test]
    fn missing_or_sigv4_is_401_with_a_hint() {
        let e = presented_key(&[("content-type", "application/json")]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::MissingKey);
        let e =
            presented_key(&[("authorization", "AWS4-HMAC-SHA256 Credential=AK/…")]).unwrap_err();
        assert!(e.message.contains("AWS_BEARER_TOKEN_BEDROCK"));
        assert_eq!(
            presented_key(&[("authorization", "Bearer ")])
                .unwrap_err()
                .kind,
            ErrorKind::MissingKey
        );
    }

    /// A request that presents two different keys (`authorization` and `x-api-key`, or the
    /// header twice) is refused: which one would it be billed to? Before, the first one won, so
    /// a proxy adding its own key after the client's could be bypassed (or the reverse).
    #[test]
    fn two_different_keys_are_refused() {
        for headers in [
            &[("authorization", "Bearer tg-a"), ("x-api-key", "tg-b")][..],
            &[("x-api-key", "tg-b"), ("authorization", "Bearer tg-a")][..],
            &[
                ("authorization", "Bearer tg-a"),
                ("authorization", "Bearer tg-b"),
            ][..],
        ] {
            let e = presented_key(headers).unwrap_err();
            assert_eq!(e.kind, ErrorKind::UnknownKey, "{headers:?}");
        }
        // The same key twice is that key.
        assert_eq!(
            presented_key(&[("authorization", "Bearer tg-a"), ("x-api-key", " tg-a")]).unwrap(),
            "tg-a"
        );
    }

    #[test]
    fn hash_is_sha256_of_the_key() {
        // echo -n tg-test-key | sha256sum
        assert_eq!(
            hex::encode(hash_key("tg-test-key")),
            "2173a168026e43858e02309abd5271d237acfab8d94155cea0998b02252b5544"
        );
    }

    #[test]
    fn finds_the_matching_key_only() {
        let keys = [key("a", "secret-a"), key("b", "secret-b")];
        assert_eq!(authenticate(&keys, "secret-b").unwrap().id, "b");
        assert_eq!(
            authenticate(&keys, "secret-c").unwrap_err().kind,
            ErrorKind::UnknownKey
        );
    }
}
