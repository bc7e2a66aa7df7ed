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

/// First bytes of the binary encoding: 0xF5 never occurs in UTF-8, so no JSON document (the
/// encoding of earlier versions) starts with it; then a format version.
const MAGIC: [u8; 3] = [0xF5, b'T', 1];
/// The layout's bounds. Labels are `metrics::model_label`s (aliases ≤ 128 bytes, price-table
/// IDs, `other`), a few per key; anything beyond is written as JSON instead (see `encode`).
const MAX_LABEL_BYTES: usize = u8::MAX as usize;
const MAX_MODELS: usize = 4096;
const _: () = assert!(MAX_MODELS <= u16::MAX as usize);
const COUNTS_BYTES: usize = 6 * 8;
/// `Totals::default().encode()`, for `cas_update`'s absent-key value without an allocation.
const ZERO: [u8; MAGIC.len() + COUNTS_BYTES + 2] = {
    let mut z = [0; MAGIC.len() + COUNTS_BYTES + 2];
    z[0] = MAGIC[0];
    z[1] = MAGIC[1];
    z[2] = MAGIC[2];
    z
};

impl Counts {
    fn fields(&self) -> [u64; 6] {
        [
            self.requests,
            self.input_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
            self.cost_pico_usd,
        ]
    }

    fn put(&self, out: &mut Vec<u8>) {
        for v in self.fields() {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn take(r: &mut &[u8]) -> Option<Self> {
        let mut u64_le = || take_array::<8>(r).map(u64::from_le_bytes);
        Some(Self {
            requests: u64_le()?,
            input_tokens: u64_le()?,
            output_tokens: u64_le()?,
            cache_read_tokens: u64_le()?,
            cache_write_tokens: u64_le()?,
            cost_pico_usd: u64_le()?,
        })
    }
}

/// The next `N` bytes of `r`, or `None` when fewer remain.
fn take_array<const N: usize>(r: &mut &[u8]) -> Option<[u8; N]> {
    let (head, rest) = r.split_first_chunk::<N>()?;
    *r = rest;
    Some(*head)
}

impl Totals {
    /// Binary (JSON decode + encode was 8 % of a request's instructions):
    ///
    /// `MAGIC`, overall counts, model count (u16), then per model in ascending label order: label
    /// length (u8), label (UTF-8), counts. Counts are 6 × u64, integers little-endian.
    ///
    /// Totals beyond the layout's bounds (never seen in practice) are written as JSON, which
    /// `decode` also reads, rather than lose anything.
    pub fn encode(&self) -> Vec<u8> {
        if self.models.len() > MAX_MODELS || self.models.keys().any(|m| m.len() > MAX_LABEL_BYTES) {
            return serde_json::to_vec(self).unwrap_or_default();
        }
        let size = self
            .models
            .keys()
            .map(|m| 1 + m.len() + COUNTS_BYTES)
            .sum::<usize>()
            + ZERO.len();
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&MAGIC);
        self.all.put(&mut out);
        // Both fit their fields: checked above.
        out.extend_from_slice(&(self.models.len() as u16).to_le_bytes());
        for (model, counts) in &self.models {
            out.push(model.len() as u8);
            out.extend_from_slice(model.as_bytes());
            counts.put(&mut out);
        }
        out
    }

    /// Reads the binary encoding or the JSON of earlier versions (still in stores that outlive
    /// a plugin reload or a deploy). `None` for anything else: other bytes, truncated or
    /// trailing data, labels out of order or repeated, bounds exceeded.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.first() == Some(&MAGIC[0]) {
            Self::decode_binary(bytes)
        } else {
            serde_json::from_slice(bytes).ok()
        }
    }

    fn decode_binary(bytes: &[u8]) -> Option<Self> {
        let mut r = bytes.strip_prefix(&MAGIC[..])?;
        let all = Counts::take(&mut r)?;
        let n = usize::from(u16::from_le_bytes(take_array(&mut r)?));
        if n > MAX_MODELS {
            return None;
        }
        let mut models = BTreeMap::new();
        let mut previous: Option<&str> = None;
        for _ in 0..n {
            let [len] = take_array(&mut r)?;
            let (label, rest) = r.split_at_checked(usize::from(len))?;
            r = rest;
            let label = std::str::from_utf8(label).ok()?;
            // Strictly ascending, as `encode` writes them: one meaning per byte string.
            if previous.is_some_and(|p| p >= label) {
                return None;
            }
            previous = Some(label);
            models.insert(label.to_string(), Counts::take(&mut r)?);
        }
        r.is_empty().then_some(Self { all, models })
    }
}

