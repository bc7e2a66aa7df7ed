//! Authenticating the upstream request to Bedrock: SigV4 with the `aws-sigv4` crate, or a
//! Bedrock API key as a bearer token.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;

use crate::config::UpstreamAuth;
use crate::error::{ErrorKind, GatewayError};

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
            let uri = format!("https://{host}{path}");
            sigv4_headers(
                &key,
                SIGNING_NAME,
                region,
                "POST",
                &uri,
                &[("host", host)],
                body,
                now,
            )
        }
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
    use std::time::{Duration, UNIX_EPOCH};

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
}
