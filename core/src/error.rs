//! Gateway errors, in the gateway's own words. How a client sees one depends on the dialect it
//! speaks: `crate::dialect::bedrock` and `crate::dialect::openai` write the envelopes.

use serde::Serialize;

use crate::dialect::Dialect;

/// A response the gateway answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(status: u16, body: &impl Serialize) -> Self {
        let body = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
        Self {
            status,
            headers: vec![("content-type", "application/json".into())],
            body,
        }
    }
}

/// What went wrong, in the gateway's words; the dialect decides how a client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No API key in the request.
    MissingKey,
    /// An API key that matches no configured hash.
    UnknownKey,
    /// The key may not use this model.
    ModelNotAllowed,
    /// The model name is neither an alias nor a Bedrock model ID.
    UnknownModel,
    /// The request body is larger than `max_request_body_bytes`.
    BodyTooLarge,
    /// The key's requests-per-minute limit is reached.
    RequestRateLimited,
    /// The key's tokens-per-minute limit would be exceeded.
    TokenRateLimited,
    /// The key has its maximum of requests in flight.
    ConcurrencyLimited,
    /// The key's budget for the period cannot cover the request.
    BudgetExhausted,
    /// The request itself is malformed.
    BadRequest,
    /// No such route.
    NotFound,
    /// The gateway has no valid configuration; it refuses to run unauthenticated.
    NotConfigured,
    /// Signing or another internal step failed.
    Internal,
    /// The upstream could not be reached, or failed before answering (hosts that open the
    /// upstream connection themselves; Envoy answers this case with its own 503).
    UpstreamUnavailable,
    /// The key-value store that holds quota counters and totals failed: the request cannot be
    /// admitted against its limits.
    StateUnavailable,
    /// Credentials fetched from an endpoint have expired (or none were fetched yet) and the
    /// refresh has not succeeded: a request signed now would be refused by AWS.
    CredentialsUnavailable,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            Self::MissingKey | Self::UnknownKey => 401,
            Self::ModelNotAllowed => 403,
            Self::UnknownModel | Self::BadRequest => 400,
            Self::BodyTooLarge => 413,
            Self::RequestRateLimited
            | Self::TokenRateLimited
            | Self::ConcurrencyLimited
            | Self::BudgetExhausted => 429,
            Self::NotFound => 404,
            Self::NotConfigured | Self::Internal => 500,
            Self::UpstreamUnavailable | Self::StateUnavailable | Self::CredentialsUnavailable => {
                503
            }
        }
    }
}

impl ErrorKind {
    /// The snake_case name used in logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::MissingKey => "missing_key",
            Self::UnknownKey => "unknown_key",
            Self::ModelNotAllowed => "model_not_allowed",
            Self::UnknownModel => "unknown_model",
            Self::BodyTooLarge => "body_too_large",
            Self::RequestRateLimited => "request_rate_limited",
            Self::TokenRateLimited => "token_rate_limited",
            Self::ConcurrencyLimited => "concurrency_limited",
            Self::BudgetExhausted => "budget_exhausted",
            Self::BadRequest => "bad_request",
            Self::NotFound => "not_found",
            Self::NotConfigured => "not_configured",
            Self::Internal => "internal",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::StateUnavailable => "state_unavailable",
            Self::CredentialsUnavailable => "credentials_unavailable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    pub kind: ErrorKind,
    pub message: String,
    /// Seconds until a retry can succeed (`Retry-After`), for quota refusals.
    pub retry_after_s: Option<u64>,
}

