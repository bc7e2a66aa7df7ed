//! The key-value primitives hosts provide. Core builds its counters on these.

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

/// Retries of a CAS update before giving up; contention between a handful of worker threads
/// settles in a few, so reaching this means the host is misbehaving.
pub const MAX_CAS_ATTEMPTS: usize = 10_000;

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
            Ok(g.0.get(key).cloned())
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
}
