//! The end of an exchange, the same on every host: the reservation is settled, the usage is
//! added to the key's totals, and only then is the record logged and the metrics moved. Hosts
//! get the lines and metric updates as [`Effect`]s, in order, and only execute them.
//!
//! Counted before logged: a record anyone reads in the log is already in the totals (or the
//! line after it says it could not be added). Core performs the store writes itself, through
//! the host's store traits, before it hands anything back, so no host can reorder them.

use crate::accounting::metrics::{self, Labels, Update};
use crate::accounting::record::UsageRecord;
use crate::accounting::totals::{self, UsageTotals};
use crate::store::StoreError;

/// How loud a log line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Billed, but something about it deserves a look (an unknown model's fallback price).
    Warn,
    /// Money went uncounted: the usage is not in the key's totals.
    Critical,
}

/// One thing a host does once an exchange has ended, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect<'a> {
    /// The usage record's line, `tollgate.usage {json}`: Envoy logs it at info level, Spin
    /// writes it to stdout.
    Record(String),
    /// A line for the operator: Envoy's log at that level, Spin's stderr.
    Log(Level, String),
    /// A metric moves. Hosts without metrics (Spin) skip it.
    Metric(Update<'a>),
}

/// A finished exchange, already settled and counted: its record and what the host does next.
#[derive(Debug)]
pub struct Ending {
    record: UsageRecord,
    /// What adding the record to the totals returned (see [`totals::add_record`]).
    counted: Result<Option<u64>, StoreError>,
}

/// Adds `record` (settled already) to its key's totals, then says what to log and measure.
pub(crate) fn count(record: UsageRecord, totals: &dyn UsageTotals) -> Ending {
    let counted = totals::add_record(totals, &record);
    Ending { record, counted }
}

impl Ending {
    pub fn record(&self) -> &UsageRecord {
        &self.record
    }

    /// In order: the record's line; a warning when it was billed at a fallback price; a
    /// critical line when its usage could not be added to the totals; the metric updates.
    pub fn effects(&self) -> impl Iterator<Item = Effect<'_>> {
        let record = &self.record;
        let warning = record
            .price_warning()
            .map(|warning| Effect::Log(Level::Warn, warning));
        let (cost_before, uncounted) = match &self.counted {
            Ok(before) => (before.unwrap_or(0), None),
            Err(e) => (
                // The cost counter is then off by at most one micro-USD.
                0,
                Some(Effect::Log(
                    Level::Critical,
                    format!(
                        "tollgate: usage of key `{}` NOT added to totals: {e}",
                        record.key_id
                    ),
                )),
            ),
        };
        let updates = metrics::record_updates(record, Labels::of(record), cost_before);
        std::iter::once(Effect::Record(record.log_line()))
            .chain(warning)
            .chain(uncounted)
            .chain(updates.into_iter().map(Effect::Metric))
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::accounting::metrics::{Metric, MetricKind};
    use crate::accounting::totals::{CasTotals, Counts, IncrementTotals, Lifetime};
    use crate::config::Config;
    use crate::exchange::{admit, Admission, Exchange};
    use crate::quota::counters::{CasCounters, Counters, IncrementCounters};
    use crate::quota::{counter_name, limits::Scope, period::Period};
    use crate::request::auth::hash_key;
    use crate::request::model_id::encode_path_label;
    use crate::store::memory::{Encoding, MemoryAtomic, MemoryStore};
    use crate::upstream::signing::SigningKeyCache;

    const HAIKU: &str = "us.anthropic.claude-haiku-4-5-20251001-v1:0";
    const UNPRICED: &str = "us.example.unreleased-model-v9:0";
    const NOW: u64 = 1_795_383_600_000;
    const ANSWER: &[u8] =
        br#"{"usage":{"inputTokens":1000,"outputTokens":100,"totalTokens":1100}}"#;

