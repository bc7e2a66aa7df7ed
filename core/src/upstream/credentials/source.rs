//! Where fetched credentials come from, as the configuration names it: the endpoint (AWS's own
//! addresses by default, or what the environment says, as the AWS SDKs read it) and, for Envoy,
//! the cluster that reaches it.

use std::fmt;

use crate::config::error::ConfigError;

/// EC2's instance metadata service (IMDS).
pub const INSTANCE_METADATA_ENDPOINT: &str = "http://169.254.169.254";
/// The ECS container credentials host that `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` is relative to.
pub const ECS_CONTAINER_HOST: &str = "http://169.254.170.2";
/// The Envoy cluster credentials are fetched through, unless the configuration names another.
pub const DEFAULT_CLUSTER: &str = "aws_credentials";

/// Hosts a plain-HTTP container endpoint may name (the AWS SDKs' rule): the authorization token
/// never crosses a network in clear text. Loopback addresses are allowed too.
const CONTAINER_HTTP_HOSTS: &[&str] = &["169.254.170.2", "169.254.170.23", "[fd00:ec2::23]"];

#[derive(Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// IMDSv2: a session token (`PUT /latest/api/token`), the role's name, its credentials.
    InstanceMetadata,
    /// One `GET` of the endpoint, with the authorization token where one is required.
    Container { authorization_token: Option<String> },
}

impl fmt::Debug for SourceKind {
    // The authorization token is a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InstanceMetadata => f.write_str("InstanceMetadata"),
            Self::Container {
                authorization_token,
            } => f
                .debug_struct("Container")
                .field(
                    "authorization_token",
                    &authorization_token.as_ref().map(|_| "<redacted>"),
                )
                .finish(),
        }
    }
}

/// A URL split the way both hosts need it: Envoy's `:scheme`/`:authority`/`:path`, Spin's URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: &'static str,
    pub authority: String,
    /// Path and query; for instance metadata, the prefix the IMDS paths are appended to.
    pub path: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Option<Self> {
        let (scheme, rest) = url.split_once("://")?;
        let scheme = match scheme {
            "http" => "http",
            "https" => "https",
            _ => return None,
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let authority_ok = !authority.is_empty()
            && authority.len() <= 253
            && authority.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'[' | b']')
            });
        let path_ok = path.bytes().all(|b| b.is_ascii_graphic() && b != b'#');
        (authority_ok && path_ok).then(|| Self {
            scheme,
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }

    /// The host without its port.
    pub fn host(&self) -> &str {
        let a = self.authority.as_str();
        if a.starts_with('[') {
            return a.find(']').and_then(|i| a.get(..=i)).unwrap_or(a);
        }
        a.rsplit_once(':').map_or(a, |(h, _)| h)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.authority, path)
    }
}

/// Where credentials are fetched from.
#[derive(Clone, PartialEq, Eq)]
pub struct Source {
    pub kind: SourceKind,
    pub endpoint: Endpoint,
    /// The Envoy cluster that reaches `endpoint` (`dispatch_http_call` needs one).
    pub cluster: String,
}

impl fmt::Debug for Source {
    // The authorization token is a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Source {
    /// `instance_metadata`: `endpoint`, else `AWS_EC2_METADATA_SERVICE_ENDPOINT`, else IMDS's
    /// own address.
    pub fn instance_metadata(
        endpoint: Option<String>,
        cluster: Option<String>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let url = endpoint
            .or_else(|| env("AWS_EC2_METADATA_SERVICE_ENDPOINT").filter(|v| !v.is_empty()))
            .unwrap_or_else(|| INSTANCE_METADATA_ENDPOINT.to_string());
        let mut endpoint = parse_endpoint(&url)?;
        endpoint.path = endpoint.path.trim_end_matches('/').to_string();
        Ok(Self {
            kind: SourceKind::InstanceMetadata,
            endpoint,
            cluster: cluster_name(cluster)?,
        })
    }

