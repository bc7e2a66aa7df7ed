//! An independent AWS Signature Version 4 verifier, written from the AWS SigV4 specification.
//!
//! The gateway signs its upstream requests with the `aws-sigv4` crate; this module deliberately
//! shares no code with it (only `hmac`, `sha2`, `hex` and `percent-encoding`), so that it can
//! serve as an oracle: a request passes only if a second, separate reading of the spec arrives
//! at the same signature.
//!
//! What is checked, in order:
//! 1. an `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…` header;
//! 2. the access key, the region and the service of the credential scope, and that the scope's
//!    date is the date of `x-amz-date`;
//! 3. that `host` and `x-amz-date` are signed (and `x-amz-security-token`, when the credentials
//!    carry a session token), that every signed header is present, that `x-amz-date` is within
//!    five minutes of `now`, and that the session token (if any) is the expected one;
//! 4. that `x-amz-content-sha256`, when sent, is the SHA-256 of the body;
//! 5. the signature itself, recomputed from the canonical request.
//!
//! The canonical URI follows the rule for every service but S3: the path *as sent* is
//! normalized (empty, `.` and `..` segments removed) and each segment is URI-encoded once more,
//! so a model ID sent as `…-v1%3A0` is signed as `…-v1%253A0`.
//!
//! This module has no dependency on tokio or hyper; with `default-features = false` the crate
//! compiles only this (and the other sans-IO modules).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use percent_encoding::{percent_decode_str, percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

/// The only algorithm SigV4 (as opposed to SigV4a) uses.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// How far `x-amz-date` may be from the verifier's clock, either way.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Everything but the RFC 3986 unreserved characters `A-Za-z0-9-_.~` is encoded.
const ENCODE_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Longest `Authorization` header value considered; anything longer is malformed.
const MAX_AUTHORIZATION_LEN: usize = 16 * 1024;

/// The most signed headers accepted in one `SignedHeaders` list.
const MAX_SIGNED_HEADERS: usize = 64;

/// The credentials the verifier accepts: one access key, its secret, and (for temporary
/// credentials) the session token the request must carry in `x-amz-security-token`.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Why a request's signature was not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyError {
    /// No `Authorization` header at all.
    MissingAuthentication,
    /// The `Authorization` header is not a well-formed SigV4 header (or appears twice).
    Malformed(String),
    /// The access key is not the configured one.
    UnknownAccessKey(String),
    /// The credential scope names another region.
    WrongRegion { expected: String, got: String },
    /// The credential scope names another service.
    WrongService { expected: String, got: String },
    /// The credential scope's date is not the date of `x-amz-date`.
    ScopeDateMismatch {
        scope_date: String,
        amz_date: String,
    },
    /// A header that must be signed (`host`, `x-amz-date`, `x-amz-security-token`) is not in
    /// `SignedHeaders`.
    HeaderNotSigned(&'static str),
    /// A header named in `SignedHeaders` is not in the request.
    SignedHeaderMissing(String),
    /// `x-amz-date` is missing or not `YYYYMMDDTHHMMSSZ`.
    BadDate(String),
    /// `x-amz-date` is more than [`MAX_CLOCK_SKEW`] away from the verifier's clock.
    StaleDate { amz_date: String, now: String },
    /// The credentials have a session token and the request carries none.
    MissingSecurityToken,
    /// The request's session token is not the expected one (or is unexpected).
    SecurityTokenMismatch,
    /// `x-amz-content-sha256` was sent and is not the SHA-256 of the body.
    ContentSha256Mismatch { sent: String, computed: String },
    /// The signature is not the one the verifier computed.
    SignatureMismatch {
        canonical_request: String,
        string_to_sign: String,
    },
}

impl VerifyError {
    /// The `x-amzn-ErrorType` AWS answers this failure with.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::MissingAuthentication => "MissingAuthenticationTokenException",
            Self::Malformed(_)
            | Self::HeaderNotSigned(_)
            | Self::SignedHeaderMissing(_)
            | Self::BadDate(_) => "IncompleteSignatureException",
            Self::UnknownAccessKey(_)
            | Self::MissingSecurityToken
            | Self::SecurityTokenMismatch => "UnrecognizedClientException",
            Self::WrongRegion { .. }
            | Self::WrongService { .. }
            | Self::ScopeDateMismatch { .. }
            | Self::StaleDate { .. }
            | Self::ContentSha256Mismatch { .. }
            | Self::SignatureMismatch { .. } => "InvalidSignatureException",
        }
    }

    /// The HTTP status AWS answers with: 403 for every authentication failure.
    pub fn status(&self) -> u16 {
        403
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingAuthentication => f.write_str("Missing Authentication Token"),
            Self::Malformed(m) => f.write_str(m),
            Self::UnknownAccessKey(_) => f.write_str("The security token included in the request is invalid."),
            Self::WrongRegion { expected, got } => {
                write!(f, "Credential should be scoped to a valid region, not '{got}' (expected '{expected}').")
            }
            Self::WrongService { expected, got } => {
                write!(f, "Credential should be scoped to correct service: '{expected}', not '{got}'.")
            }
            Self::ScopeDateMismatch { scope_date, amz_date } => write!(
                f,
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: \
                 '{scope_date}' != '{}', from '{amz_date}'.",
                amz_date.get(..8).unwrap_or(amz_date)
            ),
            Self::HeaderNotSigned(name) => {
                write!(f, "'{name}' must be a 'SignedHeader' in the AWS Authorization.")
            }
            Self::SignedHeaderMissing(name) => {
                write!(f, "The header '{name}' is in SignedHeaders but not in the request.")
            }
            Self::BadDate(d) => write!(
                f,
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header \
                 in ISO-8601 basic format (got '{d}')."
            ),
            Self::StaleDate { amz_date, now } => write!(
                f,
                "Signature expired: {amz_date} is now earlier or later than {now} by more than 5 min."
            ),
            Self::MissingSecurityToken | Self::SecurityTokenMismatch => {
                f.write_str("The security token included in the request is invalid.")
            }
            Self::ContentSha256Mismatch { sent, computed } => write!(
                f,
                "The provided 'x-amz-content-sha256' header does not match what was computed \
                 (sent {sent}, computed {computed})."
            ),
            Self::SignatureMismatch { canonical_request, string_to_sign } => write!(
                f,
                "The request signature we calculated does not match the signature you provided. Check your \
                 AWS Secret Access Key and signing method. Consult the service documentation for details.\n\n\
                 The Canonical String for this request should have been\n'{canonical_request}'\n\n\
                 The String-to-Sign should have been\n'{string_to_sign}'\n"
            ),
        }
    }
}

