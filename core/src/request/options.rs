//! Request options that change what Bedrock charges, and whether Tollgate can price them.
//!
//! * Service tier (Converse `serviceTier.type`, InvokeModel `X-Amzn-Bedrock-Service-Tier`):
//!   `priority` and `flex` are billed at the tier's own price where litellm's data has one for
//!   the model; `default` is the standard price. A tier without a price, and `reserved`
//!   (billed through a capacity commitment, not per token), are unpriced.
//! * Latency-optimized inference (`performanceConfig.latency`,
//!   `X-Amzn-Bedrock-PerformanceConfig-Latency`: `optimized`): priced higher by Bedrock, absent
//!   from litellm's data: unpriced.
//! * Guardrails (`guardrailConfig`, `X-Amzn-Bedrock-GuardrailIdentifier` / `-Version`):
//!   Bedrock bills guardrail policy units on top of the model's tokens: unpriced.
//!
//! An unpriced option is refused (400 `ValidationException` naming it) unless the key lists it
//! in `limits.unpriced_options`; then the request is billed as if it had not used it (the
//! standard tier's tokens), and its usage record says so.

use serde::Deserialize;

use crate::accounting::pricing::{self, ServiceTier};
use crate::error::{ErrorKind, GatewayError};
use crate::request::body::BodyOptions;

/// An option Tollgate cannot price, as `limits.unpriced_options` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unpriced {
    Guardrails,
    LatencyOptimized,
    ServiceTier,
}

impl Unpriced {
    pub fn name(self) -> &'static str {
        match self {
            Self::Guardrails => "guardrails",
            Self::LatencyOptimized => "latency_optimized",
            Self::ServiceTier => "service_tier",
        }
    }
}

/// The options a request's headers ask for (names lowercase), read when it is admitted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderOptions {
    service_tier: Option<String>,
    latency: Option<String>,
    guardrail: bool,
}

impl HeaderOptions {
    pub fn read(headers: &[(&str, &str)]) -> Self {
        let mut out = Self::default();
        for &(name, value) in headers {
            match name {
                "x-amzn-bedrock-service-tier" => out.service_tier = Some(value.trim().into()),
                "x-amzn-bedrock-performanceconfig-latency" => {
                    out.latency = Some(value.trim().into())
                }
                "x-amzn-bedrock-guardrailidentifier" | "x-amzn-bedrock-guardrailversion" => {
                    out.guardrail = true
                }
                _ => {}
            }
        }
        out
    }
}

/// What a request's options come to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decided {
    /// The tier to price the request at.
    pub tier: ServiceTier,
    /// Unpriced options the key allowed and the request used (sorted, each once).
    pub unpriced: Vec<Unpriced>,
}

/// Decides a request's options from its headers and body, for `model_id` in `region`, with the
/// unpriced options its key `allows`.
pub fn decide(
    headers: &HeaderOptions,
    body: &BodyOptions,
    allows: &[Unpriced],
    region: &str,
    model_id: &str,
) -> Result<Decided, GatewayError> {
    let mut priced_tier = ServiceTier::Standard;
    let mut used: Vec<Unpriced> = Vec::new();
    let mut unpriced = |option: Unpriced, what: String| {
        if allows.contains(&option) {
            if !used.contains(&option) {
                used.push(option);
            }
            Ok(())
        } else {
            Err(GatewayError::new(
                ErrorKind::BadRequest,
                format!(
                    "{what} is not priced by this gateway: the API key's `limits.unpriced_options` \
                     must list \"{}\" to allow it (billed at the standard price)",
                    option.name()
                ),
            ))
        }
    };

    let tiers = [
        headers.service_tier.as_deref(),
        body.service_tier.as_deref(),
    ];
    let mut tier = None;
    for value in tiers.into_iter().flatten() {
        let this = match value {
            "default" => Some(ServiceTier::Standard),
            "priority" => Some(ServiceTier::Priority),
            "flex" => Some(ServiceTier::Flex),
            "reserved" => None,
            other => {
                return Err(GatewayError::new(
                    ErrorKind::BadRequest,
                    format!("unknown service tier `{other}`"),
                ))
            }
        };
        if tier.is_some_and(|t| t != this) {
            return Err(GatewayError::new(
                ErrorKind::BadRequest,
                "the service tier header and `serviceTier` disagree",
            ));
        }
        tier = Some(this);
    }
    match tier {
        None | Some(Some(ServiceTier::Standard)) => {}
        Some(None) => unpriced(
            Unpriced::ServiceTier,
            "service tier `reserved` (service_tier)".into(),
        )?,
        Some(Some(t)) => match pricing::quote_tier(region, model_id, t) {
            Some(_) => priced_tier = t,
            None => unpriced(
                Unpriced::ServiceTier,
                format!(
                    "service tier `{}` of model `{model_id}` (service_tier)",
                    tier_name(t)
                ),
            )?,
        },
    }

    for value in [headers.latency.as_deref(), body.latency.as_deref()]
        .into_iter()
        .flatten()
    {
        match value {
            "standard" => {}
            "optimized" => unpriced(
                Unpriced::LatencyOptimized,
                "latency-optimized inference (latency_optimized)".into(),
            )?,
            other => {
                return Err(GatewayError::new(
                    ErrorKind::BadRequest,
                    format!("unknown performance latency `{other}`"),
                ))
            }
        }
    }

    if headers.guardrail || body.guardrail {
        unpriced(Unpriced::Guardrails, "a guardrail (guardrails)".into())?;
    }
    used.sort_unstable();
    Ok(Decided {
        tier: priced_tier,
        unpriced: used,
    })
}

