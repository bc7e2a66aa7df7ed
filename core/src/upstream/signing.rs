//! Authenticating the upstream request to Bedrock: SigV4, or a Bedrock API key as a bearer
//! token.
//!
//! Every Bedrock request has one shape, so it is signed by writing that canonical request
//! directly, with the derived signing key kept for the day in a [`SigningKeyCache`] the host
//! owns. The `aws-sigv4` crate provides the HMAC steps and is the general signer: for anything
//! outside the shape, for AWS's published vectors, and as the oracle the direct path is tested
//! against.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use sha2::{Digest, Sha256};

use crate::error::{ErrorKind, GatewayError};
use crate::quota::period;
use crate::upstream::credentials::UpstreamAuth;

/// Bedrock's signing name (the credential scope says `bedrock`, not `bedrock-runtime`).
pub const SIGNING_NAME: &str = "bedrock";

/// Headers to add to the upstream request.
///
/// `path` is the request path as sent (model ID percent-encoded once). The signer encodes each
/// segment again for the canonical URI, as AWS requires for every service but S3, so `%3A`
/// is signed as `%253A`. `host` is the upstream authority exactly as sent (with a port when it
/// is not 443). Only `host` and the headers the signer adds are signed, so nothing Envoy adds
/// afterwards (`x-forwarded-*`, `x-request-id`) can break the signature.
pub fn upstream_auth_headers(
    keys: &mut SigningKeyCache,
    auth: &UpstreamAuth,
    region: &str,
    host: &str,
    path: &str,
    body: &[u8],
    now: SystemTime,
) -> Result<Vec<(String, String)>, GatewayError> {
    match auth {
        UpstreamAuth::Bearer(token) => {
            Ok(vec![("authorization".into(), format!("Bearer {token}"))])
        }
        UpstreamAuth::SigV4 {
            access_key_id,
            secret_access_key,
            session_token,
        } => {
            let key = SigningKey {
                access_key_id,
                secret_access_key,
                session_token: session_token.as_deref(),
            };
            sigv4_bedrock(keys, &key, region, host, path, body, now)
        }
        // The host passes fetched credentials as a key (`credentials::Signer`).
        UpstreamAuth::Fetched(_) => Err(GatewayError::new(
            ErrorKind::Internal,
            "credentials from an endpoint are signed with the host's fetched key",
        )),
        UpstreamAuth::Envoy => Ok(Vec::new()),
    }
}

/// SigV4 headers for a Bedrock request signed with `key` (see [`upstream_auth_headers`]).
pub fn sigv4_bedrock(
    keys: &mut SigningKeyCache,
    key: &SigningKey<'_>,
    region: &str,
    host: &str,
    path: &str,
    body: &[u8],
    now: SystemTime,
) -> Result<Vec<(String, String)>, GatewayError> {
    if let Some(headers) = bedrock_sigv4_headers(keys, key, region, host, path, body, now) {
        return Ok(headers);
    }
    let uri = format!("https://{host}{path}");
    sigv4_headers(
        key,
        SIGNING_NAME,
        region,
        "POST",
        &uri,
        &[("host", host)],
        body,
        now,
    )
}

/// SigV4 headers for Bedrock's one request shape: `POST`, a path of plain segments, no query,
/// `host` and `x-amz-date` (and the session token) signed, the payload hashed. `None` when the
/// request is not of that shape (values needing whitespace folding, dot segments, a query),
/// which then goes through the general signer.
pub fn bedrock_sigv4_headers(
    keys: &mut SigningKeyCache,
    key: &SigningKey<'_>,
    region: &str,
    host: &str,
    path: &str,
    body: &[u8],
    now: SystemTime,
) -> Option<Vec<(String, String)>> {
    let token = key.session_token;
    let plain_value = |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic());
    if !plain_value(host) || !token.is_none_or(plain_value) || !is_plain_path(path) {
        return None;
    }
    let secs = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    let amz_date = amz_date(secs);
    let date = amz_date.get(..8)?;
    let signed_headers = if token.is_some() {
        "host;x-amz-date;x-amz-security-token"
    } else {
        "host;x-amz-date"
    };

    let mut canonical = String::with_capacity(320 + path.len() + token.map_or(0, str::len));
    canonical.push_str("POST\n");
    encode_path_again(&mut canonical, path);
    let _ = writeln!(canonical, "\n\nhost:{host}\nx-amz-date:{amz_date}");
    if let Some(token) = token {
        let _ = writeln!(canonical, "x-amz-security-token:{token}");
    }
    let _ = write!(
        canonical,
        "\n{signed_headers}\n{}",
        hex::encode(Sha256::digest(body))
    );

    let scope = format!("{date}/{region}/{SIGNING_NAME}/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let signature = keys.with_key(key.secret_access_key, region, date, now, |signing_key| {
        v4::calculate_signature(signing_key, string_to_sign.as_bytes())
    });
    let mut headers = Vec::with_capacity(3);
    headers.push((
        "authorization".to_string(),
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            key.access_key_id
        ),
    ));
    headers.push(("x-amz-date".to_string(), amz_date));
    if let Some(token) = token {
        headers.push(("x-amz-security-token".to_string(), token.to_string()));
    }
    Some(headers)
}

