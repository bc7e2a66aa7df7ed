//! The key-value primitives hosts provide. Core builds its counters and totals on these:
//! compare-and-swap where the store's CAS is honest (Envoy shared data, [`CasStore`]), atomic
//! increments where it is not (Spin's `wasi:keyvalue`, [`AtomicStore`]).

/// Version stamp of a stored value (Envoy shared data's `cas`).
pub type Cas = u32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// Someone else wrote the key since it was read.
    CasMismatch,
    /// The host refused or failed the operation.
    Host(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::CasMismatch => f.write_str("compare-and-swap mismatch"),
            Self::Host(e) => write!(f, "store: {e}"),
        }
    }
}

/// A store with compare-and-swap writes (Envoy shared data).
///
/// Hosts like Envoy do not protect a key's creation with CAS: a write to an absent key always
/// succeeds. Callers therefore create their keys up front with [`CasStore::create`] and only
/// ever update existing keys with a CAS.
pub trait CasStore {
    /// The value and its version, or `None` when the key is absent (or holds no value).
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Cas)>, StoreError>;
    /// Writes `value` if the key is still at version `cas`.
    fn set(&self, key: &str, value: &[u8], cas: Cas) -> Result<(), StoreError>;
    /// Writes `value` to a key that does not exist yet.
    fn create(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
}

/// Attempts of one CAS update before it gives up (admission then fails with 503; a totals update
/// is reported as not counted). Was 10,000.
///
/// Safe because an honest CAS is lock-free: each failed attempt means another writer's update
/// of the same key succeeded in between. In Envoy those writers are the other worker threads,
/// one request's update each, microseconds apart. The worst seen is 292 attempts, in
/// `totals::tests::concurrent_adds_are_exact`: 8 threads on 2 busy cores updating one key in a
/// tight loop, far more contention than workers serving requests make. At the bound, an update
/// has spent about a millisecond of one worker (a shared-data read and write per attempt), so a
/// store that never lets a write through costs one failed request, never a hang.
///
/// A store that writes and still reports failure would count the update once per attempt: no
/// bound fixes that, only not using its CAS. Spin's Redis store is such a store, so Spin uses
/// [`AtomicStore`] instead. No backoff: the contention window is another thread's few
/// microseconds, and neither a proxy-wasm filter nor this sans-IO core can sleep.
pub const MAX_CAS_ATTEMPTS: usize = 1_000;

/// Applies `update` to the value at `key` atomically: read, compute, write-if-unchanged, retry.
/// `initial` is the value of an absent key; the key is then created first.
pub fn cas_update<S: CasStore + ?Sized, T>(
    store: &S,
    key: &str,
    initial: &[u8],
    mut update: impl FnMut(&[u8]) -> (Vec<u8>, T),
) -> Result<T, StoreError> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (current, cas) = match store.get(key)? {
            Some(found) => found,
            None => {
                store.create(key, initial)?;
                continue;
            }
        };
        let (next, out) = update(&current);
        match store.set(key, &next, cas) {
            Ok(()) => return Ok(out),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Host(format!(
        "`{key}` kept changing: gave up after {MAX_CAS_ATTEMPTS} attempts"
    )))
}

/// A store with atomic increments and plain reads and writes (Spin's `wasi:keyvalue`: `INCRBY`
/// on Redis, a transaction on SQLite). Core uses no compare-and-swap on it: Spin's Redis store
/// reports every swap as failed after it wrote (Spin 4.1), which a retry loop turns into an
/// over-count and thousands of connections.
///
/// Backends encode integers differently (`get` sees a decimal string on Redis, 8 bytes
/// little-endian on SQLite): read them with [`read_integer`]. Never `set` a key that is also
/// incremented: Spin's SQLite store panics incrementing a value that is not 8 bytes long.
pub trait AtomicStore {
    /// Adds `delta` to the integer at `key` (0 when absent, which creates it) and returns the
    /// result.
    fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError>;
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Deletes the keys that exist; absent ones are no error.
    fn delete_many(&self, keys: &[String]) -> Result<(), StoreError>;
}

/// How a stored integer reads, before the backend is known.
#[derive(Debug, PartialEq, Eq)]
enum Stored {
    Integer(i64),
    /// Eight ASCII digits: a Redis decimal or a SQLite little-endian value.
    Ambiguous,
    Unreadable,
}

