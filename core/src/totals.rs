//! Per-key usage totals, kept exact across worker threads in a [`CasStore`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::store::{cas_update, CasStore, StoreError};
use crate::usage::Usage;

/// Usage and cost counted together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub cost_pico_usd: u64,
}

impl Counts {
    pub fn of_request(usage: &Usage, cost_pico_usd: u64) -> Self {
        Self {
            requests: 1,
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cache_read_tokens: usage.cache_read_tokens,
            cache_write_tokens: usage.cache_write_tokens,
            cost_pico_usd,
        }
    }

    pub fn plus(&self, o: &Self) -> Self {
        Self {
            requests: self.requests.saturating_add(o.requests),
            input_tokens: self.input_tokens.saturating_add(o.input_tokens),
            output_tokens: self.output_tokens.saturating_add(o.output_tokens),
            cache_read_tokens: self.cache_read_tokens.saturating_add(o.cache_read_tokens),
            cache_write_tokens: self.cache_write_tokens.saturating_add(o.cache_write_tokens),
            cost_pico_usd: self.cost_pico_usd.saturating_add(o.cost_pico_usd),
        }
    }
}

/// Lifetime totals of one API key, overall and by model (as metrics label it). One record per
/// key, updated with one CAS: a request is counted entirely or not at all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    #[serde(flatten)]
    pub all: Counts,
    #[serde(default)]
    pub models: BTreeMap<String, Counts>,
}

impl Totals {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// `None` for bytes this version did not write.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

pub fn store_key(key_id: &str) -> String {
    format!("tollgate/totals/{key_id}")
}

/// Creates the totals record of each key that has none; never touches an existing one, so a
/// worker (re)starting or a configuration reload resets nothing.
pub fn ensure<S: CasStore + ?Sized>(
    store: &S,
    key_ids: impl IntoIterator<Item = impl AsRef<str>>,
) -> Result<(), StoreError> {
    let zero = Totals::default().encode();
    for id in key_ids {
        let key = store_key(id.as_ref());
        if store.get(&key)?.is_none() {
            store.create(&key, &zero)?;
        }
    }
    Ok(())
}

/// What one [`add`] changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Added {
    /// The model's cost total before this request: exact metric increments derive from it.
    pub model_cost_before_pico_usd: u64,
    pub totals: Totals,
}

/// Adds one request's usage to the key's totals, overall and under `model`.
pub fn add<S: CasStore + ?Sized>(
    store: &S,
    key_id: &str,
    model: &str,
    delta: &Counts,
) -> Result<Added, StoreError> {
    let zero = Totals::default().encode();
    let mut unreadable = false;
    let added = cas_update(store, &store_key(key_id), &zero, |current| {
        let mut t = Totals::decode(current).unwrap_or_else(|| {
            unreadable = true;
            Totals::default()
        });
        t.all = t.all.plus(delta);
        let per_model = t.models.entry(model.to_string()).or_default();
        let before = per_model.cost_pico_usd;
        *per_model = per_model.plus(delta);
        (
            t.encode(),
            Added {
                model_cost_before_pico_usd: before,
                totals: t,
            },
        )
    })?;
    if unreadable {
        // Only a foreign writer in our namespace could cause this; say so rather than hide it.
        return Err(StoreError::Host(format!(
            "totals of `{key_id}` were unreadable and restarted from zero"
        )));
    }
    Ok(added)
}

/// Adds a finished exchange to its key's totals, under its model label. Only requests that went
/// to Bedrock count (refusals show in logs and metrics): `Ok(None)` for the others.
pub fn add_record<S: CasStore + ?Sized>(
    store: &S,
    record: &crate::record::UsageRecord,
) -> Result<Option<Added>, StoreError> {
    if !record.forwarded {
        return Ok(None);
    }
    let delta = Counts::of_request(&record.usage(), record.cost_pico_usd);
    add(store, &record.key_id, record.model_label(), &delta).map(Some)
}

