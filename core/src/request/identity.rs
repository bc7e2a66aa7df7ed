//! Who is calling: the key entry a request is admitted under, from its API key or, without one,
//! from what the host verified about the caller (the peer certificate's principal, a JWT's
//! claims). The rules, in order:
//!
//! 1. A presented key (`Authorization: Bearer`, `x-api-key`) decides alone: the configured key
//!    with its hash, else a key created at runtime (`crate::admin`), else 401. A workload's own
//!    AWS SigV4 `authorization` is no key: the request goes on to 3 and Tollgate signs with its
//!    own credentials.
//! 2. A token the host's JWT verification refused (Envoy's `jwt_authn`, which then leaves the
//!    token in place) is 401 with its reason, unless the bearer token was a valid API key (1).
//! 3. Identities, most specific first: a verified token's subject, email, group (one of
//!    `groups`), then the connection's principal. Of several entries matching at one rank, the
//!    first in the document wins.
//! 4. Nothing: 401.
//!
//! The principal is the peer certificate's URI SAN, unless that peer is a trusted proxy: then
//! it is the one its `x-forwarded-client-cert` names (its last element, the one that proxy
//! added), and never the proxy's own. Anyone else's `x-forwarded-client-cert` is ignored.

use std::sync::Arc;

use crate::admin::keys::RuntimeKeys;
use crate::config::{ApiKey, Config, JwtClaim};
use crate::error::{ErrorKind, GatewayError};
use crate::request::auth;

/// What the host verified about the caller, beyond the request's headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The URI SAN of the client certificate the listener verified (Envoy:
    /// `connection.uri_san_peer_certificate`).
    pub peer: Option<String>,
    /// Tokens the host verified, one per issuer.
    pub tokens: Vec<VerifiedToken>,
    /// Why the host's verification refused a token the request carried.
    pub token_refused: Option<String>,
}

/// The claims of a verified JWT that can identify a caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifiedToken {
    /// `iss`
    pub issuer: String,
    /// `sub`
    pub subject: Option<String>,
    /// `email`
    pub email: Option<String>,
    /// `email_verified`, when the token has it.
    pub email_verified: Option<bool>,
    /// `groups`
    pub groups: Vec<String>,
}

/// Where admission looks for the caller besides the configured keys.
#[derive(Default, Clone, Copy)]
pub struct Callers<'a> {
    pub caller: Option<&'a Caller>,
    /// Keys created at runtime, when the host keeps them (Spin's store).
    pub runtime_keys: Option<&'a dyn RuntimeKeys>,
}

/// The entry the request is admitted under (see the module's rules).
pub fn authenticate(
    config: &Config,
    headers: &[(&str, &str)],
    callers: Callers<'_>,
) -> Result<Arc<ApiKey>, GatewayError> {
    let nobody = Caller::default();
    let caller = callers.caller.unwrap_or(&nobody);
    let presented = auth::presented(headers)?;
    let refused = caller.token_refused.as_deref();
    if let Some(key) = presented.key {
        let digest = auth::hash_key(key);
        if let Some(found) = auth::find(&config.api_keys, &digest) {
            return Ok(found.clone());
        }
        if let (Some(store), false) = (callers.runtime_keys, config.admin_keys.is_empty()) {
            if let Some(found) = store.find(config, &digest)? {
                return Ok(Arc::new(found));
            }
        }
        return Err(refused.map_or_else(auth::unknown_key, token_refused));
    }
    if let Some(why) = refused {
        return Err(token_refused(why));
    }
    match identify(config, caller, headers) {
        Identified::Key(key) => Ok(key.clone()),
        Identified::Unknown(who) => Err(GatewayError::new(
            ErrorKind::UnknownKey,
            format!("no key is configured for {who}"),
        )),
        Identified::Nobody => Err(auth::missing_key(presented.sigv4)),
    }
}

fn token_refused(why: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::UnknownKey,
        format!("the bearer token is neither a valid API key nor a valid identity token ({why})"),
    )
}

enum Identified<'k> {
    Key(&'k Arc<ApiKey>),
    /// An identity no entry names, described for the caller.
    Unknown(String),
    Nobody,
}

fn identify<'k>(config: &'k Config, caller: &Caller, headers: &[(&str, &str)]) -> Identified<'k> {
    let mut unknown = None;
    for token in &caller.tokens {
        // One pass per rank, so a person's own entry beats their group's wherever it is.
        for rank in 0..3u8 {
            let hit = config.api_keys.iter().find(|k| {
                k.identities
                    .jwt
                    .iter()
                    .any(|m| m.claim.rank() == rank && token_matches(token, &m.issuer, &m.claim))
            });
            if let Some(key) = hit {
                return Identified::Key(key);
            }
        }
        unknown.get_or_insert_with(|| describe_token(token));
    }
    if let Some((principal, via)) = principal(config, caller, headers) {
        if let Some(key) = config
            .api_keys
            .iter()
            .find(|k| k.identities.principals.contains(&principal))
        {
            return Identified::Key(key);
        }
        unknown.get_or_insert_with(|| match via {
            Some(proxy) => format!("`{principal}` (forwarded by `{proxy}`)"),
            None => format!("the client certificate `{principal}`"),
        });
    }
    unknown.map_or(Identified::Nobody, Identified::Unknown)
}

