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
    let (access_key_id, secret_access_key, session_token) = match auth {
        UpstreamAuth::Bearer(token) => return Ok(vec![("authorization".into(), format!("Bearer {token}"))]),
        UpstreamAuth::SigV4 { access_key_id, secret_access_key, session_token } => {
            (access_key_id, secret_access_key, session_token)
        }
    };
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        GatewayError::new(ErrorKind::Internal, format!("could not sign the upstream request ({what}: {e})"))
    };
    let identity = Credentials::new(
        access_key_id.as_str(),
        secret_access_key.as_str(),
        session_token.clone(),
        None,
        "tollgate",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SIGNING_NAME)
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| fail("parameters", &e))?
        .into();
    let uri = format!("https://{host}{path}");
    let request = SignableRequest::new("POST", &uri, [("host", host)].into_iter(), SignableBody::Bytes(body))
        .map_err(|e| fail("request", &e))?;
    let (instructions, _signature) = sign(request, &params).map_err(|e| fail("signature", &e))?.into_parts();
    let (headers, _params) = instructions.into_parts();
    Ok(headers.into_iter().map(|h| (h.name().to_string(), h.value().to_string())).collect())
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
        h.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    #[test]
    fn bearer_mode_sends_the_api_key() {
        let h = upstream_auth_headers(&UpstreamAuth::Bearer("ABSK-x".into()), "us-east-1", "h", "/", b"", UNIX_EPOCH)
            .unwrap();
        assert_eq!(h, vec![("authorization".to_string(), "Bearer ABSK-x".to_string())]);
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
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-west-2/bedrock/aws4_request, "),
            "{auth}"
        );
        assert!(auth.contains("SignedHeaders=host;x-amz-date;x-amz-security-token,"), "{auth}");
    }
}