/// Our prefix with a higher version byte.
fn is_newer_format(bytes: &[u8]) -> bool {
    matches!(bytes, [m0, m1, v, ..] if [*m0, *m1] == MAGIC[..2] && *v > MAGIC[2])
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
    for id in key_ids {
        let key = store_key(id.as_ref());
        if store.get(&key)?.is_none() {
            store.create(&key, &ZERO)?;
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
    let mut unreadable = false;
    let mut newer = false;
    let added = cas_update(store, &store_key(key_id), &ZERO, |current| {
        // A later format (a newer build sharing the store during a rolling deploy) is left as
        // it is: this request goes uncounted in lifetime totals rather than wiping them.
        newer = is_newer_format(current);
        if newer {
            return (current.to_vec(), None);
        }
        let mut t = Totals::decode(current).unwrap_or_else(|| {
            unreadable = true;
            Totals::default()
        });
        t.all = t.all.plus(delta);
        // No label allocation once the model has its entry.
        let per_model = match t.models.get_mut(model) {
            Some(c) => c,
            None => t.models.entry(model.to_string()).or_default(),
        };
        let before = per_model.cost_pico_usd;
        *per_model = per_model.plus(delta);
        (
            t.encode(),
            Some(Added {
                model_cost_before_pico_usd: before,
                totals: t,
            }),
        )
    })?;
    let Some(added) = added.filter(|_| !newer) else {
        return Err(StoreError::Host(format!(
            "totals of `{key_id}` are in a newer format than this build writes: left unchanged"
        )));
    };
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

    /// A small deterministic generator (SplitMix64): many varied `Totals` without extra crates.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        /// Edge values as often as ordinary ones.
        fn value(&mut self) -> u64 {
            match self.below(6) {
                0 => 0,
                1 => u64::MAX,
                2 => self.below(1000),
                3 => 1 << self.below(64),
                _ => self.next(),
            }
        }
        fn counts(&mut self) -> Counts {
            Counts {
                requests: self.value(),
                input_tokens: self.value(),
                output_tokens: self.value(),
                cache_read_tokens: self.value(),
                cache_write_tokens: self.value(),
                cost_pico_usd: self.value(),
            }
        }
        fn label(&mut self, max_chars: u64) -> String {
            const PIECES: &[&str] = &[
                "a", "Z", "-", ".", "_", "9", ":", "é", "模", "🦀", "\"", "\\",
            ];
            let n = self.below(max_chars + 1);
            (0..n)
                .map(|_| PIECES[self.below(PIECES.len() as u64) as usize])
                .collect()
        }
        /// Up to `max_models` models, mostly a few.
        fn totals(&mut self, max_models: u64) -> Totals {
            let mut t = Totals {
                all: self.counts(),
                ..Default::default()
            };
            let n = match self.below(10) {
                0 => 0,
                1 => self.below(max_models + 1),
                _ => self.below(6.min(max_models + 1)),
            };
            for _ in 0..n {
                // Up to 4 bytes a piece: also labels at and beyond the 255-byte bound.
                let max_chars = if self.below(8) == 0 { 200 } else { 40 };
                let label = self.label(max_chars);
                let c = self.counts();
                t.models.insert(label, c);
            }
            t
        }
    }

    fn fits_binary(t: &Totals) -> bool {
        t.models.len() <= MAX_MODELS && t.models.keys().all(|m| m.len() <= MAX_LABEL_BYTES)
    }

    /// What versions before the binary encoding wrote.
    fn old_json(t: &Totals) -> Vec<u8> {
        serde_json::to_vec(t).unwrap()
    }

    #[test]
    fn generated_totals_round_trip_in_both_encodings() {
        let mut g = Gen(1);
        let (mut binary, mut json, mut long_labels) = (0, 0, 0);
        for _ in 0..3000 {
            let t = g.totals(100);
            let bytes = t.encode();
            if fits_binary(&t) {
                assert!(bytes.starts_with(&MAGIC), "{t:?}");
                binary += 1;
            } else {
                assert_eq!(bytes, old_json(&t));
                long_labels += 1;
            }
            assert_eq!(Totals::decode(&bytes).as_ref(), Some(&t));
            // Values written by earlier versions read the same.
            assert_eq!(Totals::decode(&old_json(&t)).as_ref(), Some(&t));
            json += 1;
        }
        // The generator reached every path.
        assert!(
            binary > 2000 && json == 3000 && long_labels > 10,
            "{binary} {long_labels}"
        );
        assert_eq!(Totals::default().encode(), ZERO);
    }

    #[test]
    fn reads_what_the_json_versions_wrote() {
        let stored = br#"{"requests":3,"input_tokens":40,"output_tokens":12,"cache_read_tokens":0,"cache_write_tokens":7,"cost_pico_usd":18446744073709551615,"models":{"amazon.nova-lite-v1:0":{"requests":1,"input_tokens":10,"output_tokens":2,"cache_read_tokens":0,"cache_write_tokens":0,"cost_pico_usd":5},"claude-fast":{"requests":2,"input_tokens":30,"output_tokens":10,"cache_read_tokens":0,"cache_write_tokens":7,"cost_pico_usd":18446744073709551610}}}"#;
        let t = Totals::decode(stored).unwrap();
        assert_eq!(
            t.all,
            Counts {
                requests: 3,
                input_tokens: 40,
                output_tokens: 12,
                cache_read_tokens: 0,
                cache_write_tokens: 7,
                cost_pico_usd: u64::MAX,
            }
        );
        assert_eq!(t.models.len(), 2);
        assert_eq!(t.models["claude-fast"].cost_pico_usd, u64::MAX - 5);
        assert_eq!(t.models["amazon.nova-lite-v1:0"].input_tokens, 10);
        // Before per-model totals there was no `models`.
        let t = Totals::decode(br#"{"requests":1,"input_tokens":2,"output_tokens":3,"cache_read_tokens":4,"cache_write_tokens":5,"cost_pico_usd":6}"#).unwrap();
        assert_eq!(t.all.cache_write_tokens, 5);
        assert!(t.models.is_empty());
    }

    #[test]
    fn every_truncation_is_refused_without_panicking() {
        let mut g = Gen(2);
        for _ in 0..300 {
            // Small: every prefix is decoded.
            let t = g.totals(8);
            for bytes in [t.encode(), old_json(&t)] {
                for end in 0..bytes.len() {
                    assert_eq!(Totals::decode(&bytes[..end]), None, "{end} of {t:?}");
                }
                let mut longer = bytes.clone();
                longer.push(0);
                assert_eq!(Totals::decode(&longer), None);
            }
        }
    }

    #[test]
    fn corrupted_bytes_decode_to_none_or_to_exactly_their_own_encoding() {
        let mut g = Gen(3);
        for _ in 0..3000 {
            let mut bytes = g.totals(100).encode();
            if !bytes.starts_with(&MAGIC) {
                continue;
            }
            for _ in 0..=g.below(3) {
                let i = g.below(bytes.len() as u64) as usize;
                bytes[i] = g.next() as u8;
            }
            // The binary form is canonical: whatever is accepted encodes back to the same bytes.
            if let Some(t) = Totals::decode(&bytes) {
                if bytes.starts_with(&MAGIC) {
                    assert_eq!(t.encode(), bytes);
                }
            }
        }
        // Random bytes behind the magic.
        for _ in 0..3000 {
            let len = g.below(300) as usize;
            let mut bytes = MAGIC.to_vec();
            bytes.extend((0..len).map(|_| g.next() as u8));
            if let Some(t) = Totals::decode(&bytes) {
                assert_eq!(t.encode(), bytes);
            }
        }
    }

    #[test]
    fn hostile_binary_is_refused() {
        let with_models = |n: u16, entries: &[(&[u8], Counts)]| {
            let mut b = MAGIC.to_vec();
            Counts::default().put(&mut b);
            b.extend_from_slice(&n.to_le_bytes());
            for (label, c) in entries {
                b.push(label.len() as u8);
                b.extend_from_slice(label);
                c.put(&mut b);
            }
            b
        };
        let c = counts(1, 1);
        assert!(Totals::decode(&with_models(2, &[(b"a", c), (b"b", c)])).is_some());
        // Out of order, repeated, not UTF-8, more claimed than present, over the bound.
        assert_eq!(
            Totals::decode(&with_models(2, &[(b"b", c), (b"a", c)])),
            None
        );
        assert_eq!(
            Totals::decode(&with_models(2, &[(b"a", c), (b"a", c)])),
            None
        );
        assert_eq!(Totals::decode(&with_models(1, &[(b"\xff", c)])), None);
        assert_eq!(Totals::decode(&with_models(u16::MAX, &[(b"a", c)])), None);
        let many: Vec<String> = (0..=MAX_MODELS).map(|i| format!("{i:05}")).collect();
        let entries: Vec<(&[u8], Counts)> = many.iter().map(|m| (m.as_bytes(), c)).collect();
        assert_eq!(
            Totals::decode(&with_models(entries.len() as u16, &entries)),
            None
        );
        assert!(Totals::decode(&with_models(MAX_MODELS as u16, &entries[..MAX_MODELS])).is_some());
        // Another version of the layout.
        let mut v2 = ZERO.to_vec();
        v2[2] = 2;
        assert_eq!(Totals::decode(&v2), None);
    }

    #[test]
    fn totals_beyond_the_binary_bounds_are_kept_as_json() {
        let mut t = Totals::default();
        t.models.insert("x".repeat(MAX_LABEL_BYTES), counts(1, 2));
        assert!(t.encode().starts_with(&MAGIC));
        t.models
            .insert("y".repeat(MAX_LABEL_BYTES + 1), counts(3, 4));
        assert_eq!(t.encode(), old_json(&t));
        assert_eq!(Totals::decode(&t.encode()), Some(t));
        let mut t = Totals::default();
        for i in 0..=MAX_MODELS {
            t.models.insert(i.to_string(), counts(1, 1));
        }
        assert_eq!(t.encode(), old_json(&t));
        assert_eq!(Totals::decode(&t.encode()), Some(t));
    }

    #[test]
    fn add_carries_json_totals_over_and_writes_binary() {
        let s = MemoryStore::default();
        let mut old = Totals {
            all: counts(2, 10),
            ..Default::default()
        };
        old.models.insert("m".into(), counts(2, 10));
        s.create(&store_key("a"), &old_json(&old)).unwrap();
        ensure(&s, ["a"]).unwrap();
        assert_eq!(read(&s, "a").unwrap(), old);
        let added = add(&s, "a", "m", &counts(1, 5)).unwrap();
        assert_eq!(added.model_cost_before_pico_usd, 10);
        assert_eq!(added.totals.all, counts(3, 15));
        let (stored, _) = s.get(&store_key("a")).unwrap().unwrap();
        assert!(stored.starts_with(&MAGIC));
        assert_eq!(Totals::decode(&stored), Some(added.totals));
    }

    #[test]
    fn add_restarts_foreign_values_from_zero_and_says_so() {
        let s = MemoryStore::default();
        s.create(&store_key("a"), b"not totals").unwrap();
        assert_eq!(read(&s, "a").unwrap(), Totals::default());
        let e = add(&s, "a", "m", &counts(1, 5)).unwrap_err();
        assert!(matches!(e, StoreError::Host(m) if m.contains("unreadable")));
        let t = read(&s, "a").unwrap();
        assert_eq!(t.all, counts(1, 5));
        assert_eq!(t.models["m"], counts(1, 5));
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
            service_tier: Default::default(),
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

    #[test]
    fn add_leaves_a_newer_format_alone() {
        let store = MemoryStore::default();
        let mut newer = MAGIC.to_vec();
        newer[2] += 1;
        newer.extend_from_slice(b"whatever a later layout holds");
        store.create(&store_key("k"), &newer).unwrap();
        let delta = Counts {
            requests: 1,
            ..Counts::default()
        };
        let e = add(&store, "k", "m", &delta).unwrap_err();
        assert!(matches!(e, StoreError::Host(m) if m.contains("newer format")));
        assert_eq!(store.get(&store_key("k")).unwrap().unwrap().0, newer);
    }
}
