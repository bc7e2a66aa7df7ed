//! Windowed atomic counters: the one primitive quotas need, over either host store.
//!
//! A counter has a name and lives in a window (a minute, a budget period, or 0 for "always").
//! Adding to a newer window than the stored one starts it from zero, so counters of past
//! periods are dropped rather than accumulating: memory stays bounded by the number of names.

use crate::store::{cas_update, CasStore, StoreError};

pub trait Counters {
    /// Atomically adds `delta` to counter `name` in `window` and returns the new value.
    /// Adding to a window older than the stored one changes nothing (that window is over)
    /// and returns the stored value.
    fn add(&self, name: &str, window: u64, delta: i64) -> Result<i64, StoreError>;

    fn read(&self, name: &str, window: u64) -> Result<i64, StoreError> {
        self.add(name, window, 0)
    }
}

/// Counters over a compare-and-swap store (Envoy shared data): one key per counter holding
/// `(window, value)`, so the key space is fixed and a new window overwrites the old in place.
pub struct CasCounters<'a, S: CasStore + ?Sized>(pub &'a S);

const ENCODED_LEN: usize = 16;

fn encode(window: u64, value: i64) -> [u8; ENCODED_LEN] {
    let mut out = [0u8; ENCODED_LEN];
    out[..8].copy_from_slice(&window.to_le_bytes());
    out[8..].copy_from_slice(&value.to_le_bytes());
    out
}

fn decode(bytes: &[u8]) -> Option<(u64, i64)> {
    let window = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let value = i64::from_le_bytes(bytes.get(8..ENCODED_LEN)?.try_into().ok()?);
    (bytes.len() == ENCODED_LEN).then_some((window, value))
}

impl<S: CasStore + ?Sized> CasCounters<'_, S> {
    /// Creates the counters that do not exist yet, without touching existing ones: a worker
    /// starting or a configuration reload resets nothing.
    pub fn ensure<'n>(&self, names: impl IntoIterator<Item = &'n str>) -> Result<(), StoreError> {
        for name in names {
            if self.0.get(name)?.is_none() {
                self.0.create(name, &encode(0, 0))?;
            }
        }
        Ok(())
    }
}

impl<S: CasStore + ?Sized> Counters for CasCounters<'_, S> {
    fn add(&self, name: &str, window: u64, delta: i64) -> Result<i64, StoreError> {
        cas_update(self.0, name, &encode(window, 0), |current| {
            let (stored_window, value) = decode(current).unwrap_or((window, 0));
            let (w, v) = match stored_window.cmp(&window) {
                std::cmp::Ordering::Equal => (window, value.saturating_add(delta)),
                std::cmp::Ordering::Less => (window, delta),
                std::cmp::Ordering::Greater => (stored_window, value),
            };
            (encode(w, v).to_vec(), v)
        })
    }
}

/// A store with atomic increments (Spin's `wasi:keyvalue/atomics`), where counters of each
/// window are their own key and past windows are deleted.
pub trait AtomicStore {
    /// Adds `delta` to the integer at `key` (0 when absent) and returns the result.
    fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError>;
    fn delete(&self, key: &str) -> Result<(), StoreError>;
}

/// Counters over an [`AtomicStore`]: key `name@window`. When a window's counter is first
/// created, the previous window's key is deleted so stale counters do not pile up.
pub struct IncrementCounters<'a, S: AtomicStore + ?Sized>(pub &'a S);

impl<S: AtomicStore + ?Sized> Counters for IncrementCounters<'_, S> {
    fn add(&self, name: &str, window: u64, delta: i64) -> Result<i64, StoreError> {
        let value = self.0.increment(&format!("{name}@{window}"), delta)?;
        if window > 0 && value == delta && delta != 0 {
            // Most likely the first add of this window: drop the previous one. Harmless if
            // it was not the first (the previous window is over either way).
            let _ = self.0.delete(&format!("{name}@{}", window - 1));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Atomic(Mutex<HashMap<String, i64>>);

    impl AtomicStore for Atomic {
        fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
            let mut m = self.0.lock().unwrap();
            let v = m.entry(key.to_string()).or_insert(0);
            *v += delta;
            Ok(*v)
        }
        fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.0.lock().unwrap().remove(key);
            Ok(())
        }
    }

    fn windows_behave(c: &dyn Counters) {
        assert_eq!(c.add("rpm", 10, 1).unwrap(), 1);
        assert_eq!(c.add("rpm", 10, 2).unwrap(), 3);
        assert_eq!(c.read("rpm", 10).unwrap(), 3);
        // A new window starts afresh.
        assert_eq!(c.add("rpm", 11, 1).unwrap(), 1);
        // Releasing into a window that is over does not touch the current one.
        assert_eq!(c.add("rpm", 11, -1).unwrap(), 0);
        assert_eq!(c.add("conc", 0, 1).unwrap(), 1);
        assert_eq!(c.add("conc", 0, -1).unwrap(), 0);
    }

    #[test]
    fn cas_counters() {
        let s = MemoryStore::default();
        let c = CasCounters(&s);
        windows_behave(&c);
        assert_eq!(c.add("rpm", 9, 5).unwrap(), 0, "past windows are dropped");
        c.ensure(["rpm", "fresh"]).unwrap();
        assert_eq!(c.read("rpm", 11).unwrap(), 0);
        assert_eq!(c.read("fresh", 0).unwrap(), 0);
    }

    #[test]
    fn increment_counters_drop_the_previous_window() {
        let s = Atomic::default();
        windows_behave(&IncrementCounters(&s));
        let keys: Vec<_> = s.0.lock().unwrap().keys().cloned().collect();
        assert!(!keys.contains(&"rpm@10".to_string()), "{keys:?}");
    }

    #[test]
    fn cas_counters_are_exact_across_threads() {
        let s = Arc::new(MemoryStore::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        CasCounters(&*s).add("spend", 7, 3).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(CasCounters(&*s).read("spend", 7).unwrap(), 24_000);
    }
}
