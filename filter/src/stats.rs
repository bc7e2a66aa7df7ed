//! Envoy's naming of Tollgate's metrics: labels travel inside the stat name —
//! `tollgate_requests_total;key=team-a;model=claude-fast;status=200` — and Envoy's
//! `stats_config.stats_tags` turn them into Prometheus labels with the regexes in
//! [`STATS_TAGS`] (the shipped `envoy/*.yaml` carry them; a test checks they match):
//!
//! ```text
//! tollgate_requests_total{key="team-a",model="claude-fast",status="200"} 3
//! ```
//!
//! Which series move, with which labels, is core's (`tollgate_core::accounting::metrics`).

use tollgate_core::accounting::metrics::Update;

/// Envoy `stats_config.stats_tags`: (tag_name, regex). The regexes see the whole stat name,
/// which Envoy prefixes with `wasmcustom.`; the first group is cut from the name, the second is
/// the value. Anchored, so Envoy applies them only to stats under `wasmcustom.`.
pub const STATS_TAGS: &[(&str, &str)] = &[
    (
        "key",
        r"^wasmcustom\.tollgate_[a-z_]+(?:;[a-z_]+=[^;]*)*?(;key=([^;]*))",
    ),
    (
        "model",
        r"^wasmcustom\.tollgate_[a-z_]+(?:;[a-z_]+=[^;]*)*?(;model=([^;]*))",
    ),
    (
        "status",
        r"^wasmcustom\.tollgate_[a-z_]+(?:;[a-z_]+=[^;]*)*?(;status=([^;]*))",
    ),
    (
        "kind",
        r"^wasmcustom\.tollgate_[a-z_]+(?:;[a-z_]+=[^;]*)*?(;kind=([^;]*))",
    ),
    (
        "usage_source",
        r"^wasmcustom\.tollgate_[a-z_]+(?:;[a-z_]+=[^;]*)*?(;usage_source=([^;]*))",
    ),
    (
        "reason",
        r"^wasmcustom\.tollgate_[a-z_]+(?:;[a-z_]+=[^;]*)*?(;reason=([^;]*))",
    ),
];

/// Writes the stat name of `update`'s series into `name` (cleared first), without Envoy's
/// `wasmcustom.` prefix: `metric;label=value;…`.
pub fn write_name(update: &Update<'_>, name: &mut String) {
    name.clear();
    name.push_str(update.metric.name());
    for (label, value) in update.labels() {
        name.push(';');
        name.push_str(label);
        name.push('=');
        escape_value(value, name);
    }
}

