//! One fetch of credentials from a [`Source`], as HTTP calls the host makes one at a time.
//!
//! Instance metadata (IMDSv2): `PUT /latest/api/token` for a session token, then
//! `GET /latest/meta-data/iam/security-credentials/` for the role's name, then the role's
//! credentials. Container endpoint: one `GET`, with `Authorization: <token>` when there is one.
//! Both answer JSON with `AccessKeyId`, `SecretAccessKey`, `Token` and `Expiration`.
//!
//! Errors say what failed and never quote a response body, a token or a key.

use std::fmt;

use serde::Deserialize;

use super::{Fetched, Source, SourceKind};
use crate::quota::period;

/// How long each call may take (hosts time it out; the AWS SDKs use 1 to 2 s).
pub const CALL_TIMEOUT_MS: u64 = 5_000;
/// Lifetime asked of an IMDSv2 session token.
const IMDS_TOKEN_TTL_S: &str = "21600";
const IMDS_CREDENTIALS_PATH: &str = "/latest/meta-data/iam/security-credentials/";
/// Credential responses are a few kilobytes; anything much larger is not one.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// One HTTP request to make to the source's endpoint (its scheme and authority).
#[derive(Clone, PartialEq, Eq)]
pub struct Call {
    pub method: &'static str,
    /// Path and query.
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
}

impl fmt::Debug for Call {
    // Header values hold tokens.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// Why a fetch failed, for the log (never a secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchError(pub String);

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a fetch is.
#[derive(Clone, PartialEq, Eq)]
pub struct Fetch {
    step: Step,
}

#[derive(Clone, PartialEq, Eq)]
enum Step {
    ImdsToken,
    ImdsRole { token: String },
    ImdsCredentials { token: String },
    Container,
}

impl fmt::Debug for Fetch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.step {
            Step::ImdsToken => "Fetch(imds token)",
            Step::ImdsRole { .. } => "Fetch(imds role)",
            Step::ImdsCredentials { .. } => "Fetch(imds credentials)",
            Step::Container => "Fetch(container)",
        })
    }
}

/// What to do after a response.
#[derive(Debug)]
pub enum Progress {
    /// Make this call next.
    Next(Fetch, Call),
    Done(Fetched),
}

impl Fetch {
    /// The first call of a fetch from `source`.
    pub fn start(source: &Source) -> (Self, Call) {
        let prefix = &source.endpoint.path;
        match &source.kind {
            SourceKind::InstanceMetadata => (
                Self {
                    step: Step::ImdsToken,
                },
                Call {
                    method: "PUT",
                    path: format!("{prefix}/latest/api/token"),
                    headers: vec![(
                        "x-aws-ec2-metadata-token-ttl-seconds",
                        IMDS_TOKEN_TTL_S.to_string(),
                    )],
                },
            ),
            SourceKind::Container {
                authorization_token,
            } => (
                Self {
                    step: Step::Container,
                },
                Call {
                    method: "GET",
                    path: if prefix.is_empty() {
                        "/".to_string()
                    } else {
                        prefix.clone()
                    },
                    headers: authorization_token
                        .iter()
                        .map(|t| ("authorization", t.clone()))
                        .collect(),
                },
            ),
        }
    }

