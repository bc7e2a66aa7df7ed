//! Per-key lifetime usage totals, overall and by model, behind one API ([`UsageTotals`]) with
//! two implementations: one compare-and-swap record per key where the store's CAS is honest
//! (Envoy shared data: [`CasTotals`]), and one atomic counter per key, model and field where it
//! is not (Spin's `wasi:keyvalue`: [`IncrementTotals`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::accounting::usage::Usage;
use crate::store::{cas_update, read_integer, AtomicStore, CasStore, StoreError};

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
/// to Bedrock count (refusals show in logs and metrics): `Ok(None)` for the others, and for
/// totals that do not tell the model's cost before (see [`UsageTotals::add`]).
pub fn add_record(
    totals: &dyn UsageTotals,
    record: &crate::accounting::record::UsageRecord,
) -> Result<Option<u64>, StoreError> {
    if !record.forwarded {
        return Ok(None);
    }
    let delta = Counts::of_request(&record.usage(), record.cost_pico_usd);
    totals.add(&record.key_id, record.model_label(), &delta)
}

pub fn read<S: CasStore + ?Sized>(store: &S, key_id: &str) -> Result<Totals, StoreError> {
    Ok(store
        .get(&store_key(key_id))?
        .and_then(|(v, _)| Totals::decode(&v))
        .unwrap_or_default())
}

/// Lifetime sums as `/usage` shows them: cost in a `u128`, since a key's lifetime spend can
/// pass what an `i64` (≈ $9.2M) or a `u64` (≈ $18.4M) of pico-USD holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sums {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub cost_pico_usd: u128,
}

impl From<&Counts> for Sums {
    fn from(c: &Counts) -> Self {
        Self {
            requests: c.requests,
            input_tokens: c.input_tokens,
            output_tokens: c.output_tokens,
            cache_read_tokens: c.cache_read_tokens,
            cache_write_tokens: c.cache_write_tokens,
            cost_pico_usd: u128::from(c.cost_pico_usd),
        }
    }
}

impl Sums {
    fn plus(&self, o: &Self) -> Self {
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

/// A key's lifetime totals, overall and by model label.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lifetime {
    pub all: Sums,
    pub models: BTreeMap<String, Sums>,
}

impl From<&Totals> for Lifetime {
    fn from(t: &Totals) -> Self {
        Self {
            all: (&t.all).into(),
            models: t
                .models
                .iter()
                .map(|(m, c)| (m.clone(), c.into()))
                .collect(),
        }
    }
}

impl Lifetime {
    fn plus(mut self, o: &Self) -> Self {
        self.all = self.all.plus(&o.all);
        for (m, c) in &o.models {
            let e = self.models.entry(m.clone()).or_default();
            *e = e.plus(c);
        }
        self
    }
}

/// Where a host keeps lifetime totals.
pub trait UsageTotals {
    /// Adds one request's usage to `key_id`'s totals, overall and under `model`. Returns the
    /// model's cost total before this request when the store gives it at no extra cost (the CAS
    /// record does), for exact metric increments.
    fn add(&self, key_id: &str, model: &str, delta: &Counts) -> Result<Option<u64>, StoreError>;
    fn read(&self, key_id: &str) -> Result<Lifetime, StoreError>;
}

/// Totals as one compare-and-swap record per key ([`add`], [`read`]): a request is counted
/// entirely or not at all, in one store operation. Only for stores whose CAS is honest.
pub struct CasTotals<'a, S: CasStore + ?Sized>(pub &'a S);

impl<S: CasStore + ?Sized> UsageTotals for CasTotals<'_, S> {
    fn add(&self, key_id: &str, model: &str, delta: &Counts) -> Result<Option<u64>, StoreError> {
        add(self.0, key_id, model, delta).map(|a| Some(a.model_cost_before_pico_usd))
    }
    fn read(&self, key_id: &str) -> Result<Lifetime, StoreError> {
        read(self.0, key_id).map(|t| (&t).into())
    }
}