impl std::error::Error for VerifyError {}

/// The parts of a SigV4 `Authorization` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizationHeader {
    pub access_key_id: String,
    pub date: String,
    pub region: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

/// Parses `AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request,
/// SignedHeaders=a;b;c, Signature=hex`.
pub fn parse_authorization(value: &str) -> Result<AuthorizationHeader, VerifyError> {
    let malformed = |m: &str| Err(VerifyError::Malformed(m.to_string()));
    if value.len() > MAX_AUTHORIZATION_LEN {
        return malformed("Authorization header is too long.");
    }
    let value = value.trim();
    let Some((algorithm, rest)) = value.split_once(' ') else {
        return malformed("Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters.");
    };
    if algorithm != ALGORITHM {
        return Err(VerifyError::Malformed(format!(
            "Unsupported AWS 'algorithm': '{algorithm}'."
        )));
    }
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',').take(16) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((key, val)) = part.split_once('=') else {
            return Err(VerifyError::Malformed(format!(
                "Authorization header parameter '{part}' is not of the form key=value."
            )));
        };
        let slot = match key {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => {
                return Err(VerifyError::Malformed(format!(
                    "Unknown Authorization header parameter '{key}'."
                )))
            }
        };
        if slot.replace(val).is_some() {
            return Err(VerifyError::Malformed(format!(
                "Authorization header parameter '{key}' appears twice."
            )));
        }
    }
    let Some(credential) = credential else {
        return malformed("Authorization header requires 'Credential' parameter.");
    };
    let Some(signed_headers) = signed_headers else {
        return malformed("Authorization header requires 'SignedHeaders' parameter.");
    };
    let Some(signature) = signature else {
        return malformed("Authorization header requires 'Signature' parameter.");
    };

    let scope: Vec<&str> = credential.splitn(6, '/').collect();
    let [access_key_id, date, region, service, terminator] = scope.as_slice() else {
        return Err(VerifyError::Malformed(format!(
            "Credential should be of the form AKID/YYYYMMDD/region/service/aws4_request, not '{credential}'."
        )));
    };
    if *terminator != "aws4_request" {
        return Err(VerifyError::Malformed(format!(
            "Credential should be scoped with a valid terminator: 'aws4_request', not '{terminator}'."
        )));
    }
    if access_key_id.is_empty() || date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::Malformed(format!(
            "Credential '{credential}' is not well formed."
        )));
    }

    let names: Vec<String> = signed_headers.split(';').map(str::to_string).collect();
    if names.is_empty() || names.len() > MAX_SIGNED_HEADERS {
        return malformed("SignedHeaders must list between 1 and 64 headers.");
    }
    for name in &names {
        if name.is_empty()
            || name
                .bytes()
                .any(|b| b.is_ascii_uppercase() || b <= b' ' || b == b':')
        {
            return Err(VerifyError::Malformed(format!(
                "SignedHeaders must be lowercase header names separated by ';', not '{signed_headers}'."
            )));
        }
    }
    if names.windows(2).any(|w| w[0] >= w[1]) {
        return Err(VerifyError::Malformed(format!(
            "SignedHeaders must be sorted and without duplicates, not '{signed_headers}'."
        )));
    }
    if signature.len() != 64
        || !signature
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return malformed("Signature must be 64 lowercase hexadecimal characters.");
    }

    Ok(AuthorizationHeader {
        access_key_id: access_key_id.to_string(),
        date: date.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers: names,
        signature: signature.to_string(),
    })
}

