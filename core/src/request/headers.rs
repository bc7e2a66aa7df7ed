//! Which of the client's request headers go on to Bedrock: an allowlist.
//!
//! Everything else stays at the gateway: the client's credentials (`authorization`,
//! `x-api-key`), any AWS signing header (`x-amz-*`; Tollgate signs), proxy controls Envoy would
//! act on after the filter (`x-envoy-retry-on`, `x-envoy-max-retries`,
//! `x-envoy-upstream-rq-timeout-ms`: a retry would invoke and bill Bedrock again), cookies,
//! forwarding headers, test hooks, and any header Bedrock may add meaning to later. A denylist
//! would let through whatever nobody thought of.
//!
//! Names are compared as lowercase bytes, whatever the value: a value that is not UTF-8 cannot
//! slip a header past the list.

/// Client headers forwarded to Bedrock (lowercase). What Bedrock's runtime reads, what the AWS
/// SDKs (boto3, the JS SDK Claude Code uses) send, and tracing. Guardrail, latency and
/// service-tier headers are forwarded only once [`crate::request::options`] has priced or allowed them.
pub const FORWARDED: &[&str] = &[
    "accept",
    "content-type",
    "user-agent",
    "x-request-id",
    // AWS SDK retry bookkeeping.
    "amz-sdk-invocation-id",
    "amz-sdk-request",
    // Tracing.
    "x-amzn-trace-id",
    "traceparent",
    "tracestate",
    // Bedrock runtime request headers (InvokeModel, InvokeModelWithResponseStream).
    "x-amzn-bedrock-accept",
    "x-amzn-bedrock-trace",
    "x-amzn-bedrock-guardrailidentifier",
    "x-amzn-bedrock-guardrailversion",
    "x-amzn-bedrock-performanceconfig-latency",
    "x-amzn-bedrock-service-tier",
];

/// Does this client header go upstream? `name` lowercase.
pub fn is_forwarded(name: &str) -> bool {
    FORWARDED.contains(&name)
}

/// Headers the host's HTTP stack owns on each hop (pseudo-headers, `host`, message framing,
/// and `x-forwarded-proto`, which Envoy sets itself and its router needs to match a route once
/// the filter's edits cleared the route cache): Envoy rewrites or re-frames them itself, and
/// hosts that build the upstream request (Spin) never copy them. Never removed by name.
pub fn is_host_managed(name: &str) -> bool {
    name.starts_with(':')
        || matches!(
            name,
            "host" | "content-length" | "transfer-encoding" | "x-forwarded-proto"
        )
}

/// The client headers to remove from the request before it goes upstream, each name once (a
/// removal takes every value of a name). For hosts that edit the client's request (Envoy).
/// `names` lowercase.
pub fn to_remove<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in names {
        if !is_forwarded(name) && !is_host_managed(name) && !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_clients_and_bedrock_need_is_forwarded() {
        // boto3's Converse and InvokeModel, minus what Tollgate replaces.
        for name in [
            "content-type",
            "accept",
            "user-agent",
            "amz-sdk-invocation-id",
            "amz-sdk-request",
            "x-amzn-bedrock-trace",
            "x-amzn-bedrock-accept",
            "x-request-id",
        ] {
            assert!(is_forwarded(name), "{name}");
        }
    }

    #[test]
    fn credentials_proxy_controls_and_unknown_headers_are_removed() {
        let sent = [
            ":path",
            ":authority",
            "host",
            "x-forwarded-proto",
            "content-length",
            "authorization",
            "x-api-key",
            "x-amz-date",
            "x-amz-security-token",
            "x-amz-content-sha256",
            "x-envoy-retry-on",
            "x-envoy-max-retries",
            "x-envoy-upstream-rq-timeout-ms",
            "x-forwarded-for",
            "cookie",
            "proxy-authorization",
            "x-tollgate-test-now-ms",
            "x-something-new",
            "content-type",
            "x-api-key",
        ];
        let removed = to_remove(sent);
        assert_eq!(
            removed,
            [
                "authorization",
                "x-api-key",
                "x-amz-date",
                "x-amz-security-token",
                "x-amz-content-sha256",
                "x-envoy-retry-on",
                "x-envoy-max-retries",
                "x-envoy-upstream-rq-timeout-ms",
                "x-forwarded-for",
                "cookie",
                "proxy-authorization",
                "x-tollgate-test-now-ms",
                "x-something-new",
            ]
        );
    }
}
