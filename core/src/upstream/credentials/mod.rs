//! Credentials that rotate: fetched by the host from an AWS credentials endpoint (EC2 instance
//! metadata, or the container endpoint of ECS task roles and EKS Pod Identity), shared by every
//! worker or instance, refreshed ahead of expiry, never used once expired.
//!
//! Core holds the rules and no I/O: [`Source`] (where the credentials come from), [`fetch`] (the
//! endpoint's HTTP exchange, one call at a time), [`refresh`] (when to fetch, who fetches, how
//! to back off) and [`Fetched`] (the credentials with their expiry, as hosts store and share
//! them). Hosts make the HTTP calls, keep [`Fetched`] where every VM or instance sees it, and
//! pass it to [`crate::exchange::Exchange::upstream_request_with`] with each request.

pub mod fetch;
pub mod refresh;
mod source;

use std::fmt;
use std::time::SystemTime;

pub use source::{Endpoint, Source, SourceKind};

use crate::accounting::metrics::{Metric, Update};
use crate::config::error::ConfigError;
use crate::error::{ErrorKind, GatewayError};
use crate::upstream::signing::{self, SigningKey, SigningKeyCache};

/// How Tollgate authenticates to Bedrock.
#[derive(Clone, PartialEq, Eq)]
pub enum UpstreamAuth {
    SigV4 {
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
    },
    Bearer(String),
    /// Credentials the host fetches from this source and refreshes (`crate::credentials`).
    Fetched(Source),
    /// Tollgate does not sign: Envoy's `aws_request_signing` filter after it does.
    Envoy,
}

impl fmt::Debug for UpstreamAuth {
    // Secrets never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SigV4 {
                access_key_id,
                session_token,
                ..
            } => f
                .debug_struct("SigV4")
                .field("access_key_id", access_key_id)
                .field(
                    "session_token",
                    &session_token.as_ref().map(|_| "<redacted>"),
                )
                .finish_non_exhaustive(),
            Self::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Self::Fetched(source) => write!(f, "Fetched({source:?})"),
            Self::Envoy => f.write_str("Envoy"),
        }
    }
}

/// Credentials fetched from an endpoint, with when they expire and when they were fetched (all
/// times in milliseconds since the Unix epoch, from the host's clock).
#[derive(Clone, PartialEq, Eq)]
pub struct Fetched {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    pub expires_ms: u64,
    pub fetched_ms: u64,
}

impl fmt::Debug for Fetched {
    // Secrets never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetched")
            .field("expires_ms", &self.expires_ms)
            .field("fetched_ms", &self.fetched_ms)
            .finish_non_exhaustive()
    }
}

/// The longest a request may take from being signed to reaching AWS: credentials closer to
/// their expiry than this (or a tenth of their lifetime, if shorter) are no longer used.
pub const SIGNING_MARGIN_MS: u64 = 60_000;

/// Encoding version of [`Fetched::encode`].
const FETCHED_V1: u8 = 1;

impl Fetched {
    /// How long they were valid for when fetched.
    pub fn lifetime_ms(&self) -> u64 {
        self.expires_ms.saturating_sub(self.fetched_ms)
    }

    /// Whether a request signed at `now_ms` reaches AWS before they expire.
    pub fn usable(&self, now_ms: u64) -> bool {
        let margin = SIGNING_MARGIN_MS.min(self.lifetime_ms() / 10);
        now_ms.saturating_add(margin) < self.expires_ms
    }

    /// The key to sign with.
    pub fn signing_key(&self) -> SigningKey<'_> {
        SigningKey {
            access_key_id: &self.access_key_id,
            secret_access_key: &self.secret_access_key,
            session_token: self.session_token.as_deref(),
        }
    }

    /// The bytes hosts store and share (Envoy shared data, Spin's key-value store).
    pub fn encode(&self) -> Vec<u8> {
        let token = self.session_token.as_deref().unwrap_or("");
        let mut out = Vec::with_capacity(
            29 + self.access_key_id.len() + self.secret_access_key.len() + token.len(),
        );
        out.push(FETCHED_V1);
        out.extend_from_slice(&self.expires_ms.to_le_bytes());
        out.extend_from_slice(&self.fetched_ms.to_le_bytes());
        for s in [&self.access_key_id[..], &self.secret_access_key[..], token] {
            out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out
    }

    /// Reads what [`Fetched::encode`] wrote; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (&version, rest) = bytes.split_first()?;
        if version != FETCHED_V1 {
            return None;
        }
        let mut r = Reader(rest);
        let expires_ms = r.u64()?;
        let fetched_ms = r.u64()?;
        let access_key_id = r.string()?;
        let secret_access_key = r.string()?;
        let token = r.string()?;
        if !r.0.is_empty() || access_key_id.is_empty() || secret_access_key.is_empty() {
            return None;
        }
        Some(Self {
            access_key_id,
            secret_access_key,
            session_token: (!token.is_empty()).then_some(token),
            expires_ms,
            fetched_ms,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<String> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?);
        let bytes = self.take(usize::try_from(len).ok()?)?;
        String::from_utf8(bytes.to_vec()).ok()
    }
}

