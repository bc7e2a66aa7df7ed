//! Metrics: which series a usage record or a refusal moves, and by how much.
//!
//! Each [`Update`] names its metric, its labels (name and value, in a fixed order) and how it
//! moves; hosts turn that into their own series (the filter into Envoy stat names carrying the
//! labels for Envoy's tag extraction, `filter/src/stats.rs`):
//!
//! ```text
//! tollgate_requests_total{key="team-a",model="claude-fast",status="200"} 3
//! ```
//!
//! Every label value has bounded cardinality, because every distinct value is a series a host
//! keeps in memory for the life of the process: `key` is a configured key ID (or `-`), `model`
//! is a configured alias, a model ID of the price table, or `other`
//! ([`record::model_label`](crate::accounting::record::model_label)); the other labels come
//! from closed sets.

use std::borrow::Cow;

use crate::accounting::money::micro_usd_increment;
use crate::accounting::record::{UsageRecord, UsageSource};
use crate::error::GatewayError;

/// Finished exchanges: `{key, model, status}` (`status` 0: the upstream never answered).
pub const REQUESTS: &str = "tollgate_requests_total";
/// Billed tokens: `{key, model, kind}`, kind = input | output | cache_read | cache_write.
pub const TOKENS: &str = "tollgate_tokens_total";
/// Billed cost in micro-USD: `{key, model}`; exact in aggregate (see [`micro_usd_increment`]).
pub const COST: &str = "tollgate_cost_micro_usd_total";
/// Records by where their usage came from: `{key, usage_source}`.
pub const USAGE_SOURCE: &str = "tollgate_usage_source_total";
/// Requests the gateway refused itself: `{key, reason}`.
pub const REJECTIONS: &str = "tollgate_rejections_total";
/// Milliseconds from admission to the end of the response (the whole stream), for exchanges
/// that were forwarded and got a response status: histogram `{model}`.
pub const UPSTREAM_LATENCY: &str = "tollgate_upstream_latency_ms";
/// Fetches of AWS credentials from their endpoint that succeeded (no labels).
pub const CREDENTIAL_REFRESHES: &str = "tollgate_credential_refreshes_total";
/// Fetches of AWS credentials that failed (no labels).
pub const CREDENTIAL_REFRESH_FAILURES: &str = "tollgate_credential_refresh_failures_total";

/// Every label name a series may carry.
pub const LABEL_NAMES: &[&str] = &["key", "model", "status", "kind", "usage_source", "reason"];

/// The `key` label of a request refused before its key was known.
pub const NO_KEY: &str = "-";

/// How a host applies an [`Update`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// Add `value` (always > 0: Envoy refuses a zero increment).
    Counter,
    /// Record one sample of `value`.
    Histogram,
}

/// Tollgate's metrics: each has a name, a kind and its labels in a fixed order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Metric {
    Requests,
    Tokens,
    Cost,
    UsageSource,
    Rejections,
    UpstreamLatency,
    CredentialRefreshes,
    CredentialRefreshFailures,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Self::Requests => REQUESTS,
            Self::Tokens => TOKENS,
            Self::Cost => COST,
            Self::UsageSource => USAGE_SOURCE,
            Self::Rejections => REJECTIONS,
            Self::UpstreamLatency => UPSTREAM_LATENCY,
            Self::CredentialRefreshes => CREDENTIAL_REFRESHES,
            Self::CredentialRefreshFailures => CREDENTIAL_REFRESH_FAILURES,
        }
    }

    pub fn kind(self) -> MetricKind {
        match self {
            Self::UpstreamLatency => MetricKind::Histogram,
            _ => MetricKind::Counter,
        }
    }

    /// Its label names (of [`LABEL_NAMES`]), `key` first where it has one.
    pub fn label_names(self) -> &'static [&'static str] {
        match self {
            Self::Requests => &["key", "model", "status"],
            Self::Tokens => &["key", "model", "kind"],
            Self::Cost => &["key", "model"],
            Self::UsageSource => &["key", "usage_source"],
            Self::Rejections => &["key", "reason"],
            Self::UpstreamLatency => &["model"],
            Self::CredentialRefreshes | Self::CredentialRefreshFailures => &[],
        }
    }
}