/// Segments free of dot segments and empty segments, in plain ASCII: the canonical URI is then
/// the path with each byte outside the unreserved set encoded once more.
fn is_plain_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    path.bytes()
        .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#')
        && rest
            .split('/')
            .all(|segment| !matches!(segment, "" | "." | ".."))
}

fn encode_path_again(out: &mut String, path: &str) {
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// `YYYYMMDD'T'HHMMSS'Z'` in UTC.
fn amz_date(secs: u64) -> String {
    let (y, m, d) = period::civil_from_days(secs / 86_400);
    let s = secs % 86_400;
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// The derived signing key (four chained HMACs) is valid for a UTC day, region and service,
/// and a host signs with one set of credentials: the last one is kept rather than derived per
/// request. A value the host owns and passes to every signing: the filter keeps one per VM,
/// the Spin component one per request (its instances live for one).
#[derive(Default)]
pub struct SigningKeyCache {
    kept: Option<DerivedKey>,
}

struct DerivedKey {
    secret: String,
    region: String,
    date: String,
    key: Vec<u8>,
}

impl std::fmt::Debug for SigningKeyCache {
    // The key and the secret never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyCache")
            .field("region", &self.kept.as_ref().map(|k| k.region.as_str()))
            .field("date", &self.kept.as_ref().map(|k| k.date.as_str()))
            .finish_non_exhaustive()
    }
}

impl SigningKeyCache {
    /// Runs `f` with the signing key of `secret`, `region` and `date` (`YYYYMMDD` of `now`),
    /// derived only when the kept one is for another.
    fn with_key<T>(
        &mut self,
        secret: &str,
        region: &str,
        date: &str,
        now: SystemTime,
        f: impl FnOnce(&[u8]) -> T,
    ) -> T {
        let kept = self
            .kept
            .take()
            .filter(|k| k.secret == secret && k.region == region && k.date == date)
            .unwrap_or_else(|| DerivedKey {
                secret: secret.to_string(),
                region: region.to_string(),
                date: date.to_string(),
                key: v4::generate_signing_key(secret, now, region, SIGNING_NAME)
                    .as_ref()
                    .to_vec(),
            });
        let out = f(&kept.key);
        self.kept = Some(kept);
        out
    }
}

/// Credentials to sign with.
pub struct SigningKey<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub session_token: Option<&'a str>,
}

