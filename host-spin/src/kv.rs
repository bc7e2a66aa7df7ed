//! Spin's key-value store as the two store traits core builds on.
//!
//! Quota counters use `wasi:keyvalue/atomics.increment` ([`AtomicStore`]): atomic on every Spin
//! backend (SQLite, Redis `INCRBY`, ...), and read back with `increment(k, 0)` because the
//! backends encode counters differently. Usage totals use the `cas` resource ([`CasStore`]).
//! Both are `wasi:keyvalue@0.2.0-draft2` (SDK module `experimental`), over the same store label
//! as `spin:key-value`. Their functions are synchronous in WIT: while one waits on Redis the
//! instance's other tasks do not run, so hosts call them before a response streams and after.

use std::cell::{Cell, RefCell};

use spin_sdk::experimental::wasi::keyvalue::{atomics, store};
use tollgate_core::counters::AtomicStore;
use tollgate_core::store::{Cas, CasStore, StoreError};

/// One open store (a Spin `key_value_stores` label) for the life of one request.
pub struct Kv {
    /// CAS handles [`CasStore::get`] started and [`CasStore::set`] will finish, under the
    /// version number `get` handed out. At most one per key: a newer `get` drops the older.
    /// (Declared first: dropped before the bucket.)
    pending: RefCell<Vec<(Cas, String, atomics::Cas)>>,
    next: Cell<Cas>,
    bucket: Result<store::Bucket, String>,
}

fn host(e: store::Error) -> StoreError {
    StoreError::Host(describe(e))
}

fn describe(e: store::Error) -> String {
    match e {
        store::Error::NoSuchStore => "no such key-value store".to_string(),
        store::Error::AccessDenied => {
            "access denied to the key-value store (is it in the component's `key_value_stores`?)"
                .to_string()
        }
        store::Error::Other(m) => m,
    }
}

impl Kv {
    /// Opens `label`. A store that cannot be opened is reported by every operation instead,
    /// so that requests that need no store still work.
    pub fn open(label: &str) -> Self {
        Self {
            pending: RefCell::new(Vec::new()),
            next: Cell::new(0),
            bucket: store::open(label)
                .map_err(|e| format!("key-value store `{label}`: {}", describe(e))),
        }
    }

    fn bucket(&self) -> Result<&store::Bucket, StoreError> {
        self.bucket
            .as_ref()
            .map_err(|e| StoreError::Host(e.clone()))
    }

    /// Starts a CAS on `key` and reads the value it captured. `current()` must be called on
    /// every backend: Spin's Redis store only starts its `WATCH` there.
    fn start(&self, key: &str) -> Result<(atomics::Cas, Option<Vec<u8>>), StoreError> {
        let cas = atomics::Cas::new(self.bucket()?, key).map_err(host)?;
        let current = cas.current().map_err(host)?;
        Ok((cas, current))
    }
}

impl AtomicStore for Kv {
    fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        atomics::increment(self.bucket()?, key, delta).map_err(host)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.bucket()?.delete(key).map_err(host)
    }
}

impl CasStore for Kv {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Cas)>, StoreError> {
        let mut pending = self.pending.borrow_mut();
        pending.retain(|(_, k, _)| k != key);
        let (cas, current) = self.start(key)?;
        let Some(value) = current else {
            return Ok(None);
        };
        let version = self.next.get().wrapping_add(1);
        self.next.set(version);
        pending.push((version, key.to_string(), cas));
        Ok(Some((value, version)))
    }

    fn set(&self, key: &str, value: &[u8], cas: Cas) -> Result<(), StoreError> {
        let found = {
            let mut pending = self.pending.borrow_mut();
            pending
                .iter()
                .position(|(v, k, _)| *v == cas && k == key)
                .map(|i| pending.swap_remove(i).2)
        };
        // Not started here (or superseded): the caller reads again.
        let Some(handle) = found else {
            return Err(StoreError::CasMismatch);
        };
        match atomics::swap(handle, value) {
            Ok(()) => Ok(()),
            Err(atomics::CasError::CasFailed(_)) => Err(StoreError::CasMismatch),
            Err(atomics::CasError::StoreError(e)) => Err(host(e)),
        }
    }

    /// Writes `value` only if `key` is still absent: a CAS that captured "absent". Losing that
    /// race is fine, the key exists either way.
    fn create(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let (cas, current) = self.start(key)?;
        if current.is_some() {
            return Ok(());
        }
        match atomics::swap(cas, value) {
            Ok(()) | Err(atomics::CasError::CasFailed(_)) => Ok(()),
            Err(atomics::CasError::StoreError(e)) => Err(host(e)),
        }
    }
}