    /// Takes the response to the last call (`status` 0: no response at all) at `now_ms`.
    pub fn on_response(
        self,
        source: &Source,
        status: u16,
        body: &[u8],
        now_ms: u64,
    ) -> Result<Progress, FetchError> {
        let what = match self.step {
            Step::ImdsToken => "the instance metadata token",
            Step::ImdsRole { .. } => "the instance profile's role name",
            Step::ImdsCredentials { .. } | Step::Container => "the credentials",
        };
        match status {
            200 => {}
            0 => {
                return Err(FetchError(format!(
                    "no response for {what} from {}",
                    source.describe()
                )))
            }
            s => {
                return Err(FetchError(format!(
                    "{} answered {s} for {what}",
                    source.describe()
                )))
            }
        }
        if body.len() > MAX_RESPONSE_BYTES {
            return Err(FetchError(format!(
                "{} answered {} bytes for {what}, too many",
                source.describe(),
                body.len()
            )));
        }
        let prefix = &source.endpoint.path;
        match self.step {
            Step::ImdsToken => {
                let token = std::str::from_utf8(body).map(str::trim).unwrap_or("");
                if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(FetchError(format!(
                        "{} answered an empty or malformed metadata token",
                        source.describe()
                    )));
                }
                let token = token.to_string();
                Ok(Progress::Next(
                    Self {
                        step: Step::ImdsRole {
                            token: token.clone(),
                        },
                    },
                    Call {
                        method: "GET",
                        path: format!("{prefix}{IMDS_CREDENTIALS_PATH}"),
                        headers: vec![("x-aws-ec2-metadata-token", token)],
                    },
                ))
            }
            Step::ImdsRole { token } => {
                let role = std::str::from_utf8(body)
                    .ok()
                    .and_then(|s| s.lines().map(str::trim).find(|l| !l.is_empty()))
                    .unwrap_or("");
                if !is_role_name(role) {
                    return Err(FetchError(format!(
                        "{} names no IAM role (is an instance profile attached?)",
                        source.describe()
                    )));
                }
                let path = format!("{prefix}{IMDS_CREDENTIALS_PATH}{role}");
                Ok(Progress::Next(
                    Self {
                        step: Step::ImdsCredentials {
                            token: token.clone(),
                        },
                    },
                    Call {
                        method: "GET",
                        path,
                        headers: vec![("x-aws-ec2-metadata-token", token)],
                    },
                ))
            }
            Step::ImdsCredentials { .. } | Step::Container => parse_credentials(body, now_ms)
                .map(Progress::Done)
                .map_err(|why| FetchError(format!("{}: {why}", source.describe()))),
        }
    }
}

/// The JSON both endpoints answer (IMDS adds `Code`, `LastUpdated`, `Type`; ECS `RoleArn`).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Document {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    access_key_id: Option<String>,
    #[serde(default)]
    secret_access_key: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    expiration: Option<String>,
}

fn parse_credentials(body: &[u8], now_ms: u64) -> Result<Fetched, String> {
    // serde's messages can quote values: say only that the document is not the expected one.
    let doc: Document = serde_json::from_slice(body)
        .map_err(|_| "the response is not a JSON credentials document".to_string())?;
    if let Some(code) = doc.code.as_deref().filter(|c| *c != "Success") {
        let code: String = code
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(64)
            .collect();
        return Err(format!("the credentials document says Code `{code}`"));
    }
    let printable = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
    let field = |v: Option<String>, name: &str| {
        v.filter(|s| printable(s))
            .ok_or_else(|| format!("`{name}` is missing, empty or not printable ASCII"))
    };
    let access_key_id = field(doc.access_key_id, "AccessKeyId")?;
    let secret_access_key = field(doc.secret_access_key, "SecretAccessKey")?;
    let session_token = match doc.token {
        None => None,
        Some(t) if t.is_empty() => None,
        t => Some(field(t, "Token")?),
    };
    let expiration = doc
        .expiration
        .ok_or_else(|| "`Expiration` is missing".to_string())?;
    let expires_ms = parse_rfc3339_ms(&expiration)
        .ok_or_else(|| "`Expiration` is not an RFC 3339 time".to_string())?;
    if expires_ms <= now_ms {
        return Err("the credentials it answered have expired already".to_string());
    }
    Ok(Fetched {
        access_key_id,
        secret_access_key,
        session_token,
        expires_ms,
        fetched_ms: now_ms,
    })
}

fn is_role_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'+' | b'=' | b',' | b'.' | b'@' | b'_' | b'-')
        })
}