/// The most labels a series has.
pub const MAX_LABELS: usize = 3;

/// One change to one series: the metric, its label values (in [`Metric::label_names`] order)
/// and how much. Values borrow from the record they describe; only a response status is
/// written out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update<'a> {
    pub metric: Metric,
    values: [Cow<'a, str>; MAX_LABELS],
    pub value: u64,
}

impl<'a> Update<'a> {
    /// `values` for the metric's labels, in order; missing ones are empty.
    pub(crate) fn new<const N: usize>(
        metric: Metric,
        values: [Cow<'a, str>; N],
        value: u64,
    ) -> Self {
        let mut update = Self {
            metric,
            values: Default::default(),
            value,
        };
        for (slot, v) in update.values.iter_mut().zip(values) {
            *slot = v;
        }
        update
    }

    /// Add (a counter) or record (a histogram).
    pub fn kind(&self) -> MetricKind {
        self.metric.kind()
    }

    /// The series' labels: (name, value), in the metric's order.
    pub fn labels(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.metric
            .label_names()
            .iter()
            .zip(&self.values)
            .map(|(name, value)| (*name, value.as_ref()))
    }
}

/// The `key` label: a configured key ID, or [`NO_KEY`] before authentication.
pub fn key_label(key_id: Option<&str>) -> &str {
    match key_id {
        Some(k) if !k.is_empty() => k,
        _ => NO_KEY,
    }
}

/// The labels of a record's series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Labels<'a> {
    pub key: &'a str,
    pub model: &'a str,
}

impl<'a> Labels<'a> {
    /// The model label is `UsageRecord::model_label`, the name the per-model totals use: the
    /// cost counter's running total (`totals::Added::model_cost_before_pico_usd`) must be
    /// that of the same series.
    pub fn of(record: &'a UsageRecord) -> Self {
        Self {
            key: key_label(Some(&record.key_id)),
            model: record.model_label(),
        }
    }
}

pub fn usage_source_name(source: UsageSource) -> &'static str {
    match source {
        UsageSource::Reported => "reported",
        UsageSource::Estimated => "estimated",
        UsageSource::None => "none",
    }
}

/// The updates one finished exchange makes. `cost_before_pico`: the series' running pico-USD
/// total just before this record's cost was added (`totals::Added::model_cost_before_pico_usd`).
pub fn record_updates<'a>(
    record: &UsageRecord,
    labels: Labels<'a>,
    cost_before_pico: u64,
) -> Vec<Update<'a>> {
    let mut out = Vec::with_capacity(8);
    let Labels { key, model } = labels;
    let (key, model) = (|| Cow::Borrowed(key), || Cow::Borrowed(model));
    out.push(Update::new(
        Metric::Requests,
        [key(), model(), Cow::Owned(record.status.to_string())],
        1,
    ));
    let tokens = [
        ("input", record.input_tokens),
        ("output", record.output_tokens),
        ("cache_read", record.cache_read_tokens),
        ("cache_write", record.cache_write_tokens),
    ];
    for (kind, n) in tokens {
        if n > 0 {
            out.push(Update::new(
                Metric::Tokens,
                [key(), model(), Cow::Borrowed(kind)],
                n,
            ));
        }
    }
    let micro = micro_usd_increment(cost_before_pico, record.cost_pico_usd);
    if micro > 0 {
        out.push(Update::new(Metric::Cost, [key(), model()], micro));
    }
    out.push(Update::new(
        Metric::UsageSource,
        [key(), Cow::Borrowed(usage_source_name(record.usage_source))],
        1,
    ));
    // Forwarded and answered: the status is upstream's (Bedrock's, or Envoy's router's own 503
    // when it could not connect), errors and throttles included. The gateway's own refusals
    // (413, 500, quota 429) were never forwarded; status 0 (no answer: reset, client gone
    // first) measures no upstream response.
    if record.forwarded && record.status != 0 {
        out.push(Update::new(
            Metric::UpstreamLatency,
            [model()],
            record.latency_ms,
        ));
    }
    out
}