    /// A key with a concurrency limit and a daily budget, so ending settles two counters.
    fn config() -> Config {
        let json = format!(
            r#"{{"region":"us-east-1","upstream_host":"h",
                "api_keys":[{{"id":"a","sha256":"{}","models":["*"],
                  "limits":{{"max_concurrent_requests":2,"budget":{{"usd":"10","period":"daily"}}}}}}],
                "credentials":{{"type":"inline","access_key_id":"AK","secret_access_key":"SK"}},
                "max_request_body_bytes":100}}"#,
            hex::encode(hash_key("k"))
        );
        Config::parse(json.as_bytes(), &|_| None).unwrap()
    }

    /// An exchange on `model` that Bedrock answered with [`ANSWER`].
    fn answered(config: &Config, counters: &dyn Counters, model: &str) -> Box<Exchange> {
        let path = format!("/model/{}/converse", encode_path_label(model));
        let Admission::Forward(mut ex) = admit(config, "POST", &path, &[("x-api-key", "k")], NOW)
        else {
            panic!("not admitted")
        };
        ex.upstream_request(
            config,
            counters,
            &mut SigningKeyCache::default(),
            b"{}",
            SystemTime::UNIX_EPOCH,
        )
        .unwrap();
        ex.on_response_headers(200, [("content-type", "application/json")]);
        ex.on_response_body(ANSWER);
        ex
    }

    fn read(counters: &dyn Counters, what: &str, window: u64) -> i64 {
        counters
            .read(&counter_name("a", Scope::Key, "", what), window)
            .unwrap()
    }

    fn lines(effects: &[Effect<'_>]) -> Vec<String> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Record(line) => Some(format!("record {line}")),
                Effect::Log(level, line) => Some(format!("{level:?} {line}")),
                Effect::Metric(_) => None,
            })
            .collect()
    }

    /// Effects are the record line, then log lines, then metric updates only.
    fn assert_ordered(effects: &[Effect<'_>]) {
        let rank = |e: &Effect<'_>| match e {
            Effect::Record(_) => 0,
            Effect::Log(..) => 1,
            Effect::Metric(_) => 2,
        };
        assert!(matches!(effects.first(), Some(Effect::Record(_))));
        assert!(
            effects.windows(2).all(|w| rank(&w[0]) <= rank(&w[1])),
            "{effects:?}"
        );
        assert_eq!(effects.iter().filter(|e| rank(e) == 0).count(), 1);
    }

    #[test]
    fn a_record_handed_to_the_host_is_already_settled_and_counted() {
        let config = config();
        let cas = MemoryStore::default();
        let atomic = MemoryAtomic::new(Encoding::RedisDecimal);
        let hosts: [(&dyn Counters, &dyn UsageTotals); 2] = [
            (&CasCounters(&cas), &CasTotals(&cas)),
            (&IncrementCounters(&atomic), &IncrementTotals(&atomic)),
        ];
        for (counters, totals) in hosts {
            let mut ex = answered(&config, counters, HAIKU);
            assert_eq!(read(counters, "concurrent", 0), 1, "a slot held in flight");
            let ending = ex.end(&config, counters, totals, NOW + 5).unwrap();
            // Before the host has logged anything: the slot is free, the budget holds the
            // actual cost, and the totals hold the request.
            let record = ending.record();
            assert_eq!((record.input_tokens, record.output_tokens), (1000, 100));
            assert!(record.cost_pico_usd > 0);
            assert_eq!(read(counters, "concurrent", 0), 0);
            assert_eq!(
                read(counters, "spend", Period::Daily.window(NOW)),
                i64::try_from(record.cost_pico_usd).unwrap()
            );
            let Lifetime { all, models } = totals.read("a").unwrap();
            assert_eq!(
                (all.requests, all.input_tokens, all.output_tokens),
                (1, 1000, 100)
            );
            assert_eq!(all.cost_pico_usd, u128::from(record.cost_pico_usd));
            assert_eq!(models[HAIKU].requests, 1);

            let effects: Vec<_> = ending.effects().collect();
            assert_ordered(&effects);
            assert_eq!(lines(&effects), [format!("record {}", record.log_line())]);
            let metrics: Vec<_> = effects
                .iter()
                .filter_map(|e| match e {
                    Effect::Metric(u) => Some(u.clone()),
                    _ => None,
                })
                .collect();
            assert_eq!(
                metrics,
                metrics::record_updates(record, Labels::of(record), 0)
            );
            assert!(ex.end(&config, counters, totals, NOW + 6).is_none());
            assert_eq!(totals.read("a").unwrap().all.requests, 1, "counted once");
        }
    }

    #[test]
    fn the_cost_metric_continues_the_totals_running_cost() {
        let config = config();
        let store = MemoryStore::default();
        let (counters, totals) = (CasCounters(&store), CasTotals(&store));
        let cost = |effects: &[Effect<'_>]| -> u64 {
            effects
                .iter()
                .filter_map(|e| match e {
                    Effect::Metric(u) if u.metric == Metric::Cost => Some(u.value),
                    _ => None,
                })
                .sum()
        };
        let mut micro = 0;
        for i in 0..3 {
            let ending = answered(&config, &counters, HAIKU)
                .end(&config, &counters, &totals, NOW + i)
                .unwrap();
            micro += cost(&ending.effects().collect::<Vec<_>>());
        }
        let total = totals.read("a").unwrap().all.cost_pico_usd;
        assert_eq!(u128::from(micro), total / 1_000_000);
    }

    /// Totals whose store fails every write.
    struct Failing;

    impl UsageTotals for Failing {
        fn add(&self, _: &str, _: &str, _: &Counts) -> Result<Option<u64>, StoreError> {
            Err(StoreError::Host("store down".into()))
        }
        fn read(&self, _: &str) -> Result<Lifetime, StoreError> {
            Err(StoreError::Host("store down".into()))
        }
    }

    #[test]
    fn usage_the_totals_could_not_take_is_logged_critical_after_its_record() {
        let config = config();
        let store = MemoryStore::default();
        let counters = CasCounters(&store);
        let ending = answered(&config, &counters, HAIKU)
            .end(&config, &counters, &Failing, NOW)
            .unwrap();
        let effects: Vec<_> = ending.effects().collect();
        assert_ordered(&effects);
        assert_eq!(
            lines(&effects),
            [
                format!("record {}", ending.record().log_line()),
                "Critical tollgate: usage of key `a` NOT added to totals: store: store down"
                    .to_string()
            ]
        );
        // Still settled: the budget keeps the cost, the slot is free.
        assert_eq!(read(&counters, "concurrent", 0), 0);
        assert!(effects
            .iter()
            .any(|e| matches!(e, Effect::Metric(u) if u.kind() == MetricKind::Counter)));
    }

    #[test]
    fn a_fallback_price_is_warned_about_after_the_record() {
        let config = config();
        let store = MemoryStore::default();
        let (counters, totals) = (CasCounters(&store), CasTotals(&store));
        let ending = answered(&config, &counters, UNPRICED)
            .end(&config, &counters, &totals, NOW)
            .unwrap();
        let effects: Vec<_> = ending.effects().collect();
        assert_ordered(&effects);
        assert_eq!(
            lines(&effects),
            [
                format!("record {}", ending.record().log_line()),
                format!("Warn tollgate: no price for model `{UNPRICED}`: billed at the most expensive chat tier"),
            ]
        );
        assert_eq!(totals.read("a").unwrap().models["other"].requests, 1);
    }

    #[test]
    fn a_request_refused_after_admission_is_logged_but_not_counted() {
        let config = config();
        let store = MemoryStore::default();
        let (counters, totals) = (CasCounters(&store), CasTotals(&store));
        let headers = [("x-api-key", "k"), ("content-length", "101")];
        let Admission::Forward(mut ex) =
            admit(&config, "POST", "/model/x.y-v1:0/converse", &headers, NOW)
        else {
            panic!("not admitted")
        };
        ex.check_declared_body_size().unwrap_err();
        let ending = ex.end(&config, &counters, &totals, NOW).unwrap();
        assert_eq!(
            (ending.record().status, ending.record().forwarded),
            (413, false)
        );
        let effects: Vec<_> = ending.effects().collect();
        assert_ordered(&effects);
        assert_eq!(lines(&effects).len(), 1);
        assert_eq!(totals.read("a").unwrap(), Lifetime::default());
    }
}