fn decode_integer(bytes: &[u8]) -> Stored {
    let decimal = std::str::from_utf8(bytes)
        .ok()
        .filter(|s| {
            let digits = s.strip_prefix('-').unwrap_or(s);
            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
        })
        .and_then(|s| s.parse::<i64>().ok());
    match (decimal, <[u8; 8]>::try_from(bytes)) {
        (Some(_), Ok(_)) => Stored::Ambiguous,
        (Some(v), Err(_)) => Stored::Integer(v),
        (None, Ok(le)) => Stored::Integer(i64::from_le_bytes(le)),
        (None, Err(_)) => Stored::Unreadable,
    }
}

/// The integer `increment` keeps at `key`, or `None` when the key is absent — without creating
/// it, unlike `increment(key, 0)`. Only a value that reads both ways (eight ASCII digits) is
/// asked of the backend with `increment(key, 0)`; the key exists then, so nothing is created.
pub fn read_integer<S: AtomicStore + ?Sized>(
    store: &S,
    key: &str,
) -> Result<Option<i64>, StoreError> {
    let Some(bytes) = store.get(key)? else {
        return Ok(None);
    };
    match decode_integer(&bytes) {
        Stored::Integer(v) => Ok(Some(v)),
        Stored::Ambiguous => store.increment(key, 0).map(Some),
        Stored::Unreadable => Err(StoreError::Host(format!(
            "`{key}` does not hold an integer ({} bytes)",
            bytes.len()
        ))),
    }
}

#[cfg(any(test, feature = "test-util"))]
pub mod memory {
    //! An in-memory [`CasStore`] with Envoy shared data's semantics, for tests.
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// Values with their versions, and the last version handed out.
    type Entries = (HashMap<String, (Vec<u8>, Cas)>, Cas);

    #[derive(Default)]
    pub struct MemoryStore {
        inner: Mutex<Entries>,
    }

