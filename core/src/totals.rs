//! Per-key usage totals, kept exact across worker threads in a [`CasStore`].

use serde::Serialize;

use crate::store::{cas_update, CasStore, StoreError};
use crate::usage::Usage;

/// Lifetime totals of one API key. Stored as fixed-width little-endian integers: one CAS covers
/// the whole record, so a request is counted entirely or not at all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub cost_pico_usd: u64,
}

const FIELDS: usize = 6;
const VERSION: u8 = 1;
const ENCODED_LEN: usize = 1 + FIELDS * 8;

impl Totals {
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

    fn fields(&self) -> [u64; FIELDS] {
        [
            self.requests,
            self.input_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
            self.cost_pico_usd,
        ]
    }

    fn from_fields(f: [u64; FIELDS]) -> Self {
        let [requests, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_pico_usd] =
            f;
        Self {
            requests,
            input_tokens,
            output_tokens,
            cache_read_tokens,
            cache_write_tokens,
            cost_pico_usd,
        }
    }

    pub fn plus(&self, other: &Self) -> Self {
        let (a, b) = (self.fields(), other.fields());
        Self::from_fields(std::array::from_fn(|i| a[i].saturating_add(b[i])))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED_LEN);
        out.push(VERSION);
        for f in self.fields() {
            out.extend_from_slice(&f.to_le_bytes());
        }
        out
    }

    /// `None` for bytes this version did not write.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != ENCODED_LEN || bytes[0] != VERSION {
            return None;
        }
        let mut f = [0u64; FIELDS];
        for (i, chunk) in bytes[1..].chunks_exact(8).enumerate() {
            f[i] = u64::from_le_bytes(chunk.try_into().ok()?);
        }
        Some(Self::from_fields(f))
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

/// Adds one request's usage to the key's totals; returns the new totals.
pub fn add<S: CasStore + ?Sized>(
    store: &S,
    key_id: &str,
    delta: &Totals,
) -> Result<Totals, StoreError> {
    let zero = Totals::default().encode();
    let mut unreadable = false;
    let out = cas_update(store, &store_key(key_id), &zero, |current| {
        let now = Totals::decode(current).unwrap_or_else(|| {
            unreadable = true;
            Totals::default()
        });
        let next = now.plus(delta);
        (next.encode(), next)
    })?;
    if unreadable {
        // Only a foreign writer in our vm_id namespace could cause this; say so rather than hide it.
        return Err(StoreError::Host(format!(
            "totals of `{key_id}` were unreadable and restarted from zero"
        )));
    }
    Ok(out)
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

    #[test]
    fn round_trip_and_reject_foreign_bytes() {
        let t = Totals {
            requests: 3,
            input_tokens: 7,
            output_tokens: 11,
            cache_read_tokens: 13,
            cache_write_tokens: 17,
            cost_pico_usd: u64::MAX,
        };
        assert_eq!(Totals::decode(&t.encode()), Some(t));
        assert_eq!(Totals::decode(b""), None);
        assert_eq!(Totals::decode(&[9; ENCODED_LEN]), None);
    }

    #[test]
    fn ensure_never_resets() {
        let s = MemoryStore::default();
        ensure(&s, ["a"]).unwrap();
        add(
            &s,
            "a",
            &Totals {
                requests: 1,
                cost_pico_usd: 5,
                ..Default::default()
            },
        )
        .unwrap();
        ensure(&s, ["a", "b"]).unwrap();
        assert_eq!(read(&s, "a").unwrap().cost_pico_usd, 5);
        assert_eq!(read(&s, "b").unwrap(), Totals::default());
    }

    #[test]
    fn concurrent_adds_are_exact() {
        let s = Arc::new(MemoryStore::default());
        ensure(&*s, ["k"]).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..500u64 {
                        let usage = Usage {
                            input_tokens: t + i,
                            output_tokens: 1,
                            ..Default::default()
                        };
                        add(&*s, "k", &Totals::of_request(&usage, 3)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let total = read(&*s, "k").unwrap();
        assert_eq!(total.requests, 4000);
        assert_eq!(total.output_tokens, 4000);
        assert_eq!(total.cost_pico_usd, 12000);
        assert_eq!(
            total.input_tokens,
            (0..8u64)
                .map(|t| (0..500u64).map(|i| t + i).sum::<u64>())
                .sum::<u64>()
        );
    }
}