/// Verifies a SigV4-signed request.
///
/// `raw_path` and `raw_query` are exactly as on the request line (no decoding); `headers` are
/// every request header in arrival order (names in any case; repeated names allowed).
#[allow(clippy::too_many_arguments)]
pub fn verify(
    method: &str,
    raw_path: &str,
    raw_query: &str,
    headers: &[(String, String)],
    body: &[u8],
    creds: &Credentials,
    region: &str,
    service: &str,
    now: SystemTime,
) -> Result<(), VerifyError> {
    let mut authorizations = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("authorization"));
    let Some((_, authorization)) = authorizations.next() else {
        return Err(VerifyError::MissingAuthentication);
    };
    if authorizations.next().is_some() {
        return Err(VerifyError::Malformed(
            "The request carries more than one Authorization header.".into(),
        ));
    }
    let auth = parse_authorization(authorization)?;

    if auth.access_key_id != creds.access_key_id {
        return Err(VerifyError::UnknownAccessKey(auth.access_key_id));
    }
    if auth.region != region {
        return Err(VerifyError::WrongRegion {
            expected: region.to_string(),
            got: auth.region,
        });
    }
    if auth.service != service {
        return Err(VerifyError::WrongService {
            expected: service.to_string(),
            got: auth.service,
        });
    }
    let is_signed = |name: &str| auth.signed_headers.iter().any(|h| h == name);
    if !is_signed("host") {
        return Err(VerifyError::HeaderNotSigned("host"));
    }
    if !is_signed("x-amz-date") {
        return Err(VerifyError::HeaderNotSigned("x-amz-date"));
    }
    let amz_date = header_values(headers, "x-amz-date")
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let Some(request_time) = parse_amz_date(&amz_date) else {
        return Err(VerifyError::BadDate(amz_date));
    };
    if amz_date.get(..8) != Some(auth.date.as_str()) {
        return Err(VerifyError::ScopeDateMismatch {
            scope_date: auth.date,
            amz_date,
        });
    }
    let skew = match now.duration_since(request_time) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    if skew > MAX_CLOCK_SKEW {
        return Err(VerifyError::StaleDate {
            amz_date,
            now: format_amz_date(now),
        });
    }

    let sent_token: Vec<&str> = header_values(headers, "x-amz-security-token").collect();
    match &creds.session_token {
        Some(expected) => {
            let [token] = sent_token.as_slice() else {
                return Err(if sent_token.is_empty() {
                    VerifyError::MissingSecurityToken
                } else {
                    VerifyError::SecurityTokenMismatch
                });
            };
            if !is_signed("x-amz-security-token") {
                return Err(VerifyError::HeaderNotSigned("x-amz-security-token"));
            }
            if !constant_time_eq(token.trim().as_bytes(), expected.as_bytes()) {
                return Err(VerifyError::SecurityTokenMismatch);
            }
        }
        None if !sent_token.is_empty() => return Err(VerifyError::SecurityTokenMismatch),
        None => {}
    }

    let payload_hash = hex::encode(Sha256::digest(body));
    if let Some(sent) = header_values(headers, "x-amz-content-sha256").next() {
        if sent.trim() != payload_hash {
            return Err(VerifyError::ContentSha256Mismatch {
                sent: sent.trim().to_string(),
                computed: payload_hash,
            });
        }
    }

    let canonical_request = canonical_request(
        method,
        raw_path,
        raw_query,
        headers,
        &auth.signed_headers,
        &payload_hash,
    )?;
    let scope = format!(
        "{}/{}/{}/aws4_request",
        auth.date, auth.region, auth.service
    );
    let string_to_sign = string_to_sign(&amz_date, &scope, &canonical_request);
    let key = signing_key(
        &creds.secret_access_key,
        &auth.date,
        &auth.region,
        &auth.service,
    );
    let expected = hex::encode(hmac_sha256(&key, string_to_sign.as_bytes()));
    if !constant_time_eq(expected.as_bytes(), auth.signature.as_bytes()) {
        return Err(VerifyError::SignatureMismatch {
            canonical_request,
            string_to_sign,
        });
    }
    Ok(())
}

/// Signs a request the way a correct SigV4 client would, with this module's own canonical
/// request (for tests here and in other crates: never used to verify anything).
///
/// Every header in `headers` is signed (they should include `host`). Returns the headers to add
/// to the request: `x-amz-date` (unless `headers` already has one, whose value is then used),
/// `x-amz-security-token` (when `creds` has a session token and `headers` does not carry it),
/// and `authorization`.
#[allow(clippy::too_many_arguments)]
pub fn sign(
    method: &str,
    raw_path: &str,
    raw_query: &str,
    headers: &[(String, String)],
    body: &[u8],
    creds: &Credentials,
    region: &str,
    service: &str,
    now: SystemTime,
) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case("authorization"))
        .cloned()
        .collect();
    let mut added = Vec::new();
    let amz_date = match header_values(&all, "x-amz-date").next() {
        Some(d) => d.trim().to_string(),
        None => {
            let d = format_amz_date(now);
            added.push(("x-amz-date".to_string(), d.clone()));
            d
        }
    };
    if let Some(token) = &creds.session_token {
        if header_values(&all, "x-amz-security-token").next().is_none() {
            added.push(("x-amz-security-token".to_string(), token.clone()));
        }
    }
    all.extend(added.iter().cloned());

    let mut names: Vec<String> = all.iter().map(|(n, _)| n.to_ascii_lowercase()).collect();
    names.sort();
    names.dedup();
    let payload_hash = hex::encode(Sha256::digest(body));
    // Every name comes from `all`, so building the canonical request cannot fail.
    let canonical = canonical_request(method, raw_path, raw_query, &all, &names, &payload_hash)
        .unwrap_or_default();
    let date = amz_date.get(..8).unwrap_or("");
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let sts = string_to_sign(&amz_date, &scope, &canonical);
    let signature = hex::encode(hmac_sha256(
        &signing_key(&creds.secret_access_key, date, region, service),
        sts.as_bytes(),
    ));
    added.push((
        "authorization".to_string(),
        format!(
            "{ALGORITHM} Credential={}/{scope}, SignedHeaders={}, Signature={signature}",
            creds.access_key_id,
            names.join(";")
        ),
    ));
    added
}

/// The canonical request:
/// `METHOD\nURI\nQUERY\nheaders (one `name:value\n` each)\n\nsigned;headers\nhexpayloadhash`.
pub fn canonical_request(
    method: &str,
    raw_path: &str,
    raw_query: &str,
    headers: &[(String, String)],
    signed_headers: &[String],
    payload_hash: &str,
) -> Result<String, VerifyError> {
    let mut out = String::with_capacity(256 + raw_path.len() + raw_query.len());
    out.push_str(method);
    out.push('\n');
    out.push_str(&canonical_uri(raw_path));
    out.push('\n');
    out.push_str(&canonical_query(raw_query));
    out.push('\n');
    for name in signed_headers {
        let values: Vec<String> = header_values(headers, name)
            .map(normalize_header_value)
            .collect();
        if values.is_empty() {
            return Err(VerifyError::SignedHeaderMissing(name.clone()));
        }
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed_headers.join(";"));
    out.push('\n');
    out.push_str(payload_hash);
    Ok(out)
}

