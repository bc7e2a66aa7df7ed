//! Replies a host makes in Bedrock's place once a request is on its way (Envoy's 504 when the
//! route times out, its 503 when the upstream resets): did the request reach Bedrock, which
//! may then have run it (and billed it)? See [`crate::exchange::Exchange::upstream_failed`].

/// Envoy's `response.code_details` of a response that came from the upstream.
pub const ENVOY_VIA_UPSTREAM: &str = "via_upstream";

/// Envoy answered itself (`code_details` is not [`ENVOY_VIA_UPSTREAM`]): may the request have
/// reached the upstream? Not when Envoy never connected: a connection failure, an overflowing
/// connection pool, no healthy host, no route or cluster. Otherwise (a timeout, a reset or a
/// disconnect after sending, anything unknown) it may have: over-billing such a reply is the
/// safe direction; Bedrock bills what it ran.
pub fn envoy_reply_may_have_reached_upstream(code_details: &str) -> bool {
    const NEVER_CONNECTED: &[&str] = &[
        "connection_failure",
        "overflow",
        "no_healthy_upstream",
        "cluster_not_found",
        "route_not_found",
        "maintenance_mode",
        "direct_response",
    ];
    !NEVER_CONNECTED.iter().any(|d| code_details.contains(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_replies_after_sending_may_have_reached_bedrock() {
        // Details as Envoy 1.40 sets them (StreamInfo::ResponseCodeDetails).
        for details in [
            "upstream_response_timeout",
            "upstream_per_try_timeout",
            "upstream_reset_before_response_started{connection_termination}",
            "upstream_reset_before_response_started{remote_reset}",
            "upstream_max_stream_duration_reached",
            "response_payload_too_large",
            "something_new",
        ] {
            assert!(envoy_reply_may_have_reached_upstream(details), "{details}");
        }
        for details in [
            "upstream_reset_before_response_started{connection_failure}",
            "upstream_reset_before_response_started{connection_failure,delayed_connect_error:_Connection_refused}",
            "upstream_reset_before_response_started{overflow}",
            "no_healthy_upstream",
            "cluster_not_found",
            "route_not_found",
        ] {
            assert!(!envoy_reply_may_have_reached_upstream(details), "{details}");
        }
    }
}