/// Totals as atomic counters (Spin): `tollgate/totals/<key>/all/<field>` and
/// `tollgate/totals/<key>/model/<label>/<field>`, each added with one increment (zero deltas
/// skipped), so no store's compare-and-swap is trusted. Cost is a wide counter (see
/// [`add_wide`]); token and request counts are `i64`s, which no key reaches (2^63 tokens is
/// 292,000 years at a million tokens a second).
///
/// The labels a key has used are listed for `/usage` in slots: the request whose increment of a
/// model's `requests` returns 1 takes a slot number with an increment of
/// `tollgate/totals/<key>/models` and writes the label to `.../models/<n>`. Each label is
/// registered once and no registration can overwrite another's (a shared list written with
/// plain sets would lose concurrent additions). Residual: a store failure or a crash between
/// that first `requests` increment and the label's slot write leaves the model's counters out of
/// the per-model breakdown; they are still in the overall totals.
///
/// A failure part-way through an add leaves the fields already added counted (cost first); it
/// is reported, and the record stays in the log.
pub struct IncrementTotals<'a, S: AtomicStore + ?Sized>(pub &'a S);

/// The carry of [`add_wide`]: below 2^63 with room for concurrent adds above it.
const CARRY: i64 = 1 << 61;
/// Most labels read from the slots by `/usage`.
const MAX_LISTED_MODELS: i64 = 4096;