pub fn read<S: CasStore + ?Sized>(store: &S, key_id: &str) -> Result<Totals, StoreError> {
    Ok(store
        .get(&store_key(key_id))?
        .and_then(|(v, _)| Totals::decode(&v))
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use std::sync::Arc;

    fn counts(requests: u64, cost: u64) -> Counts {
        Counts {
            requests,
            cost_pico_usd: cost,
            ..Default::default()
        }
    }

    #[test]
    fn round_trip_and_reject_foreign_bytes() {
        let mut t = Totals {
            all: counts(3, u64::MAX),
            ..Default::default()
        };
        t.models.insert("claude-fast".into(), counts(1, 2));
        assert_eq!(Totals::decode(&t.encode()), Some(t));
        assert_eq!(Totals::decode(b""), None);
        assert_eq!(Totals::decode(&[9; 49]), None);
    }

    #[test]
    fn ensure_never_resets() {
        let s = MemoryStore::default();
        ensure(&s, ["a"]).unwrap();
        add(&s, "a", "m", &counts(1, 5)).unwrap();
        ensure(&s, ["a", "b"]).unwrap();
        assert_eq!(read(&s, "a").unwrap().all.cost_pico_usd, 5);
        assert_eq!(read(&s, "b").unwrap(), Totals::default());
    }

    #[test]
    fn models_are_counted_apart_and_report_their_previous_cost() {
        let s = MemoryStore::default();
        assert_eq!(
            add(&s, "a", "m1", &counts(1, 5))
                .unwrap()
                .model_cost_before_pico_usd,
            0
        );
        assert_eq!(
            add(&s, "a", "m2", &counts(1, 7))
                .unwrap()
                .model_cost_before_pico_usd,
            0
        );
        let added = add(&s, "a", "m1", &counts(1, 11)).unwrap();
        assert_eq!(added.model_cost_before_pico_usd, 5);
        assert_eq!(added.totals.all, counts(3, 23));
        assert_eq!(added.totals.models["m1"], counts(2, 16));
    }

    #[test]
    fn only_forwarded_records_count() {
        use crate::record::{make, Facts};
        let s = MemoryStore::default();
        let reading = crate::meter::Reading {
            complete: true,
            usage: Usage {
                input_tokens: 4,
                output_tokens: 2,
                ..Default::default()
            },
            ..Default::default()
        };
        let facts = |sent_upstream, status| Facts {
            request_id: None,
            key_id: "k",
            model: "claude-fast",
            model_id: "us.anthropic.claude-haiku-4-5-20251001-v1:0",
            region: "us-east-1",
            operation: crate::Operation::Converse,
            status,
            sent_upstream,
            reading: &reading,
            request_bytes: 10,
            latency_ms: 1,
        };
        assert_eq!(add_record(&s, &make(facts(false, 429))).unwrap(), None);
        let added = add_record(&s, &make(facts(true, 200))).unwrap().unwrap();
        assert_eq!(added.totals.all.requests, 1);
        assert_eq!(added.totals.models["claude-fast"].output_tokens, 2);
    }

    #[test]
    fn concurrent_adds_are_exact() {
        let s = Arc::new(MemoryStore::default());
        ensure(&*s, ["k"]).unwrap();
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..300u64 {
                        let usage = Usage {
                            input_tokens: t + i,
                            output_tokens: 1,
                            ..Default::default()
                        };
                        add(
                            &*s,
                            "k",
                            if i % 2 == 0 { "even" } else { "odd" },
                            &Counts::of_request(&usage, 3),
                        )
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let total = read(&*s, "k").unwrap();
        assert_eq!(total.all.requests, 2400);
        assert_eq!(total.all.output_tokens, 2400);
        assert_eq!(total.all.cost_pico_usd, 7200);
        assert_eq!(
            total.models["even"].requests + total.models["odd"].requests,
            2400
        );
        let expected: u64 = (0..8u64)
            .map(|t| (0..300u64).map(|i| t + i).sum::<u64>())
            .sum();
        assert_eq!(total.all.input_tokens, expected);
    }
}