/// The canonical URI of a path as sent: normalized (empty, `.` and `..` segments removed, a
/// trailing slash kept), then each segment URI-encoded once more (every byte but
/// `A-Za-z0-9-_.~`), so `%3A` becomes `%253A`.
pub fn canonical_uri(raw_path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut last = "";
    for segment in raw_path.split('/') {
        last = segment;
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let trailing_slash = matches!(last, "" | "." | "..") && !segments.is_empty();
    let mut out = String::with_capacity(raw_path.len() + 16);
    for segment in &segments {
        out.push('/');
        out.extend(percent_encode(segment.as_bytes(), ENCODE_SET));
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

/// The canonical query string: each `name=value` pair decoded once and URI-encoded (every byte
/// but `A-Za-z0-9-_.~`), sorted by name then value, joined with `&`. A name without `=` gets an
/// empty value. `+` is taken literally (encoded as `%2B`), as RFC 3986 reads it.
pub fn canonical_query(raw_query: &str) -> String {
    let mut pairs: Vec<(String, String)> = raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (reencode(k), reencode(v))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn reencode(s: &str) -> String {
    let decoded: Vec<u8> = percent_decode_str(s).collect();
    percent_encode(&decoded, ENCODE_SET).to_string()
}

/// Trims a header value and collapses each inner run of spaces and tabs to one space.
pub fn normalize_header_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for word in value.split([' ', '\t']).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// `AWS4-HMAC-SHA256\n<amz-date>\n<scope>\n<hex sha256 of the canonical request>`.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    )
}

/// `kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")`.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k_date = hmac_sha256(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac_sha256(&k_date, region.as_bytes());
    let k_service = hmac_sha256(&k_region, service.as_bytes());
    hmac_sha256(&k_service, b"aws4_request")
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail; fall back to an
    // all-zero MAC rather than panic all the same.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().into()
        }
        Err(_) => [0; 32],
    }
}

fn header_values<'a>(
    headers: &'a [(String, String)],
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parses `YYYYMMDDTHHMMSSZ` (UTC).
pub fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (year, month, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hour, minute, second) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1970..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(UNIX_EPOCH + Duration::from_secs(days * 86_400 + hour * 3600 + minute * 60 + second))
}