/// SigV4 headers (`authorization`, `x-amz-date`, `x-amz-security-token`) for a request whose
/// listed `headers` are all signed. The general form, so AWS's published vectors exercise the
/// same code that signs Bedrock requests.
#[allow(clippy::too_many_arguments)]
pub fn sigv4_headers(
    key: &SigningKey<'_>,
    service: &str,
    region: &str,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    now: SystemTime,
) -> Result<Vec<(String, String)>, GatewayError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        GatewayError::new(
            ErrorKind::Internal,
            format!("could not sign the upstream request ({what}: {e})"),
        )
    };
    let identity = Credentials::new(
        key.access_key_id,
        key.secret_access_key,
        key.session_token.map(str::to_string),
        None,
        "tollgate",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| fail("parameters", &e))?
        .into();
    let request = SignableRequest::new(
        method,
        uri,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| fail("request", &e))?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| fail("signature", &e))?
        .into_parts();
    let (headers, _params) = instructions.into_parts();
    Ok(headers
        .into_iter()
        .map(|h| (h.name().to_string(), h.value().to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn creds(token: Option<&str>) -> UpstreamAuth {
        UpstreamAuth::SigV4 {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: token.map(Into::into),
        }
    }

    fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
        h.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn bearer_mode_sends_the_api_key() {
        let h = upstream_auth_headers(
            &mut SigningKeyCache::default(),
            &UpstreamAuth::Bearer("ABSK-x".into()),
            "us-east-1",
            "h",
            "/",
            b"",
            UNIX_EPOCH,
        )
        .unwrap();
        assert_eq!(
            h,
            vec![("authorization".to_string(), "Bearer ABSK-x".to_string())]
        );
    }

    /// AWS's SigV4 test suite (aws-sig-v4-test-suite): 2015-08-30T12:36:00Z, us-east-1,
    /// service `service`, host example.amazonaws.com.
    #[test]
    fn published_test_vectors() {
        let key = SigningKey {
            access_key_id: "AKIDEXAMPLE",
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            session_token: None,
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        for (name, method, uri, signature) in [
            (
                "get-vanilla",
                "GET",
                "https://example.amazonaws.com/",
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
            (
                "post-vanilla",
                "POST",
                "https://example.amazonaws.com/",
                "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            ),
            (
                "get-vanilla-query-order-key-case",
                "GET",
                "https://example.amazonaws.com/?Param2=value2&Param1=value1",
                "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
            ),
        ] {
            let h = sigv4_headers(
                &key,
                "service",
                "us-east-1",
                method,
                uri,
                &[("host", "example.amazonaws.com")],
                b"",
                now,
            )
            .unwrap();
            assert_eq!(
                header(&h, "authorization").unwrap(),
                format!(
                    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                     SignedHeaders=host;x-amz-date, Signature={signature}"
                ),
                "{name}"
            );
        }
    }

    #[test]
    fn signs_with_bedrock_scope_and_session_token() {
        // 2015-08-30T12:36:00Z, the date of AWS's SigV4 test suite.
        let now = UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        let h = upstream_auth_headers(
            &mut SigningKeyCache::default(),
            &creds(Some("TOKEN")),
            "us-west-2",
            "bedrock-runtime.us-west-2.amazonaws.com",
            "/model/us.anthropic.claude-haiku-4-5-20251001-v1%3A0/converse",
            b"{}",
            now,
        )
        .unwrap();
        assert_eq!(header(&h, "x-amz-date"), Some("20150830T123600Z"));
        assert_eq!(header(&h, "x-amz-security-token"), Some("TOKEN"));
        let auth = header(&h, "authorization").unwrap();
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-west-2/bedrock/aws4_request, "
            ),
            "{auth}"
        );
        assert!(
            auth.contains("SignedHeaders=host;x-amz-date;x-amz-security-token,"),
            "{auth}"
        );
    }

    fn sorted(mut h: Vec<(String, String)>) -> Vec<(String, String)> {
        h.sort();
        h
    }

    /// The direct Bedrock signer against aws-sigv4's general one, over model IDs with every
    /// kind of character, hosts with ports, tokens, bodies, and times that cross UTC days
    /// (so the kept signing key must be re-derived) with secrets and regions alternating.
    #[test]
    fn direct_signer_agrees_with_aws_sigv4() {
        let ids = [
            "us.anthropic.claude-haiku-4-5-20251001-v1:0",
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3",
            "amazon.nova-lite-v1:0",
            "weird id+with~odd*chars(and)%-é",
        ];
        let hosts = [
            "bedrock-runtime.us-west-2.amazonaws.com",
            "127.0.0.1:9100",
            "Bedrock-Runtime.eu-west-1.amazonaws.com",
        ];
        let secrets = [
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "other+/secret==",
        ];
        let tokens = [
            None,
            Some("IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ=="),
        ];
        // One cache for all of them, as a host keeps it.
        let mut keys = SigningKeyCache::default();
        let mut checked = 0;
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..240u64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let id = ids[(seed % 4) as usize];
            let op = [
                "converse",
                "converse-stream",
                "invoke",
                "invoke-with-response-stream",
            ][(seed >> 8) as usize % 4];
            // Raw IDs too: their `:` is then encoded by the signer alone.
            let path = if (seed >> 48) & 1 == 1 && !id.contains(['/', ' ', '%']) && id.is_ascii() {
                format!("/model/{id}/{op}")
            } else {
                format!(
                    "/model/{}/{op}",
                    crate::request::model_id::encode_path_label(id)
                )
            };
            let host = hosts[(seed >> 16) as usize % hosts.len()];
            let key = SigningKey {
                access_key_id: "AKIDEXAMPLE",
                secret_access_key: secrets[(seed >> 24) as usize % 2],
                session_token: tokens[(seed >> 32) as usize % 2],
            };
            let region = ["us-east-1", "eu-central-1"][(seed >> 40) as usize % 2];
            // Every few requests the clock moves into the next day, at odd seconds.
            let now = UNIX_EPOCH + Duration::from_secs(1_763_683_199 + i / 3 * 86_400 + i % 3);
            let body = vec![b'x' ^ (seed as u8); (seed % 3000) as usize];
            let direct = bedrock_sigv4_headers(&mut keys, &key, region, host, &path, &body, now)
                .expect("Bedrock's request shape");
            let general = sigv4_headers(
                &key,
                SIGNING_NAME,
                region,
                "POST",
                &format!("https://{host}{path}"),
                &[("host", host)],
                &body,
                now,
            )
            .unwrap();
            assert_eq!(
                sorted(direct),
                sorted(general),
                "{path} {host} {region} {now:?}"
            );
            checked += 1;
        }
        assert_eq!(checked, 240);
    }

    #[test]
    fn requests_outside_the_shape_use_the_general_signer() {
        let key = SigningKey {
            access_key_id: "AKIDEXAMPLE",
            secret_access_key: "secret",
            session_token: Some("has space"),
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        assert!(bedrock_sigv4_headers(
            &mut SigningKeyCache::default(),
            &key,
            "us-east-1",
            "h",
            "/model/x/converse",
            b"",
            now
        )
        .is_none());
        let key = SigningKey {
            session_token: None,
            ..key
        };
        for path in [
            "/model/../converse",
            "/model//converse",
            "/model/x?a=b",
            "model/x",
        ] {
            assert!(
                bedrock_sigv4_headers(
                    &mut SigningKeyCache::default(),
                    &key,
                    "us-east-1",
                    "h",
                    path,
                    b"",
                    now
                )
                .is_none(),
                "{path}"
            );
        }
        // Still signed, by the general path.
        let auth = UpstreamAuth::SigV4 {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "secret".into(),
            session_token: Some("has space".into()),
        };
        let h = upstream_auth_headers(
            &mut SigningKeyCache::default(),
            &auth,
            "us-east-1",
            "h",
            "/model/x/converse",
            b"",
            now,
        )
        .unwrap();
        assert!(header(&h, "authorization").is_some());
    }

    #[test]
    fn the_kept_key_follows_the_day_and_region_and_never_shows_the_secret() {
        let mut keys = SigningKeyCache::default();
        let auth = creds(None);
        let sign = |keys: &mut SigningKeyCache, region: &str, secs: u64| {
            let now = UNIX_EPOCH + Duration::from_secs(secs);
            let path = "/model/amazon.nova-lite-v1%3A0/converse";
            let kept = upstream_auth_headers(keys, &auth, region, "h", path, b"{}", now).unwrap();
            let fresh = upstream_auth_headers(
                &mut SigningKeyCache::default(),
                &auth,
                region,
                "h",
                path,
                b"{}",
                now,
            )
            .unwrap();
            assert_eq!(kept, fresh, "{region} {secs}");
        };
        sign(&mut keys, "us-east-1", 1_440_938_160);
        let shown = format!("{keys:?}");
        assert!(
            shown.contains("us-east-1") && shown.contains("20150830"),
            "{shown}"
        );
        assert!(
            !shown.contains("wJalr") && !shown.contains("EXAMPLEKEY"),
            "{shown}"
        );
        // The next day, another region, and back: each signature is the one a fresh key makes.
        sign(&mut keys, "us-east-1", 1_440_938_160 + 86_400);
        assert!(format!("{keys:?}").contains("20150831"));
        sign(&mut keys, "eu-west-1", 1_440_938_160 + 86_400);
        assert!(format!("{keys:?}").contains("eu-west-1"));
        sign(&mut keys, "us-east-1", 1_440_938_160);
    }

    #[test]
    fn amz_date_is_utc() {
        assert_eq!(amz_date(1_440_938_160), "20150830T123600Z");
        assert_eq!(amz_date(951_868_799), "20000229T235959Z");
        assert_eq!(amz_date(0), "19700101T000000Z");
    }
}