    /// `container`: `endpoint`, else (as the AWS SDKs) `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`
    /// on ECS's host, else `AWS_CONTAINER_CREDENTIALS_FULL_URI`; the token inline, else
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN`. A token file (`authorization_token_file`,
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`: EKS Pod Identity) is refused: neither host's
    /// component can read it, and Envoy's own signer can ([`super::token_file_unreadable`]).
    pub fn container(
        endpoint: Option<String>,
        authorization_token: Option<String>,
        authorization_token_file: Option<String>,
        cluster: Option<String>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let env = |name: &str| env(name).filter(|v| !v.is_empty());
        let url = endpoint
            .or_else(|| {
                env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
                    .map(|rel| format!("{ECS_CONTAINER_HOST}{rel}"))
            })
            .or_else(|| env("AWS_CONTAINER_CREDENTIALS_FULL_URI"))
            .ok_or_else(|| {
                ConfigError::new(
                    "credentials.endpoint",
                    "type `container` needs an endpoint, or AWS_CONTAINER_CREDENTIALS_RELATIVE_URI \
                     or AWS_CONTAINER_CREDENTIALS_FULL_URI in the host environment",
                )
            })?;
        let endpoint = parse_endpoint(&url)?;
        if endpoint.scheme == "http"
            && !is_loopback(endpoint.host())
            && !CONTAINER_HTTP_HOSTS.contains(&endpoint.host())
        {
            return Err(ConfigError::new(
                "credentials.endpoint",
                "a plain-HTTP container endpoint must be a loopback address or AWS's container \
                 hosts (169.254.170.2, 169.254.170.23, [fd00:ec2::23]); use https otherwise",
            ));
        }
        let authorization_token = authorization_token
            .filter(|t| !t.is_empty())
            .or_else(|| env("AWS_CONTAINER_AUTHORIZATION_TOKEN"));
        if authorization_token.is_none()
            && (authorization_token_file.is_some_and(|f| !f.is_empty())
                || env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE").is_some())
        {
            return Err(super::token_file_unreadable());
        }
        if authorization_token
            .as_deref()
            .is_some_and(|t| !is_header_value(t))
        {
            return Err(ConfigError::new(
                "credentials.authorization_token",
                "must be printable ASCII (it is sent as the Authorization header)",
            ));
        }
        Ok(Self {
            kind: SourceKind::Container {
                authorization_token,
            },
            endpoint,
            cluster: cluster_name(cluster)?,
        })
    }

    /// For logs and errors: what and where, never the token.
    pub fn describe(&self) -> String {
        let what = match self.kind {
            SourceKind::InstanceMetadata => "instance metadata",
            SourceKind::Container { .. } => "the container credentials endpoint",
        };
        format!("{what} at {}", self.endpoint.url(""))
    }

    /// A short fingerprint that changes when the source does: hosts keep each source's
    /// credentials under keys of their own, so a new source never signs with the old one's.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        match &self.kind {
            SourceKind::InstanceMetadata => h.update(b"imds\0"),
            SourceKind::Container {
                authorization_token,
            } => {
                h.update(b"container\0");
                h.update(authorization_token.as_deref().unwrap_or("").as_bytes());
                h.update(b"\0");
            }
        }
        h.update(self.endpoint.url(&self.endpoint.path).as_bytes());
        hex::encode(&h.finalize()[..8])
    }
}

fn parse_endpoint(url: &str) -> Result<Endpoint, ConfigError> {
    Endpoint::parse(url).ok_or_else(|| {
        ConfigError::new(
            "credentials.endpoint",
            "must be an http:// or https:// URL (host, optional port and path)",
        )
    })
}

fn cluster_name(cluster: Option<String>) -> Result<String, ConfigError> {
    match cluster {
        None => Ok(DEFAULT_CLUSTER.to_string()),
        Some(c) if !c.is_empty() && c.len() <= 128 && is_header_value(&c) => Ok(c),
        Some(_) => Err(ConfigError::new(
            "credentials.cluster",
            "must name an Envoy cluster (1 to 128 printable characters)",
        )),
    }
}

fn is_header_value(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
}

