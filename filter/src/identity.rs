//! What Envoy verified about the caller, read from its attributes for core's
//! `request::identity`: the URI SAN of the client certificate the listener verified, and the
//! claims `jwt_authn` verified (its `payload_in_metadata`, keyed by the issuer as Istio's
//! RequestAuthentication keys it) or why it refused a token (`failed_status_in_metadata:
//! jwt_failure`). Dynamic metadata is Envoy's own: a client cannot write it, unlike a header.
//!
//! Attributes are read only when the document needs them, with the `Result`-returning host
//! call; whatever Envoy returns is decoded without a panic.

use proxy_wasm::hostcalls;
use tollgate_core::config::Config;
use tollgate_core::exchange::{Caller, VerifiedToken};

/// The namespace `jwt_authn` writes its dynamic metadata under.
const JWT_AUTHN: &str = "envoy.filters.http.jwt_authn";
/// The key of `jwt_authn`'s `failed_status_in_metadata` that Tollgate reads.
pub const JWT_FAILURE: &str = "jwt_failure";
/// jwt_authn's message when the request carried no token (`Status::JwtMissed`): no refusal.
const JWT_MISSING: &str = "Jwt is missing";

/// The caller as Envoy knows it; nothing is read for a document without identities.
pub fn caller(config: &Config) -> Option<Caller> {
    let identity = &config.identity;
    if !identity.reads_peer && identity.issuers.is_empty() {
        return None;
    }
    let mut caller = Caller::default();
    if identity.reads_peer {
        caller.peer = property(&["connection", "uri_san_peer_certificate"])
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|p| !p.is_empty());
    }
    if !identity.issuers.is_empty() {
        for issuer in &identity.issuers {
            if let Some(map) = property(&["metadata", "filter_metadata", JWT_AUTHN, issuer]) {
                if let Some(token) = token(issuer, &map) {
                    caller.tokens.push(token);
                }
            }
        }
        caller.token_refused = property(&[
            "metadata",
            "filter_metadata",
            JWT_AUTHN,
            JWT_FAILURE,
            "message",
        ])
        .map(|m| String::from_utf8_lossy(&m).into_owned())
        .filter(|m| m != JWT_MISSING && !m.is_empty());
    }
    Some(caller)
}

fn property(path: &[&str]) -> Option<Vec<u8>> {
    match hostcalls::get_property(path.to_vec()) {
        Ok(Some(bytes)) => Some(bytes),
        _ => None,
    }
}

/// A verified payload, as Envoy serializes a map attribute: proxy-wasm pairs of claim name and
/// value (a string as its bytes, a bool as one byte, a list as pairs of its elements). Its
/// `iss` must be the issuer it is filed under.
pub fn token(issuer: &str, payload: &[u8]) -> Option<VerifiedToken> {
    let claims = pairs(payload)?;
    let text = |name: &str| {
        claims
            .iter()
            .find(|(k, _)| *k == name.as_bytes())
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .map(str::to_string)
    };
    if text("iss").as_deref() != Some(issuer) {
        return None;
    }
    let email_verified = claims
        .iter()
        .find(|(k, _)| *k == b"email_verified")
        .and_then(|(_, v)| match v {
            [0] => Some(false),
            [1] => Some(true),
            _ => None,
        });
    let groups = claims
        .iter()
        .find(|(k, _)| *k == b"groups")
        .and_then(|(_, v)| pairs(v))
        .map(|items| {
            items
                .into_iter()
                .filter_map(|(g, _)| String::from_utf8(g.to_vec()).ok())
                .collect()
        })
        .unwrap_or_default();
    Some(VerifiedToken {
        issuer: issuer.to_string(),
        subject: text("sub"),
        email: text("email"),
        email_verified,
        groups,
    })
}

/// Decodes proxy-wasm's pairs: a u32 count, then each pair's two u32 sizes, then each key and
/// value followed by a NUL (all little-endian). `None` for anything else.
pub fn pairs(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let u32_at = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(<[u8; 4]>::try_from(b).ok()?) as usize)
    };
    let count = u32_at(0)?;
    let mut sizes_at = 4usize;
    let mut data_at = count.checked_mul(8)?.checked_add(4)?;
    if data_at > bytes.len() {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let key_len = u32_at(sizes_at)?;
        let value_len = u32_at(sizes_at.checked_add(4)?)?;
        sizes_at = sizes_at.checked_add(8)?;
        let key = bytes.get(data_at..data_at.checked_add(key_len)?)?;
        data_at = data_at.checked_add(key_len)?.checked_add(1)?;
        let value = bytes.get(data_at..data_at.checked_add(value_len)?)?;
        data_at = data_at.checked_add(value_len)?.checked_add(1)?;
        out.push((key, value));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            out.extend((k.len() as u32).to_le_bytes());
            out.extend((v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend(*k);
            out.push(0);
            out.extend(*v);
            out.push(0);
        }
        out
    }

    #[test]
    fn a_payload_map_gives_its_claims() {
        let groups = encode(&[(b"ml", b""), (b"eng", b"")]);
        let payload = encode(&[
            (b"iss", b"https://idp"),
            (b"sub", b"00u1"),
            (b"email", b"a@x"),
            (b"email_verified", &[0]),
            (b"groups", &groups),
            (b"exp", &1.0f64.to_le_bytes()),
        ]);
        let t = token("https://idp", &payload).unwrap();
        assert_eq!(t.subject.as_deref(), Some("00u1"));
        assert_eq!(t.email_verified, Some(false));
        assert_eq!(t.groups, ["ml", "eng"]);
        // Filed under another issuer than its own `iss`: not believed.
        assert!(token("https://other", &payload).is_none());
    }

    #[test]
    fn garbage_decodes_to_nothing() {
        let good = encode(&[(b"iss", b"i")]);
        for n in 0..good.len() {
            let _ = pairs(&good[..n]);
        }
        for junk in [
            &b""[..],
            &[255, 255, 255, 255],
            &[1, 0, 0, 0, 255, 255, 255, 255, 0, 0, 0, 0],
        ] {
            assert!(pairs(junk).is_none());
        }
        assert_eq!(pairs(&good).unwrap(), vec![(&b"iss"[..], &b"i"[..])]);
    }
}
