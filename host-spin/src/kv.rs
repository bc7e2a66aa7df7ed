//! Spin's key-value store as core's [`AtomicStore`]: quota counters and usage totals are atomic
//! increments (`wasi:keyvalue/atomics.increment`: Redis `INCRBY`, a SQLite transaction), plus
//! plain reads and writes. No compare-and-swap: Spin's Redis store reports every `swap` as
//! failed after its `EXEC` wrote (it follows it with `UNWATCH <key>`, which Redis refuses), and
//! opens two connections per attempt. No batch reads either: its Redis `get-many` sends `KEYS`.
//!
//! These are `wasi:keyvalue@0.2.0-draft2` (SDK module `experimental`), over the same store label
//! as `spin:key-value`. Their functions are synchronous in WIT: while one waits on Redis the
//! instance's other tasks do not run, so the component calls them before a response streams and
//! after. A call that never returns cannot be given up on: Spin's Redis store has such calls
//! (Spin 4.1.0-pre0: once an operation ran while Redis was unreachable, every later one waits,
//! even after Redis is back). Racing an async `spin:key-value` open against a timer does not
//! help either: Spin blocks the instance for the open's duration too, timer included.

use spin_sdk::experimental::wasi::keyvalue::{atomics, batch, store};
use tollgate_core::store::{AtomicStore, StoreError};

/// One open store (a Spin `key_value_stores` label) for the life of one request.
pub struct Kv {
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
            bucket: store::open(label)
                .map_err(|e| format!("key-value store `{label}`: {}", describe(e))),
        }
    }

    fn bucket(&self) -> Result<&store::Bucket, StoreError> {
        self.bucket
            .as_ref()
            .map_err(|e| StoreError::Host(e.clone()))
    }
}

impl AtomicStore for Kv {
    fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        atomics::increment(self.bucket()?, key, delta).map_err(host)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.bucket()?.get(key).map_err(host)
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.bucket()?.set(key, value).map_err(host)
    }

    /// One command for all of them (Redis `DEL k1 k2 …`; one SQLite statement).
    fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        batch::delete_many(self.bucket()?, keys).map_err(host)
    }
}