/// `localhost`, `[::1]` or 127.0.0.0/8 (four decimal octets).
fn is_loopback(host: &str) -> bool {
    let octets: Vec<&str> = host.split('.').collect();
    host == "localhost"
        || host == "[::1]"
        || (octets.len() == 4
            && octets.first() == Some(&"127")
            && octets.iter().all(|o| {
                !o.is_empty()
                    && o.len() <= 3
                    && o.bytes().all(|b| b.is_ascii_digit())
                    && o.parse::<u16>().is_ok_and(|n| n <= 255)
            }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn endpoints_split_into_scheme_authority_and_path() {
        let e = Endpoint::parse("http://127.0.0.1:9100/v2/credentials/abc?x=1").unwrap();
        assert_eq!(
            (e.scheme, e.authority.as_str(), e.path.as_str()),
            ("http", "127.0.0.1:9100", "/v2/credentials/abc?x=1")
        );
        assert_eq!(e.host(), "127.0.0.1");
        let e = Endpoint::parse("http://[fd00:ec2::23]/v1/credentials").unwrap();
        assert_eq!(e.host(), "[fd00:ec2::23]");
        for bad in [
            "169.254.169.254",
            "ftp://x/",
            "http://",
            "http://a b/",
            "http://x/#f",
        ] {
            assert_eq!(Endpoint::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn instance_metadata_defaults_to_imds_and_reads_the_sdks_variable() {
        let s = Source::instance_metadata(None, None, &env_of(&[])).unwrap();
        assert_eq!(s.endpoint.url(""), "http://169.254.169.254");
        assert_eq!(s.cluster, "aws_credentials");
        let s = Source::instance_metadata(
            None,
            Some("imds".into()),
            &env_of(&[(
                "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                "http://[fd00:ec2::254]/",
            )]),
        )
        .unwrap();
        assert_eq!(s.endpoint.url(&s.endpoint.path), "http://[fd00:ec2::254]");
        let s = Source::instance_metadata(Some("http://127.0.0.1:9100".into()), None, &env_of(&[]))
            .unwrap();
        assert_eq!(s.endpoint.authority, "127.0.0.1:9100");
    }

    #[test]
    fn container_endpoint_and_token_follow_the_sdks() {
        let none = env_of(&[]);
        let e = Source::container(None, None, None, None, &none).unwrap_err();
        assert_eq!(e.field, "credentials.endpoint");
        let ecs = env_of(&[
            (
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "/v2/credentials/id",
            ),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1:1/x"),
        ]);
        let s = Source::container(None, None, None, None, &ecs).unwrap();
        assert_eq!(
            s.endpoint.url(&s.endpoint.path),
            "http://169.254.170.2/v2/credentials/id"
        );
        let pod = env_of(&[
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://169.254.170.23/v1/credentials",
            ),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "/var/run/token"),
        ]);
        // The token file (EKS Pod Identity) cannot be read: a clear error, naming `envoy`.
        let e = Source::container(None, None, None, None, &pod).unwrap_err();
        assert_eq!(e.field, "credentials.authorization_token_file");
        assert!(e.message.contains("\"envoy\""), "{e}");
        // An inline token wins over the file.
        let s = Source::container(None, Some("tok".into()), None, None, &pod).unwrap();
        assert_eq!(
            s.kind,
            SourceKind::Container {
                authorization_token: Some("tok".into()),
            }
        );
        assert!(!format!("{s:?}").contains("tok"));
    }

    #[test]
    fn plain_http_only_to_loopback_or_aws_container_hosts() {
        let none = env_of(&[]);
        for ok in [
            "http://127.0.0.1:8080/c",
            "http://localhost/c",
            "http://169.254.170.2/v2/c",
            "https://creds.example.com/c",
        ] {
            assert!(
                Source::container(Some(ok.into()), None, None, None, &none).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "http://10.0.0.1/c",
            "http://creds.example.com/c",
            "http://127.0.0.1.example.com/c",
            "http://127.0.0.256/c",
        ] {
            let e = Source::container(Some(bad.into()), None, None, None, &none).unwrap_err();
            assert_eq!(e.field, "credentials.endpoint", "{bad}");
        }
        let e = Source::container(
            Some("http://127.0.0.1/c".into()),
            Some("a\r\nb".into()),
            None,
            None,
            &none,
        )
        .unwrap_err();
        assert_eq!(e.field, "credentials.authorization_token");
    }

    #[test]
    fn fingerprints_differ_by_source() {
        let none = env_of(&[]);
        let a =
            Source::container(Some("http://127.0.0.1/a".into()), None, None, None, &none).unwrap();
        let b =
            Source::container(Some("http://127.0.0.1/b".into()), None, None, None, &none).unwrap();
        let i = Source::instance_metadata(None, None, &none).unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), i.fingerprint());
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
        assert_eq!(a.fingerprint().len(), 16);
    }
}