/// Appends `value` with every byte outside `[A-Za-z0-9._:/@-]` written as `%XX`, and a final
/// `.` as `%2E` (Envoy's tag extraction drops a value's trailing dot). Everything in a label
/// value today (key IDs, aliases, model IDs) passes through unchanged; anything odd shows up
/// escaped instead of breaking the name.
pub fn escape_value(value: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = value.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let plain = b.is_ascii_alphanumeric()
            || matches!(b, b'_' | b'-' | b':' | b'/' | b'@')
            || (b == b'.' && i + 1 < bytes.len());
        if plain {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::accounting::metrics::{
        record_updates, refusal_updates, Labels, LABEL_NAMES,
    };
    use tollgate_core::accounting::pricing::PriceSource;
    use tollgate_core::accounting::record::{UsageRecord, UsageSource};
    use tollgate_core::error::{ErrorKind, GatewayError};
    use tollgate_core::Operation;

    const HAIKU: &str = "us.anthropic.claude-haiku-4-5-20251001-v1:0";

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

    fn name(u: &Update<'_>) -> String {
        let mut s = String::new();
        write_name(u, &mut s);
        s
    }

    /// What Envoy's tag extraction makes of a name, done by hand: (name, [(tag, value)]).
    fn extract(name: &str) -> (String, Vec<(String, String)>) {
        let mut parts = name.split(';');
        let metric = parts.next().unwrap_or_default().to_string();
        let tags = parts
            .map(|p| {
                let (t, v) = p.split_once('=').expect("tag=value");
                assert!(!v.contains('='), "{name}");
                (t.to_string(), v.to_string())
            })
            .collect();
        (metric, tags)
    }

    #[test]
    fn escaping_keeps_names_splittable() {
        let mut s = String::new();
        escape_value(HAIKU, &mut s);
        assert_eq!(s, HAIKU);
        let arn = "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-haiku-4-5@20251001";
        s.clear();
        escape_value(arn, &mut s);
        assert_eq!(s, arn);
        for (raw, escaped) in [
            ("a;key=b", "a%3Bkey%3Db"),
            ("50%", "50%25"),
            ("sp ace\"q\\", "sp%20ace%22q%5C"),
            ("é", "%C3%A9"),
            ("trail.", "trail%2E"),
            ("a..b.c", "a..b.c"),
            ("-", "-"),
            ("", ""),
        ] {
            s.clear();
            escape_value(raw, &mut s);
            assert_eq!(s, escaped, "{raw}");
        }
        let mut r = record(0, UsageSource::Estimated);
        (r.key_id, r.model) = ("k;ey=1".into(), "m=;".into());
        let name = name(&record_updates(&r, Labels::of(&r), 0)[0]);
        assert_eq!(
            extract(&name),
            (
                "tollgate_requests_total".to_string(),
                vec![
                    ("key".into(), "k%3Bey%3D1".into()),
                    ("model".into(), "m%3D%3B".into()),
                    ("status".into(), "0".into())
                ]
            )
        );
    }

    #[test]
    fn stat_names_carry_every_label() {
        let r = record(200, UsageSource::Reported);
        let names: Vec<_> = record_updates(&r, Labels::of(&r), 999_000)
            .iter()
            .map(name)
            .collect();
        assert_eq!(
            names,
            [
                "tollgate_requests_total;key=team-a;model=claude-fast;status=200",
                "tollgate_tokens_total;key=team-a;model=claude-fast;kind=input",
                "tollgate_tokens_total;key=team-a;model=claude-fast;kind=cache_read",
                "tollgate_cost_micro_usd_total;key=team-a;model=claude-fast",
                "tollgate_usage_source_total;key=team-a;usage_source=reported",
                "tollgate_upstream_latency_ms;model=claude-fast",
            ]
        );
        let e = GatewayError::new(ErrorKind::ModelNotAllowed, "no");
        assert_eq!(
            name(&refusal_updates(&e, Some("team-limited"))[0]),
            "tollgate_rejections_total;key=team-limited;reason=model_not_allowed"
        );
        let e = GatewayError::new(ErrorKind::MissingKey, "no");
        assert_eq!(
            name(&refusal_updates(&e, None)[0]),
            "tollgate_rejections_total;key=-;reason=missing_key"
        );
    }

    #[test]
    fn every_label_has_a_tag_regex_in_the_shipped_envoy_configs() {
        let configs = [
            include_str!("../../envoy/envoy-emulator.yaml"),
            include_str!("../../envoy/envoy-bedrock.yaml"),
        ];
        for yaml in configs {
            for (tag, regex) in STATS_TAGS {
                let spec = format!("- tag_name: {tag}\n    regex: '{regex}'");
                assert!(yaml.contains(&spec), "missing in an envoy config:\n{spec}");
            }
        }
        for label in LABEL_NAMES {
            assert!(STATS_TAGS.iter().any(|(t, _)| t == label), "{label}");
        }
        let r = record(200, UsageSource::Reported);
        let mut updates = record_updates(&r, Labels::of(&r), 0);
        updates.extend(refusal_updates(
            &GatewayError::new(ErrorKind::Internal, "x"),
            None,
        ));
        for u in updates {
            for (tag, _) in extract(&name(&u)).1 {
                assert!(STATS_TAGS.iter().any(|(t, _)| *t == tag), "{tag}");
            }
        }
    }
}