fn token_matches(token: &VerifiedToken, issuer: &str, claim: &JwtClaim) -> bool {
    if token.issuer != issuer {
        return false;
    }
    match claim {
        JwtClaim::Subject(s) => token.subject.as_deref() == Some(s),
        JwtClaim::Email(e) => {
            token.email_verified != Some(false) && token.email.as_deref() == Some(e)
        }
        JwtClaim::Group(g) => token.groups.iter().any(|have| have == g),
    }
}

fn describe_token(token: &VerifiedToken) -> String {
    let who = match (&token.subject, &token.email) {
        (Some(s), _) => format!("subject `{s}`"),
        (None, Some(e)) => format!("email `{e}`"),
        (None, None) => "no subject".to_string(),
    };
    format!("the identity token of `{}` ({who})", token.issuer)
}

/// The caller's principal, and the trusted proxy that forwarded it, if one did.
fn principal<'a>(
    config: &Config,
    caller: &'a Caller,
    headers: &[(&'a str, &'a str)],
) -> Option<(String, Option<&'a str>)> {
    let peer = caller.peer.as_deref().filter(|p| !p.is_empty())?;
    if !config.identity.trusted_proxies.contains(peer) {
        return Some((peer.to_string(), None));
    }
    // The last element of the last header line: the one the proxy added.
    let forwarded = headers
        .iter()
        .rev()
        .find(|(n, _)| *n == "x-forwarded-client-cert")
        .and_then(|(_, v)| forwarded_principal(v))?;
    Some((forwarded, Some(peer)))
}

/// The URI of the last element of an `x-forwarded-client-cert` value: the client the nearest
/// proxy saw. Elements are separated by `,` and fields by `;`, outside double quotes; a quoted
/// value may escape `"` with `\`.
pub fn forwarded_principal(xfcc: &str) -> Option<String> {
    let elements = split_unquoted(xfcc, ',');
    let last = elements.last()?;
    split_unquoted(last, ';').into_iter().find_map(|field| {
        let (name, value) = field.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("uri")
            .then(|| unquote(value.trim()))
            .filter(|v| !v.is_empty())
    })
}

fn split_unquoted(s: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(s.get(start..i).unwrap_or(""));
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(s.get(start..).unwrap_or(""));
    parts
}