/// `2026-11-29T16:35:00Z`, with optional fractional seconds and a `Z` or `±hh:mm` offset, as
/// milliseconds since the Unix epoch (years 1970 to 9999).
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<u64> {
        let digits = b.get(from..from + len)?;
        digits.iter().try_fold(0u64, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + u64::from(d - b'0'))
        })
    };
    let sep = |at: usize, c: &[u8]| b.get(at).is_some_and(|x| c.contains(x));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (h, mi, sec) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if y < 1970
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&d)
        || h > 23
        || mi > 59
        || sec > 60
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0u64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while let Some(&d) = b.get(i).filter(|d| d.is_ascii_digit()) {
            if i - start < 3 {
                millis = millis * 10 + u64::from(d - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..3 {
            millis *= 10;
        }
    }
    let offset_s: i64 = match b.get(i..)? {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let off = i64::try_from(num(i + 1, 2)? * 3600 + num(i + 4, 2)? * 60).ok()?;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let days = period::days_from_civil(y, mo, d);
    let local_s = days * 86_400 + h * 3600 + mi * 60 + sec;
    let utc_s = i64::try_from(local_s).ok()?.checked_sub(offset_s)?;
    let utc_s = u64::try_from(utc_s).ok()?;
    utc_s.checked_mul(1000)?.checked_add(millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::credentials::Source;

    fn env(_: &str) -> Option<String> {
        None
    }

    fn imds() -> Source {
        Source::instance_metadata(Some("http://127.0.0.1:9100".into()), None, &env).unwrap()
    }

    const NOW: u64 = 1_764_430_000_000; // 2025-11-29T15:26:40Z

    fn creds_json(expiration: &str) -> String {
        format!(
            r#"{{"Code":"Success","LastUpdated":"2025-11-29T15:00:00Z","Type":"AWS-HMAC",
               "AccessKeyId":"ASIAEXAMPLE","SecretAccessKey":"s3cr3t/+=","Token":"tok==",
               "Expiration":"{expiration}"}}"#
        )
    }

    #[test]
    fn imdsv2_is_token_then_role_then_credentials() {
        let source = imds();
        let (fetch, call) = Fetch::start(&source);
        assert_eq!(
            (call.method, call.path.as_str()),
            ("PUT", "/latest/api/token")
        );
        assert_eq!(
            call.headers,
            vec![("x-aws-ec2-metadata-token-ttl-seconds", "21600".to_string())]
        );
        let Progress::Next(fetch, call) = fetch
            .on_response(&source, 200, b"AQAEAtoken==", NOW)
            .unwrap()
        else {
            panic!("a second call")
        };
        assert_eq!(
            (call.method, call.path.as_str()),
            ("GET", "/latest/meta-data/iam/security-credentials/")
        );
        assert_eq!(
            call.headers,
            vec![("x-aws-ec2-metadata-token", "AQAEAtoken==".to_string())]
        );
        let Progress::Next(fetch, call) =
            fetch.on_response(&source, 200, b"my-role\n", NOW).unwrap()
        else {
            panic!("a third call")
        };
        assert_eq!(
            call.path,
            "/latest/meta-data/iam/security-credentials/my-role"
        );
        assert_eq!(
            call.headers,
            vec![("x-aws-ec2-metadata-token", "AQAEAtoken==".to_string())]
        );
        let Progress::Done(f) = fetch
            .on_response(
                &source,
                200,
                creds_json("2025-11-29T21:26:40Z").as_bytes(),
                NOW,
            )
            .unwrap()
        else {
            panic!("done")
        };
        assert_eq!(f.access_key_id, "ASIAEXAMPLE");
        assert_eq!(f.secret_access_key, "s3cr3t/+=");
        assert_eq!(f.session_token.as_deref(), Some("tok=="));
        assert_eq!(f.expires_ms, NOW + 6 * 3_600_000);
        assert_eq!(f.fetched_ms, NOW);
    }

    #[test]
    fn container_is_one_get_with_the_token() {
        let source = Source::container(
            Some("http://127.0.0.1:9100/v1/credentials?x=1".into()),
            Some("pod-token".into()),
            None,
            None,
            &env,
        )
        .unwrap();
        let (fetch, call) = Fetch::start(&source);
        assert_eq!(
            (call.method, call.path.as_str()),
            ("GET", "/v1/credentials?x=1")
        );
        assert_eq!(
            call.headers,
            vec![("authorization", "pod-token".to_string())]
        );
        let body = r#"{"AccessKeyId":"ASIA1","SecretAccessKey":"S","Token":"T","Expiration":"2025-11-29T15:36:40.5+00:00","RoleArn":"arn:aws:iam::1:role/r"}"#;
        let Progress::Done(f) = fetch
            .on_response(&source, 200, body.as_bytes(), NOW)
            .unwrap()
        else {
            panic!("done")
        };
        assert_eq!(f.expires_ms, NOW + 600_500);
    }

    #[test]
    fn failures_name_the_step_and_never_a_secret() {
        let source = imds();
        let (fetch, _) = Fetch::start(&source);
        let e = fetch.clone().on_response(&source, 0, b"", NOW).unwrap_err();
        assert!(e.0.contains("no response"), "{e}");
        let e = fetch
            .on_response(&source, 403, b"secret-body", NOW)
            .unwrap_err();
        assert!(e.0.contains("403") && !e.0.contains("secret-body"), "{e}");
        let container =
            Source::container(Some("http://127.0.0.1/c".into()), None, None, None, &env).unwrap();
        let done = |body: &str| {
            let (fetch, _) = Fetch::start(&container);
            fetch.on_response(&container, 200, body.as_bytes(), NOW)
        };
        for (body, says) in [
            ("not json s3cr3t", "not a JSON"),
            (
                r#"{"AccessKeyId":"A","Token":"s3cr3t","Expiration":"2025-11-29T16:00:00Z"}"#,
                "SecretAccessKey",
            ),
            (
                r#"{"AccessKeyId":"A","SecretAccessKey":"s3cr3t","Token":"t"}"#,
                "Expiration",
            ),
            (
                r#"{"AccessKeyId":"A","SecretAccessKey":"s3cr3t","Expiration":"tomorrow"}"#,
                "RFC 3339",
            ),
            (
                r#"{"AccessKeyId":"A","SecretAccessKey":"s3cr3t","Expiration":"2025-11-29T15:00:00Z"}"#,
                "expired",
            ),
            (
                r#"{"AccessKeyId":"A","SecretAccessKey":"s3 cr3t","Expiration":"2025-11-29T16:00:00Z"}"#,
                "SecretAccessKey",
            ),
            (
                r#"{"AccessKeyId":"A","SecretAccessKey":1,"Expiration":"2025-11-29T16:00:00Z"}"#,
                "not a JSON",
            ),
            (
                r#"{"Code":"AssumeRoleUnauthorizedAccess","AccessKeyId":"A"}"#,
                "AssumeRoleUnauthorizedAccess",
            ),
        ] {
            let e = done(body).unwrap_err();
            assert!(e.0.contains(says), "{body}: {e}");
            assert!(!e.0.contains("s3cr3t") && !e.0.contains("s3 cr3t"), "{e}");
        }
        let (fetch, _) = Fetch::start(&source);
        let Progress::Next(fetch, _) = fetch.on_response(&source, 200, b"tok", NOW).unwrap() else {
            panic!()
        };
        let e = fetch.on_response(&source, 200, b"\n", NOW).unwrap_err();
        assert!(e.0.contains("no IAM role"), "{e}");
    }

    /// Whatever an endpoint answers, a fetch ends in credentials or an error, never a panic.
    #[test]
    fn garbage_answers_are_errors_not_panics() {
        let good = creds_json("2025-11-29T21:26:40.25+01:00");
        let mut inputs: Vec<Vec<u8>> = (0..good.len())
            .map(|n| good.as_bytes()[..n].to_vec())
            .collect();
        let mut seed: u32 = 7;
        for _ in 0..500 {
            let mut v = good.as_bytes().to_vec();
            for _ in 0..4 {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let at = seed as usize % v.len();
                v[at] = (seed >> 24) as u8;
            }
            inputs.push(v);
        }
        let source = imds();
        for input in &inputs {
            let _ = parse_rfc3339_ms(&String::from_utf8_lossy(input));
            for step in [
                Step::ImdsToken,
                Step::ImdsRole { token: "t".into() },
                Step::ImdsCredentials { token: "t".into() },
            ] {
                let _ = Fetch { step }.on_response(&source, 200, input, NOW);
            }
        }
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("2025-11-29T15:26:40Z"), Some(NOW));
        assert_eq!(
            parse_rfc3339_ms("2025-11-29T15:26:40.123456Z"),
            Some(NOW + 123)
        );
        assert_eq!(parse_rfc3339_ms("2025-11-29T16:26:40+01:00"), Some(NOW));
        assert_eq!(parse_rfc3339_ms("2025-11-29T14:26:40-01:00"), Some(NOW));
        for bad in [
            "",
            "2025-11-29",
            "2025-11-29T15:26:40",
            "2025-13-29T15:26:40Z",
            "1969-12-31T23:59:59Z",
            "2025-11-29T15:26:40.Z",
            "2025-11-29T15:26:40+0100",
            "2025-11-29T15:26:40Zjunk",
            "２025-11-29T15:26:40Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }
}
