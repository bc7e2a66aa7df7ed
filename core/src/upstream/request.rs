//! The request that goes to Bedrock: how the client's is rewritten, and which headers a host
//! that builds it itself copies.

use crate::request::headers as request_headers;

/// The changes that turn the client's request into the upstream one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRequest {
    /// New `:path`: the real model ID, percent-encoded once.
    pub path: String,
    /// New `:authority` / host.
    pub authority: String,
    /// Client headers to remove (lowercase names).
    pub remove_headers: Vec<String>,
    /// Headers to set (signature, date, token).
    pub set_headers: Vec<(String, String)>,
    /// A new body (the output-token cap applied), to send instead of the client's, with a
    /// `content-length` to match.
    pub body: Option<Vec<u8>>,
}

impl UpstreamRequest {
    /// The complete header list of the upstream request, for hosts that build it themselves
    /// (Spin) rather than edit the client's (Envoy): the client's headers that are forwarded
    /// ([`request_headers::FORWARDED`]), values byte for byte, plus the signature headers.
    /// `host` and `content-length` are left to the host's HTTP client.
    pub fn headers_from<'a>(
        &self,
        client: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = client
            .into_iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v))
            .filter(|(n, _)| {
                request_headers::is_forwarded(n)
                    && !self
                        .set_headers
                        .iter()
                        .any(|(s, _)| s.eq_ignore_ascii_case(n))
            })
            .map(|(n, v)| (n, v.to_vec()))
            .collect();
        out.extend(
            self.set_headers
                .iter()
                .map(|(n, v)| (n.clone(), v.as_bytes().to_vec())),
        );
        out
    }
}

/// Headers that describe one connection or one message framing, not the exchange: hosts that
/// build the upstream request or the client's response themselves (Spin) leave them to their
/// HTTP stack, which sets `host` and the framing (`content-length` or chunked) itself and
/// refuses most of them from a component (wasi-http's forbidden headers). Lowercase `name`.
pub fn is_hop_by_hop(name: &str) -> bool {
    const HOP_BY_HOP: &[&str] = &[
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "http2-settings",
        "content-length",
    ];
    HOP_BY_HOP.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_cover_wasi_http_forbidden_ones() {
        // wasmtime-wasi-http's DEFAULT_FORBIDDEN_HEADERS: a Spin component that copies any of
        // them into a request or response fails the whole exchange.
        for name in [
            "host",
            "connection",
            "keep-alive",
            "proxy-authenticate",
            "proxy-authorization",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
            "http2-settings",
        ] {
            assert!(is_hop_by_hop(name), "{name}");
        }
        for name in [
            "content-type",
            "x-amzn-requestid",
            "x-amzn-errortype",
            "retry-after",
        ] {
            assert!(!is_hop_by_hop(name), "{name}");
        }
    }
}