/// Formats a time as `YYYYMMDDTHHMMSSZ` (UTC); times before 1970 format as the epoch.
pub fn format_amz_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (year, month, day) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn is_leap(year: u64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (year ≥ 1970).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const SCOPE: &str = "AKIDEXAMPLE/20150830/us-east-1/service/aws4_request";
    const STS_TOKEN: &str = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";

    fn creds() -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: SECRET.into(),
            session_token: None,
        }
    }

    fn suite_now() -> SystemTime {
        parse_amz_date("20150830T123600Z").unwrap()
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn authz(signed: &str, sig: &str) -> String {
        format!("AWS4-HMAC-SHA256 Credential={SCOPE}, SignedHeaders={signed}, Signature={sig}")
    }

    /// One vector of the aws-sig-v4-test-suite: the request, its published `Authorization`
    /// header and (where it is worth asserting) its published canonical request.
    struct Vector {
        method: &'static str,
        path: &'static str,
        query: &'static str,
        headers: &'static [(&'static str, &'static str)],
        body: &'static str,
        signed: &'static str,
        signature: &'static str,
        creq: Option<&'static str>,
    }

    const BASE: &[(&str, &str)] = &[
        ("Host", "example.amazonaws.com"),
        ("X-Amz-Date", "20150830T123600Z"),
    ];
    const EMPTY_SHA: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn vectors() -> Vec<(&'static str, Vector)> {
        vec![
            (
                "get-vanilla",
                Vector {
                    method: "GET",
                    path: "/",
                    query: "",
                    headers: BASE,
                    body: "",
                    signed: "host;x-amz-date",
                    signature: "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
                    creq: Some(
                        "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n\
                         e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                    ),
                },
            ),
            (
                "post-vanilla",
                Vector {
                    method: "POST",
                    path: "/",
                    query: "",
                    headers: BASE,
                    body: "",
                    signed: "host;x-amz-date",
                    signature: "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
                    creq: None,
                },
            ),
            (
                "get-vanilla-query-order-key-case",
                Vector {
                    method: "GET",
                    path: "/",
                    query: "Param2=value2&Param1=value1",
                    headers: BASE,
                    body: "",
                    signed: "host;x-amz-date",
                    signature: "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
                    creq: Some(
                        "GET\n/\nParam1=value1&Param2=value2\nhost:example.amazonaws.com\n\
                         x-amz-date:20150830T123600Z\n\nhost;x-amz-date\n\
                         e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                    ),
                },
            ),
            (
                "get-vanilla-query-order-value",
                Vector {
                    method: "GET",
                    path: "/",
                    query: "Param1=value2&Param1=value1",
                    headers: BASE,
                    body: "",
                    signed: "host;x-amz-date",
                    signature: "5772eed61e12b33fae39ee5e7012498b51d56abc0abb7c60486157bd471c4694",
                    creq: None,
                },
            ),
            (
                "post-vanilla-query",
                Vector {
                    method: "POST",
                    path: "/",
                    query: "Param1=value1",
                    headers: BASE,
                    body: "",
                    signed: "host;x-amz-date",
                    signature: "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11",
                    creq: None,
                },
            ),
            (
                "get-vanilla-utf8-query",
                Vector {
                    method: "GET",
                    path: "/",
                    query: "\u{1234}=bar",
                    headers: BASE,
                    body: "",
                    signed: "host;x-amz-date",
                    signature: "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04",
                    creq: None,
                },
            ),
            (
                "get-unreserved",
                Vector {
                    method: "GET",
                    path: "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                    query: "",
                    headers: BASE,
                    body: "",
                    signed: "host;x-amz-date",
                    signature: "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f",
                    creq: None,
                },
            ),
            (
                "get-utf8",
                Vector {
                    method: "GET",
                    path: "/\u{1234}",
                    query: "",
                    headers: BASE,
                    body: "",
                    signed: "host;x-amz-date",
                    signature: "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85",
                    creq: None,
                },
            ),
            (
                "get-slashes (normalize-path)",
                Vector {
                    method: "GET",
                    path: "//example//",
                    query: "",
                    headers: BASE,
                    body: "",
                    signed: "host;x-amz-date",
                    signature: "9a624bd73a37c9a373b5312afbebe7a714a789de108f0bdfe846570885f57e84",
                    creq: None,
                },
            ),
            (
                "get-relative-relative (normalize-path)",
                Vector {
                    method: "GET",
                    path: "/example1/example2/../..",
                    query: "",
                    headers: BASE,
                    body: "",
                    signed: "host;x-amz-date",
                    signature: "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
                    creq: None,
                },
            ),
            (
                "get-header-value-trim",
                Vector {
                    method: "GET",
                    path: "/",
                    query: "",
                    headers: &[
                        ("Host", "example.amazonaws.com"),
                        ("My-Header1", " value1"),
                        ("My-Header2", " \"a   b   c\""),
                        ("X-Amz-Date", "20150830T123600Z"),
                    ],
                    body: "",
                    signed: "host;my-header1;my-header2;x-amz-date",
                    signature: "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
                    creq: Some(
                        "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value1\nmy-header2:\"a b c\"\n\
                         x-amz-date:20150830T123600Z\n\nhost;my-header1;my-header2;x-amz-date\n\
                         e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                    ),
                },
            ),
            (
                "get-header-key-duplicate",
                Vector {
                    method: "GET",
                    path: "/",
                    query: "",
                    headers: &[
                        ("Host", "example.amazonaws.com"),
                        ("My-Header1", "value2"),
                        ("My-Header1", "value2"),
                        ("My-Header1", "value1"),
                        ("X-Amz-Date", "20150830T123600Z"),
                    ],
                    body: "",
                    signed: "host;my-header1;x-amz-date",
                    signature: "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea",
                    creq: None,
                },
            ),
            (
                "post-header-value-case",
                Vector {
                    method: "POST",
                    path: "/",
                    query: "",
                    headers: &[
                        ("Host", "example.amazonaws.com"),
                        ("My-Header1", "VALUE1"),
                        ("X-Amz-Date", "20150830T123600Z"),
                    ],
                    body: "",
                    signed: "host;my-header1;x-amz-date",
                    signature: "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d",
                    creq: None,
                },
            ),
            (
                // Content-Length is sent but not signed: unsigned headers play no part.
                "post-x-www-form-urlencoded",
                Vector {
                    method: "POST",
                    path: "/",
                    query: "",
                    headers: &[
                        ("Content-Type", "application/x-www-form-urlencoded"),
                        ("Host", "example.amazonaws.com"),
                        ("X-Amz-Date", "20150830T123600Z"),
                        ("Content-Length", "13"),
                    ],
                    body: "Param1=value1",
                    signed: "content-type;host;x-amz-date",
                    signature: "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
                    creq: Some(
                        "POST\n/\n\ncontent-type:application/x-www-form-urlencoded\nhost:example.amazonaws.com\n\
                         x-amz-date:20150830T123600Z\n\ncontent-type;host;x-amz-date\n\
                         9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e",
                    ),
                },
            ),
        ]
    }

    fn vector_headers(v: &Vector) -> Vec<(String, String)> {
        let mut headers = h(v.headers);
        headers.push(("Authorization".into(), authz(v.signed, v.signature)));
        headers
    }

    #[test]
    fn published_suite_vectors_verify() {
        for (name, v) in vectors() {
            let headers = vector_headers(&v);
            let result = verify(
                v.method,
                v.path,
                v.query,
                &headers,
                v.body.as_bytes(),
                &creds(),
                "us-east-1",
                "service",
                suite_now(),
            );
            assert_eq!(result, Ok(()), "vector {name}");
            if let Some(creq) = v.creq {
                let signed: Vec<String> = v.signed.split(';').map(String::from).collect();
                let hash = hex::encode(Sha256::digest(v.body.as_bytes()));
                let got =
                    canonical_request(v.method, v.path, v.query, &headers, &signed, &hash).unwrap();
                assert_eq!(got, creq, "canonical request of {name}");
            }
        }
    }

    #[test]
    fn published_suite_vectors_reject_a_flipped_signature() {
        for (name, v) in vectors() {
            let mut sig = v.signature.to_string();
            let flipped = if sig.ends_with('0') { '1' } else { '0' };
            sig.pop();
            sig.push(flipped);
            let mut headers = h(v.headers);
            headers.push(("Authorization".into(), authz(v.signed, &sig)));
            let err = verify(
                v.method,
                v.path,
                v.query,
                &headers,
                v.body.as_bytes(),
                &creds(),
                "us-east-1",
                "service",
                suite_now(),
            )
            .unwrap_err();
            assert!(
                matches!(err, VerifyError::SignatureMismatch { .. }),
                "vector {name}: {err:?}"
            );
            assert_eq!(err.error_type(), "InvalidSignatureException");
        }
    }

    #[test]
    fn sign_reproduces_the_published_authorization_headers() {
        // Only the vectors where every header sent is signed (sign() signs them all).
        for name in [
            "get-vanilla",
            "post-vanilla",
            "get-vanilla-query-order-key-case",
            "get-header-value-trim",
            "get-utf8",
        ] {
            let (_, v) = vectors().into_iter().find(|(n, _)| *n == name).unwrap();
            let added = sign(
                v.method,
                v.path,
                v.query,
                &h(v.headers),
                v.body.as_bytes(),
                &creds(),
                "us-east-1",
                "service",
                suite_now(),
            );
            assert_eq!(
                added,
                vec![("authorization".to_string(), authz(v.signed, v.signature))],
                "vector {name}"
            );
        }
    }

    #[test]
    fn post_sts_header_before_vector() {
        let mut creds = creds();
        creds.session_token = Some(STS_TOKEN.into());
        let signature = "85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead";
        let mut headers = h(BASE);
        headers.push(("X-Amz-Security-Token".into(), STS_TOKEN.into()));
        let added = sign(
            "POST",
            "/",
            "",
            &headers,
            b"",
            &creds,
            "us-east-1",
            "service",
            suite_now(),
        );
        assert_eq!(
            added,
            vec![(
                "authorization".into(),
                authz("host;x-amz-date;x-amz-security-token", signature)
            )]
        );
        headers.extend(added);
        assert_eq!(
            verify(
                "POST",
                "/",
                "",
                &headers,
                b"",
                &creds,
                "us-east-1",
                "service",
                suite_now()
            ),
            Ok(())
        );

        // The same request without the token: the credentials require one.
        let headers = vec![
            ("Host".to_string(), "example.amazonaws.com".to_string()),
            ("X-Amz-Date".into(), "20150830T123600Z".into()),
            (
                "Authorization".into(),
                authz(
                    "host;x-amz-date",
                    "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
                ),
            ),
        ];
        let err = verify(
            "POST",
            "/",
            "",
            &headers,
            b"",
            &creds,
            "us-east-1",
            "service",
            suite_now(),
        )
        .unwrap_err();
        assert_eq!(err, VerifyError::MissingSecurityToken);
        assert_eq!(err.error_type(), "UnrecognizedClientException");
    }

    const MODEL_PATH: &str = "/model/us.anthropic.claude-haiku-4-5-20251001-v1%3A0/converse";

    fn bedrock_request(body: &[u8], creds: &Credentials, now: SystemTime) -> Vec<(String, String)> {
        let mut headers = h(&[
            ("host", "bedrock-runtime.us-east-1.amazonaws.com"),
            ("content-type", "application/json"),
        ]);
        let added = sign(
            "POST",
            MODEL_PATH,
            "",
            &headers,
            body,
            creds,
            "us-east-1",
            "bedrock",
            now,
        );
        headers.extend(added);
        headers
    }

    #[test]
    fn path_segments_are_encoded_again() {
        assert_eq!(
            canonical_uri(MODEL_PATH),
            "/model/us.anthropic.claude-haiku-4-5-20251001-v1%253A0/converse"
        );
        assert_eq!(
            canonical_uri("/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aapplication-inference-profile%2Fabc/invoke"),
            "/model/arn%253Aaws%253Abedrock%253Aus-east-1%253A123456789012%253Aapplication-inference-profile%252Fabc/invoke"
        );
        // A raw `:` (never sent by an SDK) is encoded once, so it signs differently from `%3A`.
        assert_eq!(
            canonical_uri("/model/a:b/converse"),
            "/model/a%3Ab/converse"
        );
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(canonical_uri("/a/b/.."), "/a/");
        assert_eq!(canonical_uri("/example space/"), "/example%20space/");
    }

    #[test]
    fn double_encoded_model_path_verifies_and_single_encoding_does_not() {
        let now = SystemTime::now();
        let body = br#"{"messages":[]}"#;
        let headers = bedrock_request(body, &creds(), now);
        assert_eq!(
            verify(
                "POST",
                MODEL_PATH,
                "",
                &headers,
                body,
                &creds(),
                "us-east-1",
                "bedrock",
                now
            ),
            Ok(())
        );

        // A signer that canonicalized the path without the second encoding (`%3A` as is).
        let amz_date = format_amz_date(now);
        let signed = vec![
            "content-type".to_string(),
            "host".into(),
            "x-amz-date".into(),
        ];
        let hash = hex::encode(Sha256::digest(body));
        let creq = canonical_request("POST", "/", "", &headers, &signed, &hash)
            .unwrap()
            .replacen("POST\n/\n", &format!("POST\n{MODEL_PATH}\n"), 1);
        let scope = format!("{}/us-east-1/bedrock/aws4_request", &amz_date[..8]);
        let sts = string_to_sign(&amz_date, &scope, &creq);
        let sig = hex::encode(hmac_sha256(
            &signing_key(SECRET, &amz_date[..8], "us-east-1", "bedrock"),
            sts.as_bytes(),
        ));
        let mut wrong: Vec<(String, String)> = headers
            .iter()
            .filter(|(n, _)| n != "authorization")
            .cloned()
            .collect();
        wrong.push((
            "authorization".into(),
            format!("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/{scope}, SignedHeaders=content-type;host;x-amz-date, Signature={sig}"),
        ));
        let err = verify(
            "POST",
            MODEL_PATH,
            "",
            &wrong,
            body,
            &creds(),
            "us-east-1",
            "bedrock",
            now,
        )
        .unwrap_err();
        let VerifyError::SignatureMismatch {
            canonical_request, ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert!(
            canonical_request.contains("v1%253A0"),
            "{canonical_request}"
        );
        assert!(err.to_string().starts_with(
            "The request signature we calculated does not match the signature you provided."
        ));
    }

    #[test]
    fn tampered_body_is_rejected() {
        let now = SystemTime::now();
        let headers = bedrock_request(br#"{"max":1}"#, &creds(), now);
        let err = verify(
            "POST",
            MODEL_PATH,
            "",
            &headers,
            br#"{"max":2}"#,
            &creds(),
            "us-east-1",
            "bedrock",
            now,
        )
        .unwrap_err();
        assert!(
            matches!(err, VerifyError::SignatureMismatch { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn content_sha256_must_match_the_body() {
        let now = SystemTime::now();
        let body = b"{}";
        let mut headers = h(&[("host", "h"), ("x-amz-content-sha256", EMPTY_SHA)]);
        headers.extend(sign(
            "POST",
            MODEL_PATH,
            "",
            &headers,
            body,
            &creds(),
            "us-east-1",
            "bedrock",
            now,
        ));
        let err = verify(
            "POST",
            MODEL_PATH,
            "",
            &headers,
            body,
            &creds(),
            "us-east-1",
            "bedrock",
            now,
        )
        .unwrap_err();
        assert!(
            matches!(err, VerifyError::ContentSha256Mismatch { .. }),
            "{err:?}"
        );
        // …and with the right hash it passes.
        let hash = hex::encode(Sha256::digest(body));
        let mut headers = h(&[("host", "h"), ("x-amz-content-sha256", &hash)]);
        headers.extend(sign(
            "POST",
            MODEL_PATH,
            "",
            &headers,
            body,
            &creds(),
            "us-east-1",
            "bedrock",
            now,
        ));
        assert_eq!(
            verify(
                "POST",
                MODEL_PATH,
                "",
                &headers,
                body,
                &creds(),
                "us-east-1",
                "bedrock",
                now
            ),
            Ok(())
        );
    }

    #[test]
    fn wrong_secret_is_rejected() {
        let now = SystemTime::now();
        let mut other = creds();
        other.secret_access_key = "not-the-secret".into();
        let headers = bedrock_request(b"{}", &other, now);
        let err = verify(
            "POST",
            MODEL_PATH,
            "",
            &headers,
            b"{}",
            &creds(),
            "us-east-1",
            "bedrock",
            now,
        )
        .unwrap_err();
        assert!(
            matches!(err, VerifyError::SignatureMismatch { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn unknown_access_key_region_and_service() {
        let now = SystemTime::now();
        let mut other = creds();
        other.access_key_id = "AKIDOTHER".into();
        let headers = bedrock_request(b"{}", &other, now);
        let err = verify(
            "POST",
            MODEL_PATH,
            "",
            &headers,
            b"{}",
            &creds(),
            "us-east-1",
            "bedrock",
            now,
        )
        .unwrap_err();
        assert_eq!(err, VerifyError::UnknownAccessKey("AKIDOTHER".into()));
        assert_eq!(err.error_type(), "UnrecognizedClientException");

        let headers = bedrock_request(b"{}", &creds(), now);
        let err = verify(
            "POST",
            MODEL_PATH,
            "",
            &headers,
            b"{}",
            &creds(),
            "us-west-2",
            "bedrock",
            now,
        )
        .unwrap_err();
        assert!(matches!(err, VerifyError::WrongRegion { .. }));
        let err = verify(
            "POST",
            MODEL_PATH,
            "",
            &headers,
            b"{}",
            &creds(),
            "us-east-1",
            "bedrock-runtime",
            now,
        )
        .unwrap_err();
        assert!(matches!(err, VerifyError::WrongService { .. }));
    }

    #[test]
    fn stale_and_future_dates_are_rejected() {
        let now = SystemTime::now();
        let headers = bedrock_request(b"{}", &creds(), now);
        let later = now + Duration::from_secs(301);
        let err = verify(
            "POST",
            MODEL_PATH,
            "",
            &headers,
            b"{}",
            &creds(),
            "us-east-1",
            "bedrock",
            later,
        )
        .unwrap_err();
        assert!(matches!(err, VerifyError::StaleDate { .. }), "{err:?}");
        assert_eq!(err.error_type(), "InvalidSignatureException");
        let earlier = now - Duration::from_secs(301);
        let err = verify(
            "POST",
            MODEL_PATH,
            "",
            &headers,
            b"{}",
            &creds(),
            "us-east-1",
            "bedrock",
            earlier,
        )
        .unwrap_err();
        assert!(matches!(err, VerifyError::StaleDate { .. }), "{err:?}");
        // Within the window either way: fine.
        let near = now + Duration::from_secs(290);
        assert_eq!(
            verify(
                "POST",
                MODEL_PATH,
                "",
                &headers,
                b"{}",
                &creds(),
                "us-east-1",
                "bedrock",
                near
            ),
            Ok(())
        );
    }

    #[test]
    fn session_token_missing_wrong_or_unsigned() {
        let now = SystemTime::now();
        let mut with_token = creds();
        with_token.session_token = Some("TOKEN".into());

        // Signed without a token, verified against credentials that need one.
        let headers = bedrock_request(b"{}", &creds(), now);
        let err = verify(
            "POST",
            MODEL_PATH,
            "",
            &headers,
            b"{}",
            &with_token,
            "us-east-1",
            "bedrock",
            now,
        )
        .unwrap_err();
        assert_eq!(err, VerifyError::MissingSecurityToken);

        // The right token, signed: fine.
        let headers = bedrock_request(b"{}", &with_token, now);
        assert_eq!(
            verify(
                "POST",
                MODEL_PATH,
                "",
                &headers,
                b"{}",
                &with_token,
                "us-east-1",
                "bedrock",
                now
            ),
            Ok(())
        );
        // A token the verifier does not expect.
        let err = verify(
            "POST",
            MODEL_PATH,
            "",
            &headers,
            b"{}",
            &creds(),
            "us-east-1",
            "bedrock",
            now,
        )
        .unwrap_err();
        assert_eq!(err, VerifyError::SecurityTokenMismatch);

        // Another token, correctly signed.
        let mut wrong = with_token.clone();
        wrong.session_token = Some("OTHER".into());
        let headers = bedrock_request(b"{}", &wrong, now);
        let err = verify(
            "POST",
            MODEL_PATH,
            "",
            &headers,
            b"{}",
            &with_token,
            "us-east-1",
            "bedrock",
            now,
        )
        .unwrap_err();
        assert_eq!(err, VerifyError::SecurityTokenMismatch);

        // The token sent but not signed (added after signing).
        let mut headers = bedrock_request(b"{}", &creds(), now);
        headers.push(("x-amz-security-token".into(), "TOKEN".into()));
        let err = verify(
            "POST",
            MODEL_PATH,
            "",
            &headers,
            b"{}",
            &with_token,
            "us-east-1",
            "bedrock",
            now,
        )
        .unwrap_err();
        assert_eq!(err, VerifyError::HeaderNotSigned("x-amz-security-token"));
    }

    #[test]
    fn host_and_date_must_be_signed() {
        let now = SystemTime::now();
        let date = format_amz_date(now);
        let scope = format!("AKIDEXAMPLE/{}/us-east-1/bedrock/aws4_request", &date[..8]);
        let sig = "0".repeat(64);
        let base = vec![
            ("host".to_string(), "h".to_string()),
            ("x-amz-date".into(), date.clone()),
        ];
        for (signed, missing) in [("x-amz-date", "host"), ("host", "x-amz-date")] {
            let mut headers = base.clone();
            headers.push((
                "authorization".into(),
                format!(
                    "AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders={signed}, Signature={sig}"
                ),
            ));
            let err = verify(
                "POST",
                "/",
                "",
                &headers,
                b"",
                &creds(),
                "us-east-1",
                "bedrock",
                now,
            )
            .unwrap_err();
            assert_eq!(err, VerifyError::HeaderNotSigned(missing));
        }
        // A signed header that is not in the request.
        let mut headers = base.clone();
        headers.push((
            "authorization".into(),
            format!("AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders=host;x-amz-date;x-foo, Signature={sig}"),
        ));
        let err = verify(
            "POST",
            "/",
            "",
            &headers,
            b"",
            &creds(),
            "us-east-1",
            "bedrock",
            now,
        )
        .unwrap_err();
        assert_eq!(err, VerifyError::SignedHeaderMissing("x-foo".into()));
    }

    #[test]
    fn missing_and_malformed_authorization() {
        let now = SystemTime::now();
        let err = verify(
            "POST",
            "/",
            "",
            &h(&[("host", "h")]),
            b"",
            &creds(),
            "us-east-1",
            "bedrock",
            now,
        )
        .unwrap_err();
        assert_eq!(err, VerifyError::MissingAuthentication);
        assert_eq!(err.error_type(), "MissingAuthenticationTokenException");
        for bad in [
            "AWS4-HMAC-SHA256",
            "AWS4-HMAC-SHA512 Credential=a/20150830/r/s/aws4_request, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=a/20150830/r/s/aws4_request, SignedHeaders=host",
            "AWS4-HMAC-SHA256 Credential=a/2015/r/s/aws4_request, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=a/20150830/r/s/aws5_request, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=a/20150830/r/s/aws4_request, SignedHeaders=Host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=a/20150830/r/s/aws4_request, SignedHeaders=x-amz-date;host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=a/20150830/r/s/aws4_request, SignedHeaders=host, Signature=zz",
            "AWS4-HMAC-SHA256 Credential=a/20150830/r/s/aws4_request, SignedHeaders=host, Signature=00, Signature=00",
            "Bearer abc",
        ] {
            let err = parse_authorization(bad).unwrap_err();
            assert!(matches!(err, VerifyError::Malformed(_)), "{bad}: {err:?}");
        }
        let two = h(&[("authorization", "x"), ("Authorization", "y")]);
        assert!(matches!(
            verify("POST", "/", "", &two, b"", &creds(), "r", "s", now),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn dates_round_trip() {
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(UNIX_EPOCH));
        let t = parse_amz_date("20150830T123600Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_440_938_160
        );
        assert_eq!(format_amz_date(t), "20150830T123600Z");
        assert_eq!(
            format_amz_date(parse_amz_date("20240229T235959Z").unwrap()),
            "20240229T235959Z"
        );
        for bad in [
            "20150830T123600",
            "2015083OT123600Z",
            "20150230T000000Z",
            "20151301T000000Z",
            "20150830T246000Z",
            "",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn canonical_query_rules() {
        assert_eq!(canonical_query(""), "");
        assert_eq!(canonical_query("b&a=1"), "a=1&b=");
        assert_eq!(canonical_query("q=a%20b&q=a+b"), "q=a%20b&q=a%2Bb");
        assert_eq!(canonical_query("x=a%2fb"), "x=a%2Fb");
    }
}