fn unquote(v: &str) -> String {
    let Some(inner) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return v.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut escaped = false;
    for c in inner.chars() {
        if c == '\\' && !escaped {
            escaped = true;
        } else {
            out.push(c);
            escaped = false;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let doc = format!(
            r#"{{"region":"us-east-1",
                "api_keys":[
                  {{"id":"keyed","sha256":"{}","models":["*"]}},
                  {{"id":"agent-a","principals":["spiffe://t/ns/a/sa/agent"],"models":["*"]}},
                  {{"id":"agent-b","principals":["spiffe://t/ns/b/sa/agent"],"models":["*"]}},
                  {{"id":"ml","jwt":[{{"issuer":"https://idp","group":"ml"}}],"models":["*"]}},
                  {{"id":"alice","jwt":[{{"issuer":"https://idp","email":"alice@x"}}],"models":["*"]}},
                  {{"id":"bob","jwt":[{{"issuer":"https://idp","subject":"00u-bob"}}],"models":["*"]}}
                ],
                "credentials":{{"type":"inline","access_key_id":"A","secret_access_key":"S"}}
                {extra}}}"#,
            hex::encode(auth::hash_key("tg-keyed"))
        );
        Config::parse(doc.as_bytes(), &|_| None).unwrap()
    }

    fn who(
        config: &Config,
        headers: &[(&str, &str)],
        caller: &Caller,
    ) -> Result<String, GatewayError> {
        let callers = Callers {
            caller: Some(caller),
            runtime_keys: None,
        };
        authenticate(config, headers, callers).map(|k| k.id.clone())
    }

    fn peer(p: &str) -> Caller {
        Caller {
            peer: Some(p.into()),
            ..Default::default()
        }
    }

    const SIGV4: (&str, &str) = (
        "authorization",
        "AWS4-HMAC-SHA256 Credential=AKIA/x, Signature=y",
    );

    #[test]
    fn a_peer_principal_names_its_entry_whatever_signature_the_client_made() {
        let c = config("");
        assert_eq!(
            who(&c, &[], &peer("spiffe://t/ns/a/sa/agent")).unwrap(),
            "agent-a"
        );
        assert_eq!(
            who(&c, &[SIGV4], &peer("spiffe://t/ns/b/sa/agent")).unwrap(),
            "agent-b"
        );
        let e = who(&c, &[], &peer("spiffe://t/ns/c/sa/agent")).unwrap_err();
        assert_eq!(e.kind, ErrorKind::UnknownKey);
        assert!(
            e.message.contains("spiffe://t/ns/c/sa/agent"),
            "{}",
            e.message
        );
        let e = who(&c, &[SIGV4], &Caller::default()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::MissingKey);
        assert!(e.message.contains("SigV4"));
    }

    #[test]
    fn a_presented_key_decides_alone() {
        let c = config("");
        let a = peer("spiffe://t/ns/a/sa/agent");
        assert_eq!(who(&c, &[("x-api-key", "tg-keyed")], &a).unwrap(), "keyed");
        let e = who(&c, &[("authorization", "Bearer tg-nope")], &a).unwrap_err();
        assert_eq!(e.message, "the API key is not valid");
    }

    #[test]
    fn forwarded_client_certs_count_only_from_trusted_proxies() {
        let c = config(r#","trusted_proxies":["spiffe://t/ns/edge/sa/proxy"]"#);
        let xfcc = (
            "x-forwarded-client-cert",
            "By=spiffe://t/gw;Hash=ab;URI=spiffe://t/ns/b/sa/agent",
        );
        // From an untrusted peer: its own identity, whatever the header says.
        assert_eq!(
            who(&c, &[xfcc], &peer("spiffe://t/ns/a/sa/agent")).unwrap(),
            "agent-a"
        );
        assert_eq!(
            who(&c, &[xfcc], &Caller::default()).unwrap_err().kind,
            ErrorKind::MissingKey
        );
        // From the trusted proxy: the client it names, never the proxy itself.
        let proxy = peer("spiffe://t/ns/edge/sa/proxy");
        assert_eq!(who(&c, &[xfcc], &proxy).unwrap(), "agent-b");
        assert_eq!(
            who(&c, &[], &proxy).unwrap_err().kind,
            ErrorKind::MissingKey
        );
        let unknown = ("x-forwarded-client-cert", "URI=spiffe://t/ns/z/sa/x");
        let e = who(&c, &[unknown], &proxy).unwrap_err();
        assert!(
            e.message
                .contains("forwarded by `spiffe://t/ns/edge/sa/proxy`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn xfcc_values_are_read_field_by_field() {
        assert_eq!(
            forwarded_principal(
                r#"By=spiffe://a;URI=spiffe://first,Subject="CN=x,O=\"y;z\"";URI=spiffe://last;DNS=d"#
            ),
            Some("spiffe://last".into())
        );
        assert_eq!(
            forwarded_principal(r#"uri="spiffe://q""#),
            Some("spiffe://q".into())
        );
        for none in ["", ",", "Hash=ab", "URI=", "\"", "URI=spiffe://a,Hash=b"] {
            assert_eq!(forwarded_principal(none), None, "{none}");
        }
    }

    #[test]
    fn tokens_match_subject_then_email_then_group() {
        let c = config("");
        let token = |sub: &str, email: Option<&str>, groups: &[&str]| Caller {
            tokens: vec![VerifiedToken {
                issuer: "https://idp".into(),
                subject: Some(sub.into()),
                email: email.map(Into::into),
                email_verified: None,
                groups: groups.iter().map(|g| g.to_string()).collect(),
            }],
            ..Default::default()
        };
        assert_eq!(
            who(&c, &[], &token("00u-bob", Some("alice@x"), &["ml"])).unwrap(),
            "bob"
        );
        assert_eq!(
            who(&c, &[], &token("00u-x", Some("alice@x"), &["ml"])).unwrap(),
            "alice"
        );
        assert_eq!(
            who(&c, &[], &token("00u-x", None, &["eng", "ml"])).unwrap(),
            "ml"
        );
        let mut unverified = token("00u-x", Some("alice@x"), &[]);
        unverified.tokens[0].email_verified = Some(false);
        let e = who(&c, &[], &unverified).unwrap_err();
        assert!(e.message.contains("subject `00u-x`"), "{}", e.message);
        // Another issuer's token names nobody here; the connection's principal still counts.
        let mut other = token("00u-bob", None, &[]);
        other.tokens[0].issuer = "https://other".into();
        other.peer = Some("spiffe://t/ns/a/sa/agent".into());
        assert_eq!(who(&c, &[], &other).unwrap(), "agent-a");
    }

    #[test]
    fn a_refused_token_is_401_with_its_reason_unless_it_was_a_key() {
        let c = config("");
        let refused = Caller {
            token_refused: Some("Jwt is expired".into()),
            peer: Some("spiffe://t/ns/a/sa/agent".into()),
            ..Default::default()
        };
        let e = who(&c, &[("authorization", "Bearer eyJ.x.y")], &refused).unwrap_err();
        assert!(e.message.contains("Jwt is expired"), "{}", e.message);
        assert_eq!(e.kind.status(), 401);
        let e = who(&c, &[], &refused).unwrap_err();
        assert!(e.message.contains("Jwt is expired"));
        assert_eq!(
            who(&c, &[("authorization", "Bearer tg-keyed")], &refused).unwrap(),
            "keyed"
        );
    }
}
