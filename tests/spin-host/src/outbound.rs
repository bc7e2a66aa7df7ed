//! `allowed_outbound_hosts` as in Spin's manifest: `scheme://host[:port]`, where scheme may be
//! `*`, host may be `*` or `*.suffix`, port may be `*` or omitted (then the scheme's default
//! port: http 80, https 443). `insecure:allow-all` allows everything.

#[derive(Debug, Clone)]
struct Entry {
    scheme: String,       // "*" or lower-case scheme
    host: String,         // "*", "*.suffix" or lower-case host
    port: Option<String>, // None = scheme default, Some("*") or Some(number)
}

#[derive(Debug, Default)]
pub struct AllowedHosts {
    allow_all: bool,
    entries: Vec<Entry>,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

impl AllowedHosts {
    pub fn add(&mut self, spec: &str) -> anyhow::Result<()> {
        let spec = spec.trim();
        if spec == "insecure:allow-all" {
            self.allow_all = true;
            return Ok(());
        }
        let (scheme, rest) = spec.split_once("://").ok_or_else(|| {
            anyhow::anyhow!("allowed outbound host {spec:?} needs a scheme (e.g. http://host:port)")
        })?;
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            anyhow::bail!("allowed outbound host {spec:?} must not contain a path");
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => {
                if p != "*" && p.parse::<u16>().is_err() {
                    anyhow::bail!("invalid port in allowed outbound host {spec:?}");
                }
                (h, Some(p.to_string()))
            }
            _ => (rest, None),
        };
        if port.is_none() && scheme != "*" && default_port(scheme).is_none() {
            anyhow::bail!("allowed outbound host {spec:?} needs a port for scheme {scheme}");
        }
        self.entries.push(Entry {
            scheme: scheme.to_ascii_lowercase(),
            host: host.to_ascii_lowercase(),
            port,
        });
        Ok(())
    }

    pub fn allows(&self, uri: &http::Uri) -> bool {
        if self.allow_all {
            return true;
        }
        let Some(authority) = uri.authority() else {
            // Relative ("self") requests are not supported by this host.
            return false;
        };
        let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
        let host = authority.host().to_ascii_lowercase();
        let Some(port) = authority.port_u16().or_else(|| default_port(&scheme)) else {
            return false;
        };
        self.entries.iter().any(|e| {
            let scheme_ok = e.scheme == "*" || e.scheme == scheme;
            let host_ok = e.host == "*"
                || e.host == host
                || e.host
                    .strip_prefix("*.")
                    .is_some_and(|suffix| host.ends_with(&format!(".{suffix}")));
            let port_ok = match &e.port {
                Some(p) if p == "*" => true,
                Some(p) => p.parse::<u16>().ok() == Some(port),
                None => {
                    let d = if e.scheme == "*" {
                        default_port(&scheme)
                    } else {
                        default_port(&e.scheme)
                    };
                    d == Some(port)
                }
            };
            scheme_ok && host_ok && port_ok
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(specs: &[&str]) -> AllowedHosts {
        let mut h = AllowedHosts::default();
        for s in specs {
            h.add(s).unwrap();
        }
        h
    }

    #[test]
    fn matching() {
        let h = hosts(&["http://127.0.0.1:9100", "https://*.amazonaws.com"]);
        assert!(h.allows(&"http://127.0.0.1:9100/x".parse().unwrap()));
        assert!(!h.allows(&"http://127.0.0.1:9101/x".parse().unwrap()));
        assert!(!h.allows(&"https://127.0.0.1:9100/x".parse().unwrap()));
        assert!(h.allows(
            &"https://bedrock-runtime.us-east-1.amazonaws.com/m"
                .parse()
                .unwrap()
        ));
        assert!(h.allows(
            &"https://bedrock-runtime.us-east-1.amazonaws.com:443/m"
                .parse()
                .unwrap()
        ));
        assert!(!h.allows(&"https://amazonaws.com.evil.org/".parse().unwrap()));
        assert!(!h.allows(&"http://bedrock.amazonaws.com/".parse().unwrap()));
        let all = hosts(&["*://*:*"]);
        assert!(all.allows(&"http://example.org:81/".parse().unwrap()));
        assert!(hosts(&["insecure:allow-all"]).allows(&"http://x:1/".parse().unwrap()));
        assert!(!AllowedHosts::default().allows(&"http://127.0.0.1:80/".parse().unwrap()));
    }
}