fn tier_name(t: ServiceTier) -> &'static str {
    match t {
        ServiceTier::Standard => "default",
        ServiceTier::Priority => "priority",
        ServiceTier::Flex => "flex",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOVA_PRO: &str = "amazon.nova-pro-v1:0";
    const HAIKU: &str = "us.anthropic.claude-haiku-4-5-20251001-v1:0";

    fn body(tier: Option<&str>, latency: Option<&str>, guardrail: bool) -> BodyOptions {
        BodyOptions {
            service_tier: tier.map(Into::into),
            latency: latency.map(Into::into),
            guardrail,
        }
    }

    fn header(pairs: &[(&str, &str)]) -> HeaderOptions {
        HeaderOptions::read(pairs)
    }

    #[test]
    fn priced_tiers_are_allowed_and_priced() {
        let none = HeaderOptions::default();
        for (value, tier) in [
            ("priority", ServiceTier::Priority),
            ("flex", ServiceTier::Flex),
            ("default", ServiceTier::Standard),
        ] {
            let d = decide(
                &none,
                &body(Some(value), None, false),
                &[],
                "us-east-1",
                NOVA_PRO,
            )
            .unwrap();
            assert_eq!(
                d,
                Decided {
                    tier,
                    unpriced: vec![]
                }
            );
            let h = header(&[("x-amzn-bedrock-service-tier", value)]);
            let d = decide(&h, &BodyOptions::default(), &[], "us-east-1", NOVA_PRO).unwrap();
            assert_eq!(d.tier, tier);
        }
    }

    #[test]
    fn unpriced_options_need_the_key_to_allow_them() {
        let cases: [(HeaderOptions, BodyOptions, Unpriced); 6] = [
            (
                header(&[("x-amzn-bedrock-service-tier", "priority")]),
                BodyOptions::default(),
                Unpriced::ServiceTier,
            ),
            (
                HeaderOptions::default(),
                body(Some("reserved"), None, false),
                Unpriced::ServiceTier,
            ),
            (
                header(&[("x-amzn-bedrock-performanceconfig-latency", "optimized")]),
                BodyOptions::default(),
                Unpriced::LatencyOptimized,
            ),
            (
                HeaderOptions::default(),
                body(None, Some("optimized"), false),
                Unpriced::LatencyOptimized,
            ),
            (
                header(&[("x-amzn-bedrock-guardrailidentifier", "g")]),
                BodyOptions::default(),
                Unpriced::Guardrails,
            ),
            (
                HeaderOptions::default(),
                body(None, None, true),
                Unpriced::Guardrails,
            ),
        ];
        for (h, b, option) in cases {
            let e = decide(&h, &b, &[], "us-east-1", HAIKU).unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadRequest);
            assert!(e.message.contains(option.name()), "{}", e.message);
            let d = decide(&h, &b, &[option], "us-east-1", HAIKU).unwrap();
            assert_eq!(
                d,
                Decided {
                    tier: ServiceTier::Standard,
                    unpriced: vec![option]
                }
            );
        }
    }

    #[test]
    fn unknown_or_conflicting_values_are_refused() {
        let all = [
            Unpriced::Guardrails,
            Unpriced::LatencyOptimized,
            Unpriced::ServiceTier,
        ];
        for (h, b) in [
            (
                header(&[("x-amzn-bedrock-service-tier", "turbo")]),
                BodyOptions::default(),
            ),
            (
                header(&[("x-amzn-bedrock-service-tier", "flex")]),
                body(Some("priority"), None, false),
            ),
            (
                header(&[("x-amzn-bedrock-performanceconfig-latency", "warp")]),
                BodyOptions::default(),
            ),
        ] {
            assert!(decide(&h, &b, &all, "us-east-1", NOVA_PRO).is_err());
        }
        // The same tier twice is fine.
        let d = decide(
            &header(&[("x-amzn-bedrock-service-tier", "flex")]),
            &body(Some("flex"), Some("standard"), false),
            &[],
            "us-east-1",
            NOVA_PRO,
        )
        .unwrap();
        assert_eq!(d.tier, ServiceTier::Flex);
    }
}