/// The update a refusal by the gateway makes. `key_id`: `None` before authentication.
pub fn refusal_updates<'a>(error: &GatewayError, key_id: Option<&'a str>) -> Vec<Update<'a>> {
    vec![Update::new(
        Metric::Rejections,
        [
            Cow::Borrowed(key_label(key_id)),
            Cow::Borrowed(error.kind.name()),
        ],
        1,
    )]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::pricing::{self, PriceSource};
    use crate::accounting::record::{model_label, OTHER_MODEL};
    use crate::error::ErrorKind;
    use crate::request::operation::Operation;

    const HAIKU: &str = "us.anthropic.claude-haiku-4-5-20251001-v1:0";
    const REGION: &str = "us-east-1";

    /// The label of an exchange naming `model`, sent upstream as `model_id`, priced as
    /// `record::make` prices it.
    fn label(model: &str, model_id: &str) -> String {
        let priced_as = pricing::quote(REGION, model_id).source;
        model_label(model, model_id, priced_as).to_string()
    }

    fn record(status: u16, source: UsageSource) -> UsageRecord {
        UsageRecord {
            request_id: None,
            key_id: "team-a".into(),
            model: "claude-fast".into(),
            model_id: HAIKU.into(),
            operation: Operation::Converse,
            streamed: false,
            forwarded: true,
            status,
            input_tokens: 12,
            output_tokens: 0,
            cache_read_tokens: 300,
            cache_write_tokens: 0,
            images: 0,
            cost_pico_usd: 2_500_000,
            usage_source: source,
            priced_as: PriceSource::Model,
            service_tier: Default::default(),
            unpriced_options: Vec::new(),
            exception: None,
            problem: None,
            request_bytes: 90,
            latency_ms: 41,
        }
    }

    /// An update as `metric;label=value;…`, to compare with at a glance (no escaping: the
    /// values here need none).
    fn shown(u: &Update<'_>) -> String {
        let mut s = u.metric.name().to_string();
        for (name, value) in u.labels() {
            s.push_str(&format!(";{name}={value}"));
        }
        s
    }

    #[test]
    fn model_label_is_alias_then_priced_id_then_other() {
        assert_eq!(label("claude-fast", HAIKU), "claude-fast");
        // An alias stays itself even when its target is not priced.
        assert_eq!(label("mystery", "us.example.unreleased-v9:0"), "mystery");
        assert_eq!(label(HAIKU, HAIKU), HAIKU);
        let nova = "amazon.nova-lite-v1:0";
        assert_eq!(label(nova, nova), nova);
        // ARNs count as the resource they are priced as.
        let arn = format!("arn:aws:bedrock:us-east-1:123456789012:inference-profile/{HAIKU}");
        assert_eq!(label(&arn, &arn), HAIKU);
        let fm = "arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-lite-v1:0";
        assert_eq!(label(fm, fm), nova);
        // Unknown, application-profile ARNs, encoded spellings, odd case: other.
        for id in [
            "us.example.unreleased-model-v9:0",
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3",
            "us.anthropic.claude-haiku-4-5-20251001-v1%3A0",
            "arn:aws:bedrock:us-east-1:1:inference-profile/us.anthropic.claude-haiku-4-5-20251001-v1%3A0",
            "US.ANTHROPIC.CLAUDE-HAIKU-4-5-20251001-V1:0",
            "arn:aws:bedrock",
            "",
        ] {
            assert_eq!(label(id, id), OTHER_MODEL, "{id}");
        }
        // Whatever `priced_as` says, a `%` or an ARN without a resource is never a label.
        assert_eq!(model_label("a%41", "a%41", PriceSource::Model), OTHER_MODEL);
        assert_eq!(
            model_label("arn:x", "arn:x", PriceSource::Model),
            OTHER_MODEL
        );
        assert_eq!(
            model_label("arn:x/", "arn:x/", PriceSource::Model),
            OTHER_MODEL
        );
    }

    #[test]
    fn labels_have_bounded_cardinality() {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..2000u32 {
            let ids = [
                format!("us.example.model-{i}-v1:0"),
                format!("arn:aws:bedrock:us-east-1:{i:012}:inference-profile/{HAIKU}"),
                format!("arn:aws-x{i}:bedrock:r{i}:{i:012}:inference-profile/{HAIKU}"),
                format!("arn:aws:bedrock:us-east-1:{i:012}:application-inference-profile/p{i}"),
                format!("{HAIKU}{}", "%".repeat(i as usize % 3)),
                format!("claude-fast-{i}"),
            ];
            for id in &ids {
                seen.insert(label(id, id));
            }
        }
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            vec![OTHER_MODEL.to_string(), HAIKU.to_string()]
        );
        assert_eq!(key_label(None), "-");
        assert_eq!(key_label(Some("")), "-");
        assert_eq!(key_label(Some("team-a")), "team-a");
    }

    #[test]
    fn record_labels_are_the_totals_model_label() {
        for (model, model_id) in [
            ("claude-fast", HAIKU),
            (HAIKU, HAIKU),
            (
                "us.example.unreleased-model-v9:0",
                "us.example.unreleased-model-v9:0",
            ),
        ] {
            let mut r = record(200, UsageSource::Reported);
            r.model = model.into();
            r.model_id = model_id.into();
            r.priced_as = pricing::quote(REGION, model_id).source;
            let labels = Labels::of(&r);
            assert_eq!(labels.model, r.model_label());
            assert_eq!(labels.model, label(model, model_id));
            assert_eq!(labels.key, "team-a");
        }
    }

    #[test]
    fn micro_usd_is_exact_in_aggregate() {
        // A total split into many uneven records, each given the running total before it.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut before = 0u64;
        let mut counter = 0u64;
        for i in 0..100_000u64 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let cost = match i % 4 {
                0 => 0,
                1 => seed >> 54,      // far below a micro-USD
                2 => seed >> 40,      // a few micro-USD
                _ => 999_999 + i % 3, // around one
            };
            counter += micro_usd_increment(before, cost);
            before += cost;
            assert_eq!(counter, before / 1_000_000, "after record {i}");
        }
        assert!(counter > 1000);
        // Concurrent records of one series: whichever order they land in, the total is exact.
        let costs = [700_000u64, 700_000, 1, 2_999_999, 300_000];
        for rotation in 0..costs.len() {
            let (mut before, mut counter) = (0u64, 0u64);
            for c in costs.iter().cycle().skip(rotation).take(costs.len()) {
                counter += micro_usd_increment(before, *c);
                before += c;
            }
            assert_eq!(counter, 4);
        }
        assert_eq!(micro_usd_increment(999_999, 1), 1);
        assert_eq!(micro_usd_increment(0, 999_999), 0);
        assert_eq!(micro_usd_increment(1_000_000, 0), 0);
        let (max, m) = (u128::from(u64::MAX), 1_000_000u128);
        assert_eq!(
            u128::from(micro_usd_increment(u64::MAX - 5, 10)),
            (max + 5) / m - (max - 5) / m
        );
        assert!(micro_usd_increment(u64::MAX, u64::MAX) >= u64::MAX / 1_000_000);
    }

    #[test]
    fn a_billed_record_moves_every_series() {
        let r = record(200, UsageSource::Reported);
        let u = record_updates(&r, Labels::of(&r), 999_000);
        let c = |name: &str, value| (name.to_string(), MetricKind::Counter, value);
        let u: Vec<_> = u.iter().map(|u| (shown(u), u.kind(), u.value)).collect();
        assert_eq!(
            u,
            vec![
                c(
                    "tollgate_requests_total;key=team-a;model=claude-fast;status=200",
                    1
                ),
                c(
                    "tollgate_tokens_total;key=team-a;model=claude-fast;kind=input",
                    12
                ),
                // No zero increments: Envoy refuses them.
                c(
                    "tollgate_tokens_total;key=team-a;model=claude-fast;kind=cache_read",
                    300
                ),
                // 999_000 + 2_500_000 pico crosses three micro-USD boundaries.
                c(
                    "tollgate_cost_micro_usd_total;key=team-a;model=claude-fast",
                    3
                ),
                c(
                    "tollgate_usage_source_total;key=team-a;usage_source=reported",
                    1
                ),
                (
                    "tollgate_upstream_latency_ms;model=claude-fast".to_string(),
                    MetricKind::Histogram,
                    41
                ),
            ]
        );
    }

    #[test]
    fn only_answered_upstream_exchanges_have_a_latency() {
        let mut r = record(429, UsageSource::None);
        (r.input_tokens, r.cache_read_tokens, r.cost_pico_usd) = (0, 0, 0);
        let names = |r: &UsageRecord| -> Vec<String> {
            record_updates(r, Labels::of(r), 0)
                .iter()
                .map(shown)
                .collect()
        };
        // Throttled by Bedrock: counted, nothing billed, its latency measured.
        assert_eq!(
            names(&r),
            vec![
                "tollgate_requests_total;key=team-a;model=claude-fast;status=429",
                "tollgate_usage_source_total;key=team-a;usage_source=none",
                "tollgate_upstream_latency_ms;model=claude-fast",
            ]
        );
        // Refused by the gateway after admission (413): no upstream latency.
        (r.status, r.forwarded) = (413, false);
        assert_eq!(names(&r).len(), 2);
        let mut r = record(0, UsageSource::Estimated);
        r.model = "us.example.unreleased-model-v9:0".into();
        r.model_id = r.model.clone();
        r.priced_as = PriceSource::UnknownModel;
        let u = record_updates(&r, Labels::of(&r), 0);
        assert_eq!(
            shown(&u[0]),
            "tollgate_requests_total;key=team-a;model=other;status=0"
        );
        assert!(u
            .iter()
            .all(|u| u.kind() == MetricKind::Counter && u.value > 0));
    }

    #[test]
    fn refusals_are_counted_by_key_and_reason() {
        let e = GatewayError::new(ErrorKind::ModelNotAllowed, "no");
        let u = refusal_updates(&e, Some("team-limited"));
        assert_eq!(
            u.iter()
                .map(|u| (shown(u), u.kind(), u.value))
                .collect::<Vec<_>>(),
            vec![(
                "tollgate_rejections_total;key=team-limited;reason=model_not_allowed".to_string(),
                MetricKind::Counter,
                1
            )]
        );
        let e = GatewayError::new(ErrorKind::MissingKey, "no");
        assert_eq!(
            shown(&refusal_updates(&e, None)[0]),
            "tollgate_rejections_total;key=-;reason=missing_key"
        );
    }

    #[test]
    fn every_label_is_a_known_label_in_its_metrics_order() {
        let r = record(200, UsageSource::Reported);
        let mut updates = record_updates(&r, Labels::of(&r), 0);
        updates.extend(refusal_updates(
            &GatewayError::new(ErrorKind::Internal, "x"),
            None,
        ));
        for u in updates {
            let names: Vec<_> = u.labels().map(|(n, _)| n).collect();
            assert!(names.iter().all(|n| LABEL_NAMES.contains(n)), "{names:?}");
            assert!(!names.is_empty() && names.len() <= MAX_LABELS);
            assert!(
                names[1..].iter().all(|n| *n != "key"),
                "key first: {names:?}"
            );
        }
    }
}