/// The stat a finished fetch moves (Envoy).
pub fn refresh_update(succeeded: bool) -> Update<'static> {
    let metric = if succeeded {
        Metric::CredentialRefreshes
    } else {
        Metric::CredentialRefreshFailures
    };
    Update::new(metric, [], 1)
}

/// `2026-11-29T15:35:00Z` (for logs: when credentials expire).
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (y, m, d) = crate::quota::period::civil_from_days(secs / 86_400);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// How one request is authenticated upstream.
pub enum Signer<'a> {
    /// Credentials or a Bedrock API key from the configuration.
    Configured(&'a UpstreamAuth),
    /// Credentials the host fetched.
    Fetched(SigningKey<'a>),
    /// Envoy's `aws_request_signing` filter, after Tollgate, signs the request.
    Envoy,
}

impl<'a> Signer<'a> {
    /// The signer for a request at `now_ms`: for credentials of a [`Source`], the host's
    /// `fetched` ones, if still usable; otherwise the request is refused with 503 rather than
    /// sent with credentials that would fail.
    pub fn for_request(
        auth: &'a UpstreamAuth,
        fetched: Option<&'a Fetched>,
        now_ms: u64,
    ) -> Result<Self, GatewayError> {
        match auth {
            UpstreamAuth::Fetched(source) => match fetched {
                Some(f) if f.usable(now_ms) => Ok(Self::Fetched(f.signing_key())),
                Some(_) => Err(unavailable(source, "the last ones fetched have expired")),
                None => Err(unavailable(source, "none have been fetched yet")),
            },
            UpstreamAuth::Envoy => Ok(Self::Envoy),
            configured => Ok(Self::Configured(configured)),
        }
    }

    /// The headers that authenticate the request (none when Envoy signs it).
    pub fn headers(
        &self,
        keys: &mut SigningKeyCache,
        region: &str,
        host: &str,
        path: &str,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Vec<(String, String)>, GatewayError> {
        match self {
            Self::Configured(auth) => {
                signing::upstream_auth_headers(keys, auth, region, host, path, body, now)
            }
            Self::Fetched(key) => signing::sigv4_bedrock(keys, key, region, host, path, body, now),
            Self::Envoy => Ok(Vec::new()),
        }
    }
}

fn unavailable(source: &Source, why: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::CredentialsUnavailable,
        format!(
            "the gateway has no valid AWS credentials ({why}; {} is retried in the background)",
            source.describe()
        ),
    )
}

/// Credentials of type `envoy` on a host without Envoy's signing filter (Spin).
pub fn envoy_signing_unavailable() -> ConfigError {
    ConfigError::new(
        "credentials.type",
        "`envoy` leaves signing to Envoy's aws_request_signing filter, which this host does not \
         have: use `instance_metadata`, `container`, `environment`, `inline` or `bedrock_api_key`",
    )
}

/// A container token in a file (EKS Pod Identity): Tollgate's components cannot read files (a
/// Wasm filter in Envoy has no filesystem; the Spin component is given none).
pub fn token_file_unreadable() -> ConfigError {
    ConfigError::new(
        "credentials.authorization_token_file",
        "Tollgate cannot read the container authorization token file (EKS Pod Identity, \
         AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE): on Envoy use {\"type\": \"envoy\"} with \
         Envoy's aws_request_signing filter, which reads it; or give the token inline",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetched(expires_ms: u64, fetched_ms: u64) -> Fetched {
        Fetched {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: "secret/with+chars=".into(),
            session_token: Some("token".into()),
            expires_ms,
            fetched_ms,
        }
    }

    #[test]
    fn encoding_round_trips_and_refuses_garbage() {
        for f in [fetched(10_000, 1_000), {
            let mut f = fetched(u64::MAX, 0);
            f.session_token = None;
            f
        }] {
            assert_eq!(Fetched::decode(&f.encode()), Some(f.clone()));
        }
        let good = fetched(10_000, 1_000).encode();
        for cut in 0..good.len() {
            assert_eq!(Fetched::decode(&good[..cut]), None, "{cut}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(Fetched::decode(&longer), None);
        let mut other_version = good;
        other_version[0] = 2;
        assert_eq!(Fetched::decode(&other_version), None);
        assert_eq!(Fetched::decode(&[1, 0xff, 0xff]), None);
    }

    #[test]
    fn usable_until_shortly_before_expiry() {
        // An hour-long set stops being used a minute before it expires.
        let f = fetched(3_600_000 + 5_000, 5_000);
        assert!(f.usable(3_600_000 + 5_000 - 60_001));
        assert!(!f.usable(3_600_000 + 5_000 - 60_000));
        // A ten-second set, a second before.
        let f = fetched(20_000, 10_000);
        assert!(f.usable(18_999));
        assert!(!f.usable(19_000));
        assert!(!f.usable(25_000));
    }

    fn config(credentials: &str) -> crate::config::Config {
        let json = format!(
            r#"{{"region":"us-east-1","upstream_host":"127.0.0.1:9100",
                "api_keys":[{{"id":"a","sha256":"{}","models":["*"],
                              "limits":{{"max_concurrent_requests":1}}}}],
                "credentials":{credentials}}}"#,
            hex::encode(crate::request::auth::hash_key("key-a")),
        );
        crate::config::Config::parse(json.as_bytes(), &|_| None).unwrap()
    }

    fn exchange(config: &crate::config::Config) -> Box<crate::exchange::Exchange> {
        let headers = [
            ("authorization", "Bearer key-a"),
            ("x-amz-security-token", "client's"),
        ];
        match crate::exchange::admit(
            config,
            "POST",
            "/model/us.amazon.nova-lite-v1:0/converse",
            &headers,
            0,
        ) {
            crate::exchange::Admission::Forward(ex) => ex,
            _ => panic!("admitted"),
        }
    }

    /// Without usable fetched credentials a request is refused with 503 before anything is
    /// reserved (the key's one concurrency slot stays free); with them it is signed with them.
    #[test]
    fn requests_are_signed_with_fetched_credentials_or_refused_503() {
        use crate::quota::counters::CasCounters;
        use crate::store::memory::MemoryStore;
        let config = config(r#"{"type":"container","endpoint":"http://127.0.0.1:1/c"}"#);
        let store = MemoryStore::default();
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000);
        let body = br#"{"messages":[]}"#;
        let expired = fetched(1_000_000, 900_000);
        for held in [None, Some(&expired)] {
            let mut ex = exchange(&config);
            let e = ex
                .upstream_request_with(
                    &config,
                    &CasCounters(&store),
                    &mut SigningKeyCache::default(),
                    body,
                    now,
                    held,
                )
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::CredentialsUnavailable);
            let reply = e.to_bedrock_reply();
            assert_eq!(reply.status, 503);
            assert!(reply
                .headers
                .contains(&("x-amzn-errortype", "ServiceUnavailableException".into())));
            assert!(e.message.contains("127.0.0.1:1"), "{}", e.message);
        }
        let valid = fetched(2_000_000, 1_000_000);
        let mut ex = exchange(&config);
        let up = ex
            .upstream_request_with(
                &config,
                &CasCounters(&store),
                &mut SigningKeyCache::default(),
                body,
                now,
                Some(&valid),
            )
            .unwrap();
        let header = |n: &str| {
            up.set_headers
                .iter()
                .find(|(h, _)| h == n)
                .map(|(_, v)| v.as_str())
        };
        assert!(header("authorization")
            .unwrap()
            .starts_with("AWS4-HMAC-SHA256 Credential=ASIAEXAMPLE/"));
        assert_eq!(header("x-amz-security-token"), Some("token"));
    }

    /// Type `envoy`: the request is rewritten and the client's credentials removed, but nothing
    /// is signed: Envoy's filter after Tollgate does that.
    #[test]
    fn envoy_signing_sets_no_credentials() {
        use crate::quota::counters::CasCounters;
        use crate::store::memory::MemoryStore;
        let config = config(r#"{"type":"envoy"}"#);
        let mut ex = exchange(&config);
        let up = ex
            .upstream_request(
                &config,
                &CasCounters(&MemoryStore::default()),
                &mut SigningKeyCache::default(),
                b"{}",
                std::time::UNIX_EPOCH,
            )
            .unwrap();
        assert!(up.set_headers.is_empty(), "{:?}", up.set_headers);
        assert_eq!(up.path, "/model/us.amazon.nova-lite-v1%3A0/converse");
        assert!(up.remove_headers.contains(&"authorization".to_string()));
        assert!(up
            .remove_headers
            .contains(&"x-amz-security-token".to_string()));
    }

    #[test]
    fn rfc3339_round_trips_with_the_parser() {
        for ms in [0, 1_764_430_000_000, 253_402_300_799_000] {
            assert_eq!(fetch::parse_rfc3339_ms(&rfc3339(ms)), Some(ms));
        }
    }

    #[test]
    fn debug_shows_no_secret() {
        let shown = format!("{:?}", fetched(1, 0));
        assert!(!shown.contains("secret") && !shown.contains("token") && !shown.contains("ASIA"));
    }
}