    impl CasStore for MemoryStore {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Cas)>, StoreError> {
            let g = self
                .inner
                .lock()
                .map_err(|e| StoreError::Host(e.to_string()))?;
            // As the filter reads Envoy's shared data: an empty value (what a removal leaves
            // behind) is absent.
            Ok(g.0.get(key).filter(|(v, _)| !v.is_empty()).cloned())
        }
        fn set(&self, key: &str, value: &[u8], cas: Cas) -> Result<(), StoreError> {
            let mut g = self
                .inner
                .lock()
                .map_err(|e| StoreError::Host(e.to_string()))?;
            g.1 += 1;
            let next = g.1;
            match g.0.get_mut(key) {
                Some(entry) if entry.1 == cas => {
                    *entry = (value.to_vec(), next);
                    Ok(())
                }
                _ => Err(StoreError::CasMismatch),
            }
        }
        fn create(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
            let mut g = self
                .inner
                .lock()
                .map_err(|e| StoreError::Host(e.to_string()))?;
            g.1 += 1;
            let next = g.1;
            g.0.entry(key.to_string())
                .or_insert_with(|| (value.to_vec(), next));
            Ok(())
        }
    }

    /// How an in-memory [`AtomicStore`] encodes integers: as Spin's SQLite store or Redis does.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Encoding {
        /// 8 bytes little-endian; incrementing any other value panics, as Spin's SQLite store
        /// does (`expect("incorrect length")`), so tests catch a key both set and incremented.
        SqliteLe,
        /// A decimal string; incrementing anything else is an error, as Redis `INCRBY` is.
        RedisDecimal,
    }

    /// An in-memory [`AtomicStore`] with the encoding and failure modes of a Spin backend,
    /// counting the operations it serves.
    pub struct MemoryAtomic {
        pub encoding: Encoding,
        pub values: Mutex<HashMap<String, Vec<u8>>>,
        pub operations: std::sync::atomic::AtomicUsize,
    }

    impl MemoryAtomic {
        pub fn new(encoding: Encoding) -> Self {
            Self {
                encoding,
                values: Mutex::default(),
                operations: Default::default(),
            }
        }

        pub fn keys(&self) -> Vec<String> {
            let mut k: Vec<_> = self.values.lock().unwrap().keys().cloned().collect();
            k.sort();
            k
        }

        fn count(&self) {
            self.operations
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    impl AtomicStore for MemoryAtomic {
        fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
            self.count();
            let mut m = self.values.lock().unwrap();
            let current = match (m.get(key), self.encoding) {
                (None, _) => 0,
                (Some(v), Encoding::SqliteLe) => {
                    i64::from_le_bytes(v.as_slice().try_into().expect("incorrect length"))
                }
                (Some(v), Encoding::RedisDecimal) => std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| {
                        StoreError::Host("value is not an integer or out of range".into())
                    })?,
            };
            let next = current
                .checked_add(delta)
                .ok_or_else(|| StoreError::Host("increment or decrement would overflow".into()))?;
            let bytes = match self.encoding {
                Encoding::SqliteLe => next.to_le_bytes().to_vec(),
                Encoding::RedisDecimal => next.to_string().into_bytes(),
            };
            m.insert(key.to_string(), bytes);
            Ok(next)
        }
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            self.count();
            Ok(self.values.lock().unwrap().get(key).cloned())
        }
        fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
            self.count();
            self.values
                .lock()
                .unwrap()
                .insert(key.to_string(), value.to_vec());
            Ok(())
        }
        fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
            self.count();
            let mut m = self.values.lock().unwrap();
            for k in keys {
                m.remove(k);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::memory::{Encoding, MemoryAtomic, MemoryStore};
    use super::*;

    #[test]
    fn integers_read_the_same_on_both_encodings_without_creating_keys() {
        for encoding in [Encoding::SqliteLe, Encoding::RedisDecimal] {
            let s = MemoryAtomic::new(encoding);
            assert_eq!(read_integer(&s, "absent").unwrap(), None);
            assert!(s.keys().is_empty(), "a read created a key");
            // 12345678 is eight ASCII digits in Redis's encoding: ambiguous, asked of the store.
            for v in [
                0,
                7,
                -3,
                12_345_678,
                3_978_425_819_141_910_832,
                i64::MAX,
                i64::MIN,
            ] {
                let key = format!("k{v}");
                s.increment(&key, v).unwrap();
                assert_eq!(read_integer(&s, &key).unwrap(), Some(v), "{encoding:?} {v}");
            }
        }
        // 3978425819141910832 is b"01234567" little-endian: ambiguous too.
        assert_eq!(3_978_425_819_141_910_832i64.to_le_bytes(), *b"01234567");
        assert_eq!(decode_integer(b"01234567"), Stored::Ambiguous);
        assert_eq!(decode_integer(b"123"), Stored::Integer(123));
        assert_eq!(decode_integer(&5i64.to_le_bytes()), Stored::Integer(5));
        assert_eq!(decode_integer(b"12a"), Stored::Unreadable);
        assert_eq!(decode_integer(b""), Stored::Unreadable);
        assert_eq!(decode_integer(b"-"), Stored::Unreadable);
        let s = MemoryAtomic::new(Encoding::RedisDecimal);
        s.set("text", b"hello").unwrap();
        assert!(read_integer(&s, "text").is_err());
    }

    /// A CAS store that never lets a write through: the update gives up after the bound.
    struct NeverSwaps(MemoryStore, std::cell::Cell<usize>);

    impl CasStore for NeverSwaps {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Cas)>, StoreError> {
            self.0.get(key)
        }
        fn set(&self, _: &str, _: &[u8], _: Cas) -> Result<(), StoreError> {
            self.1.set(self.1.get() + 1);
            Err(StoreError::CasMismatch)
        }
        fn create(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
            self.0.create(key, value)
        }
    }

    #[test]
    fn a_cas_that_never_succeeds_gives_up_after_the_bound() {
        let s = NeverSwaps(MemoryStore::default(), Default::default());
        s.create("k", b"0").unwrap();
        let e = cas_update(&s, "k", b"0", |v| (v.to_vec(), ())).unwrap_err();
        assert!(
            matches!(&e, StoreError::Host(m) if m.contains("gave up after 1000")),
            "{e}"
        );
        assert_eq!(s.1.get(), MAX_CAS_ATTEMPTS);
    }
}