impl GatewayError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after_s: None,
        }
    }

    /// What every request gets while the gateway has no valid configuration: it never runs
    /// unauthenticated. The reason (a [`crate::config::ConfigError`] naming the field) is for
    /// the operator: hosts log it; callers, who may not even be authenticated, never see it.
    pub fn not_configured() -> Self {
        Self::new(
            ErrorKind::NotConfigured,
            "the gateway is misconfigured; the reason is in the gateway's log",
        )
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds.max(1));
        self
    }

    pub fn to_reply(&self, dialect: Dialect) -> Reply {
        match dialect {
            Dialect::Bedrock => self.to_bedrock_reply(),
            Dialect::OpenAi => self.to_openai_reply(),
        }
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.bedrock_type(), self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bedrock_envelope() {
        let r = GatewayError::new(ErrorKind::ModelNotAllowed, "key `a` may not use `m`")
            .to_bedrock_reply();
        assert_eq!(r.status, 403);
        assert!(r
            .headers
            .contains(&("x-amzn-errortype", "AccessDeniedException".into())));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["message"], "key `a` may not use `m`");
    }

    #[test]
    fn quota_refusals_are_429_with_retry_after() {
        let r = GatewayError::new(ErrorKind::BudgetExhausted, "spent")
            .retry_after(3600)
            .to_bedrock_reply();
        assert_eq!(r.status, 429);
        assert!(r
            .headers
            .contains(&("x-amzn-errortype", "ServiceQuotaExceededException".into())));
        assert!(r.headers.contains(&("retry-after", "3600".into())));
        let r = GatewayError::new(ErrorKind::ConcurrencyLimited, "busy")
            .retry_after(0)
            .to_bedrock_reply();
        assert!(r
            .headers
            .contains(&("x-amzn-errortype", "ThrottlingException".into())));
        assert!(r.headers.contains(&("retry-after", "1".into())));
    }

    #[test]
    fn openai_envelope() {
        let r = GatewayError::new(ErrorKind::UnknownKey, "bad key")
            .to_reply(Dialect::for_path("/v1/models"));
        assert_eq!(r.status, 401);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"]["type"], "authentication_error");
        assert_eq!(v["error"]["code"], "unknown_key");
        assert_eq!(Dialect::for_path("/model/x/converse"), Dialect::Bedrock);
    }

    #[test]
    fn statuses() {
        assert_eq!(ErrorKind::MissingKey.status(), 401);
        assert_eq!(ErrorKind::UnknownModel.status(), 400);
        assert_eq!(ErrorKind::BodyTooLarge.status(), 413);
        assert_eq!(ErrorKind::NotFound.status(), 404);
        assert_eq!(ErrorKind::NotConfigured.status(), 500);
        assert_eq!(ErrorKind::UpstreamUnavailable.status(), 503);
    }

    #[test]
    fn an_unavailable_store_is_503_in_both_dialects() {
        let e = GatewayError::new(ErrorKind::StateUnavailable, "quota state unavailable: x");
        let r = e.to_bedrock_reply();
        assert_eq!(r.status, 503);
        assert!(r
            .headers
            .contains(&("x-amzn-errortype", "ServiceUnavailableException".into())));
        let r = e.to_openai_reply();
        assert_eq!(r.status, 503);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"]["type"], "api_error");
        assert_eq!(v["error"]["code"], "state_unavailable");
    }

    #[test]
    fn upstream_unavailable_is_a_modeled_bedrock_error() {
        let r = GatewayError::new(ErrorKind::UpstreamUnavailable, "connection refused")
            .to_bedrock_reply();
        assert_eq!(r.status, 503);
        assert!(r
            .headers
            .contains(&("x-amzn-errortype", "ServiceUnavailableException".into())));
    }

    #[test]
    fn not_configured_says_nothing_about_the_configuration() {
        // Whoever asks, authenticated or not, learns only that the gateway is misconfigured:
        // the validation text (which names fields, aliases, key IDs) goes to the host's log.
        let doc = br#"{"region":"US","api_keys":[],"credentials":{"type":"environment"}}"#;
        let why = crate::config::Config::parse(doc, &|_| None).unwrap_err();
        assert!(why.to_string().contains("`region`"));
        let r = GatewayError::not_configured().to_bedrock_reply();
        assert_eq!(r.status, 500);
        assert!(r
            .headers
            .contains(&("x-amzn-errortype", "InternalServerException".into())));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let message = v["message"].as_str().unwrap();
        assert!(!message.contains("region"), "{message}");
        assert!(message.contains("gateway's log"), "{message}");
    }
}