/// Adds `delta` to the wide counter at `key` (`lo`) and `key/hi`: value = hi · 2^61 + lo.
///
/// The add that takes `lo` across 2^61 (its increment returns a value at or past 2^61 that was
/// below it before) moves 2^61 into `hi`: `hi += 1`, then `lo -= 2^61`. Concurrent adds keep
/// adding to `lo` meanwhile; only one of them can cross, so the carry happens once. A reader in
/// between sees the value 2^61 too high for that moment. Exactness rests on the carry's second
/// step succeeding: it is retried, and its failure is reported with the amount to correct.
fn add_wide<S: AtomicStore + ?Sized>(store: &S, key: &str, delta: u64) -> Result<(), StoreError> {
    let hi_key = format!("{key}/hi");
    let high = delta >> 61;
    let low = i64::try_from(delta & (CARRY as u64 - 1)).unwrap_or(0);
    if high > 0 {
        store.increment(&hi_key, i64::try_from(high).unwrap_or(0))?;
    }
    if low == 0 {
        return Ok(());
    }
    let new = store.increment(key, low)?;
    if new >= CARRY && new.saturating_sub(low) < CARRY {
        store.increment(&hi_key, 1)?;
        let mut last = None;
        for _ in 0..3 {
            match store.increment(key, -CARRY) {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        return Err(StoreError::Host(format!(
            "`{key}` is 2^61 too high after a carry into `{hi_key}`: subtracting 2^61 failed: {}",
            last.map(|e| e.to_string()).unwrap_or_default()
        )));
    }
    Ok(())
}

fn read_wide<S: AtomicStore + ?Sized>(store: &S, key: &str) -> Result<u128, StoreError> {
    let part = |k: &str| -> Result<u128, StoreError> {
        Ok(read_integer(store, k)?.map_or(0, |v| u128::try_from(v).unwrap_or(0)))
    };
    Ok(part(&format!("{key}/hi"))? * CARRY as u128 + part(key)?)
}

const FIELDS: [&str; 5] = [
    "requests",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
];
const COST: &str = "cost_pico_usd";

/// A label as one key segment: `/` and `%` escaped, so that no label reaches into another's keys.
fn key_segment(label: &str) -> String {
    label.replace('%', "%25").replace('/', "%2F")
}

fn scope_prefix(key_id: &str, model: Option<&str>) -> String {
    match model {
        None => format!("tollgate/totals/{key_id}/all/"),
        Some(m) => format!("tollgate/totals/{key_id}/model/{}/", key_segment(m)),
    }
}

fn models_key(key_id: &str) -> String {
    format!("tollgate/totals/{key_id}/models")
}

impl<S: AtomicStore + ?Sized> IncrementTotals<'_, S> {
    /// Adds `delta` under `prefix`; returns what the `requests` increment returned.
    fn add_scope(&self, prefix: &str, delta: &Counts) -> Result<Option<i64>, StoreError> {
        add_wide(self.0, &format!("{prefix}{COST}"), delta.cost_pico_usd)?;
        let values = [
            delta.requests,
            delta.input_tokens,
            delta.output_tokens,
            delta.cache_read_tokens,
            delta.cache_write_tokens,
        ];
        let increment = |field: &str, v: u64| {
            self.0.increment(
                &format!("{prefix}{field}"),
                i64::try_from(v).unwrap_or(i64::MAX),
            )
        };
        // Requests last: they drive the label's registration.
        for (field, v) in FIELDS.iter().zip(values).skip(1) {
            if v > 0 {
                increment(field, v)?;
            }
        }
        if delta.requests == 0 {
            return Ok(None);
        }
        increment(FIELDS[0], delta.requests).map(Some)
    }

    fn read_scope(&self, prefix: &str) -> Result<Sums, StoreError> {
        let field = |name: &str| -> Result<u64, StoreError> {
            Ok(read_integer(self.0, &format!("{prefix}{name}"))?
                .map_or(0, |v| u64::try_from(v).unwrap_or(0)))
        };
        Ok(Sums {
            requests: field("requests")?,
            input_tokens: field("input_tokens")?,
            output_tokens: field("output_tokens")?,
            cache_read_tokens: field("cache_read_tokens")?,
            cache_write_tokens: field("cache_write_tokens")?,
            cost_pico_usd: read_wide(self.0, &format!("{prefix}{COST}"))?,
        })
    }

    /// The labels registered in the key's slots, each once.
    fn labels(&self, key_id: &str) -> Result<Vec<String>, StoreError> {
        let slots = models_key(key_id);
        let n = read_integer(self.0, &slots)?
            .unwrap_or(0)
            .clamp(0, MAX_LISTED_MODELS);
        let mut labels = Vec::new();
        for i in 1..=n {
            // An empty slot: its writer failed between the two steps.
            if let Some(label) = self.0.get(&format!("{slots}/{i}"))? {
                if let Ok(label) = String::from_utf8(label) {
                    if !labels.contains(&label) {
                        labels.push(label);
                    }
                }
            }
        }
        Ok(labels)
    }
}

impl<S: AtomicStore + ?Sized> UsageTotals for IncrementTotals<'_, S> {
    fn add(&self, key_id: &str, model: &str, delta: &Counts) -> Result<Option<u64>, StoreError> {
        let first_use = self.add_scope(&scope_prefix(key_id, Some(model)), delta)? == Some(1);
        let all = self.add_scope(&scope_prefix(key_id, None), delta);
        let registered = if first_use {
            let slots = models_key(key_id);
            self.0
                .increment(&slots, 1)
                .and_then(|n| self.0.set(&format!("{slots}/{n}"), model.as_bytes()))
        } else {
            Ok(())
        };
        all?;
        registered?;
        Ok(None)
    }

    /// Also adds what versions before the counters wrote: one CAS record per key, which no
    /// current instance writes any more.
    fn read(&self, key_id: &str) -> Result<Lifetime, StoreError> {
        let mut t = Lifetime {
            all: self.read_scope(&scope_prefix(key_id, None))?,
            models: BTreeMap::new(),
        };
        for label in self.labels(key_id)? {
            let sums = self.read_scope(&scope_prefix(key_id, Some(&label)))?;
            t.models.insert(label, sums);
        }
        let legacy = self
            .0
            .get(&store_key(key_id))?
            .and_then(|v| Totals::decode(&v));
        Ok(match legacy {
            Some(old) => t.plus(&(&old).into()),
            None => t,
        })
    }
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
        use crate::accounting::record::{make, Facts};
        let s = MemoryStore::default();
        let reading = crate::response::meter::Reading {
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
        assert_eq!(
            add_record(&CasTotals(&s), &make(facts(false, 429))).unwrap(),
            None
        );
        assert_eq!(
            add_record(&CasTotals(&s), &make(facts(true, 200))).unwrap(),
            Some(0)
        );
        let t = read(&s, "k").unwrap();
        assert_eq!(t.all.requests, 1);
        assert_eq!(t.models["claude-fast"].output_tokens, 2);
        // The same through the counters: the same totals.
        let a = crate::store::memory::MemoryAtomic::new(crate::store::memory::Encoding::SqliteLe);
        let totals = IncrementTotals(&a);
        assert_eq!(add_record(&totals, &make(facts(false, 429))).unwrap(), None);
        assert_eq!(add_record(&totals, &make(facts(true, 200))).unwrap(), None);
        assert_eq!(totals.read("k").unwrap(), Lifetime::from(&t));
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

    mod increments {
        use super::super::*;
        use super::Gen;
        use crate::store::memory::{Encoding, MemoryAtomic};
        use std::sync::Arc;

        const ENCODINGS: [Encoding; 2] = [Encoding::SqliteLe, Encoding::RedisDecimal];

        #[test]
        fn counters_and_the_cas_record_agree_on_generated_requests() {
            for encoding in ENCODINGS {
                let mut g = Gen(7);
                let a = MemoryAtomic::new(encoding);
                let cas = crate::store::memory::MemoryStore::default();
                let labels = ["claude-fast", "us.amazon.nova-lite-v1:0", "a/b%2F", "other"];
                for _ in 0..400 {
                    let key = ["k1", "k2"][g.below(2) as usize];
                    let model = labels[g.below(4) as usize];
                    let small = |g: &mut Gen| if g.below(3) == 0 { 0 } else { g.below(5000) };
                    let delta = Counts {
                        requests: 1,
                        input_tokens: small(&mut g),
                        output_tokens: small(&mut g),
                        cache_read_tokens: small(&mut g),
                        cache_write_tokens: small(&mut g),
                        cost_pico_usd: g.below(1 << 40),
                    };
                    IncrementTotals(&a).add(key, model, &delta).unwrap();
                    CasTotals(&cas).add(key, model, &delta).unwrap();
                }
                for key in ["k1", "k2", "never-used"] {
                    assert_eq!(
                        IncrementTotals(&a).read(key).unwrap(),
                        CasTotals(&cas).read(key).unwrap(),
                        "{encoding:?} {key}"
                    );
                }
            }
        }

        #[test]
        fn one_request_is_a_few_increments_and_zero_deltas_are_skipped() {
            let a = MemoryAtomic::new(Encoding::RedisDecimal);
            let delta = Counts {
                requests: 1,
                input_tokens: 10,
                output_tokens: 5,
                cost_pico_usd: 99,
                ..Default::default()
            };
            IncrementTotals(&a).add("k", "m", &delta).unwrap();
            let ops = |a: &MemoryAtomic| a.operations.load(std::sync::atomic::Ordering::Relaxed);
            // 4 increments per scope, and the label's registration (increment + set).
            assert_eq!(ops(&a), 10);
            IncrementTotals(&a).add("k", "m", &delta).unwrap();
            assert_eq!(ops(&a), 18);
            assert!(
                !a.keys().iter().any(|k| k.contains("cache")),
                "{:?}",
                a.keys()
            );
            let t = IncrementTotals(&a).read("k").unwrap();
            assert_eq!(t.all.cost_pico_usd, 198);
            assert_eq!(t.models["m"].requests, 2);
        }

        #[test]
        fn cost_carries_past_i64_and_u64_exactly() {
            for encoding in ENCODINGS {
                let a = MemoryAtomic::new(encoding);
                let t = IncrementTotals(&a);
                let one = |cost| Counts {
                    requests: 1,
                    cost_pico_usd: cost,
                    ..Default::default()
                };
                let mut expected: u128 = 0;
                // Up to just below the carry, across it, and far past u64::MAX in big steps.
                for cost in [(1u64 << 61) - 5, 4, 1, 1, u64::MAX, u64::MAX, 7, 1 << 61] {
                    t.add("k", "m", &one(cost)).unwrap();
                    expected += u128::from(cost);
                    let read = t.read("k").unwrap();
                    assert_eq!(
                        read.all.cost_pico_usd, expected,
                        "{encoding:?} after {cost}"
                    );
                    assert_eq!(read.models["m"].cost_pico_usd, expected);
                    let lo = crate::store::read_integer(&a, "tollgate/totals/k/all/cost_pico_usd")
                        .unwrap()
                        .unwrap_or(0);
                    assert!((0..CARRY).contains(&lo), "lo {lo} is normalised");
                }
                assert!(expected > u128::from(u64::MAX));
            }
        }

        #[test]
        fn concurrent_adds_across_the_carry_are_exact() {
            let a = Arc::new(MemoryAtomic::new(Encoding::SqliteLe));
            // Start 1000 below the carry; 8 threads add 3 × 200 each: the carry happens once.
            IncrementTotals(&*a)
                .add(
                    "k",
                    "m",
                    &Counts {
                        cost_pico_usd: (1 << 61) - 1000,
                        ..Default::default()
                    },
                )
                .unwrap();
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let a = a.clone();
                    std::thread::spawn(move || {
                        for _ in 0..200 {
                            let d = Counts {
                                requests: 1,
                                cost_pico_usd: 3,
                                ..Default::default()
                            };
                            IncrementTotals(&*a).add("k", "m", &d).unwrap();
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            let t = IncrementTotals(&*a).read("k").unwrap();
            assert_eq!(t.all.cost_pico_usd, (1u128 << 61) - 1000 + 4800);
            assert_eq!(t.models["m"].cost_pico_usd, (1u128 << 61) - 1000 + 4800);
            assert_eq!(t.all.requests, 1600);
            assert_eq!(
                crate::store::read_integer(&*a, "tollgate/totals/k/all/cost_pico_usd/hi").unwrap(),
                Some(1)
            );
        }

        #[test]
        fn concurrent_first_uses_register_every_label_once() {
            let a = Arc::new(MemoryAtomic::new(Encoding::RedisDecimal));
            let threads: Vec<_> = (0..8)
                .map(|i| {
                    let a = a.clone();
                    std::thread::spawn(move || {
                        for j in 0..50 {
                            let d = Counts {
                                requests: 1,
                                output_tokens: 2,
                                ..Default::default()
                            };
                            let model = format!("m{}", (i + j) % 12);
                            IncrementTotals(&*a).add("k", &model, &d).unwrap();
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            let t = IncrementTotals(&*a).read("k").unwrap();
            assert_eq!(t.models.len(), 12);
            assert_eq!(t.models.values().map(|s| s.requests).sum::<u64>(), 400);
            assert_eq!(t.all.output_tokens, 800);
            assert_eq!(
                crate::store::read_integer(&*a, "tollgate/totals/k/models").unwrap(),
                Some(12),
                "one slot per label"
            );
        }

        #[test]
        fn reads_add_the_record_earlier_versions_wrote_and_create_nothing() {
            let a = MemoryAtomic::new(Encoding::SqliteLe);
            let mut old = Totals {
                all: Counts {
                    requests: 2,
                    cost_pico_usd: 10,
                    ..Default::default()
                },
                ..Default::default()
            };
            old.models.insert("m".into(), old.all);
            a.set(&store_key("k"), &old.encode()).unwrap();
            let before = a.keys();
            let t = IncrementTotals(&a).read("k").unwrap();
            assert_eq!(a.keys(), before, "a read created keys");
            assert_eq!(t, Lifetime::from(&old));
            IncrementTotals(&a)
                .add(
                    "k",
                    "m",
                    &Counts {
                        requests: 1,
                        cost_pico_usd: 5,
                        ..Default::default()
                    },
                )
                .unwrap();
            let t = IncrementTotals(&a).read("k").unwrap();
            assert_eq!((t.all.requests, t.all.cost_pico_usd), (3, 15));
            assert_eq!(t.models["m"].requests, 3);
        }

        #[test]
        fn labels_cannot_reach_into_other_keys() {
            let a = MemoryAtomic::new(Encoding::RedisDecimal);
            let d = Counts {
                requests: 1,
                ..Default::default()
            };
            IncrementTotals(&a).add("k", "x/requests", &d).unwrap();
            IncrementTotals(&a).add("k", "x", &d).unwrap();
            let t = IncrementTotals(&a).read("k").unwrap();
            assert_eq!(t.models["x"].requests, 1);
            assert_eq!(t.models["x/requests"].requests, 1);
        }
    }
}
