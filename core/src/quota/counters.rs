//! Windowed atomic counters: the one primitive quotas need, over either host store.
//!
//! A counter has a name and lives in a window (a minute, a budget period, or 0 for "always").
//! Adding to a newer window than the stored one starts it from zero, so counters of past
//! periods are dropped rather than accumulating: memory stays bounded by the number of names.

use crate::store::{cas_update, read_integer, AtomicStore, CasStore, StoreError};

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

/// Counters over an [`AtomicStore`] (Spin): key `name@window`, one per window, since an
/// increment cannot carry its window along.
///
/// Past windows' keys are deleted, since Spin's stores have no expiry: the first add to a new
/// window (the one whose increment returns its own delta) reads the window the name last
/// started, kept at `name@last`, moves it to this window, and deletes that window's key and the
/// two before this one. The gap between requests does not matter, and a key written late into
/// an ended window (by an instance whose clock lags, for one) goes with the next window but one.
/// Reads never create keys. So a name holds its current window's key and its marker, plus at
/// most a straggler or two, whatever the traffic.
pub struct IncrementCounters<'a, S: AtomicStore + ?Sized>(pub &'a S);

impl<S: AtomicStore + ?Sized> IncrementCounters<'_, S> {
    /// Cleanup when `window` of `name` starts; failures only leave keys for a later start.
    fn started(&self, name: &str, window: u64) {
        let marker = format!("{name}@last");
        let last = self
            .0
            .get(&marker)
            .ok()
            .flatten()
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u64>().ok());
        // Never move the marker back (another instance, clock ahead, started a later window).
        if last.is_some_and(|l| l >= window) {
            return;
        }
        if self.0.set(&marker, window.to_string().as_bytes()).is_err() {
            return;
        }
        let mut old: Vec<u64> = [last, window.checked_sub(1), window.checked_sub(2)]
            .into_iter()
            .flatten()
            .filter(|w| *w > 0)
            .collect();
        old.sort_unstable();
        old.dedup();
        let keys: Vec<String> = old.iter().map(|w| format!("{name}@{w}")).collect();
        let _ = self.0.delete_many(&keys);
    }
}

impl<S: AtomicStore + ?Sized> Counters for IncrementCounters<'_, S> {
    fn add(&self, name: &str, window: u64, delta: i64) -> Result<i64, StoreError> {
        let value = self.0.increment(&format!("{name}@{window}"), delta)?;
        if window > 0 && delta > 0 && value == delta {
            self.started(name, window);
        }
        Ok(value)
    }

    fn read(&self, name: &str, window: u64) -> Result<i64, StoreError> {
        Ok(read_integer(self.0, &format!("{name}@{window}"))?.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::{Encoding, MemoryAtomic, MemoryStore};
    use std::sync::Arc;

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
        for encoding in [Encoding::SqliteLe, Encoding::RedisDecimal] {
            let s = MemoryAtomic::new(encoding);
            windows_behave(&IncrementCounters(&s));
            assert!(!s.keys().contains(&"rpm@10".to_string()), "{:?}", s.keys());
        }
    }

    /// Keys of `name` other than its marker.
    fn windows_of(s: &MemoryAtomic, name: &str) -> Vec<String> {
        s.keys()
            .into_iter()
            .filter(|k| k.starts_with(&format!("{name}@")) && !k.ends_with("@last"))
            .collect()
    }

    #[test]
    fn reads_create_no_keys_and_past_windows_go_whatever_the_gaps() {
        for encoding in [Encoding::SqliteLe, Encoding::RedisDecimal] {
            let s = MemoryAtomic::new(encoding);
            let c = IncrementCounters(&s);
            for w in [100u64, 101, 103, 110, 111, 250, 251, 900] {
                c.add("rpm", w, 1).unwrap();
                c.add("tpm", w, 40).unwrap();
                c.add("tpm", w, -15).unwrap();
                // Reads in windows without traffic, before and after.
                assert_eq!(c.read("rpm", w + 3).unwrap(), 0);
                assert_eq!(c.read("tpm", w - 1).unwrap(), 0);
                assert_eq!(c.read("tpm", w).unwrap(), 25);
                assert_eq!(windows_of(&s, "rpm"), [format!("rpm@{w}")], "{encoding:?}");
                assert_eq!(windows_of(&s, "tpm"), [format!("tpm@{w}")], "{encoding:?}");
            }
            // The marker and the current window, per name; nothing else.
            assert_eq!(s.keys(), ["rpm@900", "rpm@last", "tpm@900", "tpm@last"]);
        }
    }

    #[test]
    fn a_late_write_into_an_ended_window_goes_with_a_later_start() {
        let s = MemoryAtomic::new(Encoding::RedisDecimal);
        let c = IncrementCounters(&s);
        c.add("rpm", 10, 1).unwrap();
        c.add("rpm", 11, 1).unwrap();
        // An instance whose clock lags writes into window 10 after 11 started: it sees its own
        // delta back, but must not move the marker back nor delete window 11.
        c.add("rpm", 10, 1).unwrap();
        assert_eq!(c.read("rpm", 11).unwrap(), 1);
        assert_eq!(windows_of(&s, "rpm"), ["rpm@10", "rpm@11"]);
        c.add("rpm", 12, 1).unwrap();
        assert_eq!(windows_of(&s, "rpm"), ["rpm@12"]);
        // Window 0 ("always": concurrency, total budgets) is never cleaned up.
        c.add("conc", 0, 1).unwrap();
        c.add("conc", 0, -1).unwrap();
        assert_eq!(c.read("conc", 0).unwrap(), 0);
        assert!(s.keys().contains(&"conc@0".to_string()));
        assert!(!s.keys().contains(&"conc@last".to_string()));
    }

    #[test]
    fn increment_counters_are_exact_across_threads() {
        let s = Arc::new(MemoryAtomic::new(Encoding::SqliteLe));
        // Instances whose clocks agree: all move to the next window together.
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (s, barrier) = (s.clone(), barrier.clone());
                std::thread::spawn(move || {
                    for w in 1..=50u64 {
                        for _ in 0..20 {
                            IncrementCounters(&*s).add("spend", w, 3).unwrap();
                        }
                        barrier.wait();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let c = IncrementCounters(&*s);
        assert_eq!(c.read("spend", 50).unwrap(), 8 * 20 * 3);
        assert_eq!(windows_of(&s, "spend"), ["spend@50"]);
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
