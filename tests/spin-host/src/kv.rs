//! Key-value backends shared by `spin:key-value@3.0.0` and `wasi:keyvalue@0.2.0-draft2`.
//!
//! Semantics follow Spin's `factor-key-value` stores:
//! * `memory` mimics Spin's default SQLite store (`key-value-spin`): one map per label,
//!   counters stored as 8-byte little-endian i64, increments atomic inside the process.
//! * `redis` mimics `key-value-redis`: the label is ignored (all labels on one URL share a
//!   keyspace), counters via `INCRBY` (decimal strings), CAS via WATCH/MULTI/EXEC on a
//!   connection owned by the CAS handle.

use redis::AsyncCommands;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

/// Backend-neutral error; mapped onto each WIT interface's `error` variant.
#[derive(Debug, Clone)]
pub enum KvError {
    AccessDenied,
    Other(String),
}

pub type KvResult<T> = Result<T, KvError>;

fn other(e: impl std::fmt::Display) -> KvError {
    KvError::Other(e.to_string())
}

/// All configured stores, by label. Shared by every instance of the host process.
#[derive(Default)]
pub struct StoreManager {
    stores: HashMap<String, Backend>,
}

impl StoreManager {
    /// `spec` is `memory` or `redis://HOST:PORT[/DB]`.
    pub fn add(&mut self, label: &str, spec: &str) -> anyhow::Result<()> {
        let backend = if spec == "memory" || spec == "spin" {
            Backend::Memory(Arc::new(MemoryStore::default()))
        } else if spec.starts_with("redis://") || spec.starts_with("rediss://") {
            let client = redis::Client::open(spec)?;
            Backend::Redis(Arc::new(RedisStore {
                client,
                conn: OnceCell::new(),
            }))
        } else {
            anyhow::bail!("unsupported key-value store spec {spec:?} (use memory or redis://…)")
        };
        self.stores.insert(label.to_string(), backend);
        Ok(())
    }

    /// Spin: labels not listed in the component's `key_value_stores` -> access-denied.
    pub async fn open(&self, label: &str) -> KvResult<Backend> {
        let backend = self
            .stores
            .get(label)
            .cloned()
            .ok_or(KvError::AccessDenied)?;
        if let Backend::Redis(r) = &backend {
            // Spin's redis store connects lazily on first open.
            r.conn().await?;
        }
        Ok(backend)
    }
}

#[derive(Clone)]
pub enum Backend {
    Memory(Arc<MemoryStore>),
    Redis(Arc<RedisStore>),
}

/// In-process store. Each entry carries a version so CAS detects any intervening write
/// (including ABA), like a WATCH does on Redis.
#[derive(Default)]
pub struct MemoryStore {
    map: Mutex<BTreeMap<String, (Vec<u8>, u64)>>,
}

static VERSION: AtomicU64 = AtomicU64::new(1);

fn next_version() -> u64 {
    VERSION.fetch_add(1, Ordering::Relaxed)
}

pub struct RedisStore {
    client: redis::Client,
    conn: OnceCell<redis::aio::MultiplexedConnection>,
}

impl RedisStore {
    async fn conn(&self) -> KvResult<redis::aio::MultiplexedConnection> {
        self.conn
            .get_or_try_init(|| async { self.client.get_multiplexed_async_connection().await })
            .await
            .cloned()
            .map_err(other)
    }
}

/// State of one `wasi:keyvalue/atomics.cas` handle: the value seen when it was created.
pub enum CasState {
    Memory {
        store: Arc<MemoryStore>,
        key: String,
        seen: Option<(Vec<u8>, u64)>,
    },
    /// A connection owned by this CAS with a WATCH on `key` active.
    Redis {
        conn: redis::aio::MultiplexedConnection,
        key: String,
        seen: Option<Vec<u8>>,
    },
}

pub struct Cas {
    pub backend: Backend,
    pub key: String,
    pub state: CasState,
}

impl Cas {
    pub fn current(&self) -> Option<Vec<u8>> {
        match &self.state {
            CasState::Memory { seen, .. } => seen.as_ref().map(|(v, _)| v.clone()),
            CasState::Redis { seen, .. } => seen.clone(),
        }
    }
}

pub enum SwapError {
    /// The value changed since the CAS was created; caller hands out a fresh CAS.
    CasFailed,
    Other(KvError),
}

impl Backend {
    pub async fn get(&self, key: &str) -> KvResult<Option<Vec<u8>>> {
        match self {
            Backend::Memory(m) => Ok(m.map.lock().unwrap().get(key).map(|(v, _)| v.clone())),
            Backend::Redis(r) => r.conn().await?.get(key).await.map_err(other),
        }
    }

    pub async fn set(&self, key: &str, value: &[u8]) -> KvResult<()> {
        match self {
            Backend::Memory(m) => {
                m.map
                    .lock()
                    .unwrap()
                    .insert(key.to_string(), (value.to_vec(), next_version()));
                Ok(())
            }
            Backend::Redis(r) => r.conn().await?.set(key, value).await.map_err(other),
        }
    }

    pub async fn delete(&self, key: &str) -> KvResult<()> {
        match self {
            Backend::Memory(m) => {
                m.map.lock().unwrap().remove(key);
                Ok(())
            }
            Backend::Redis(r) => r.conn().await?.del(key).await.map_err(other),
        }
    }

    pub async fn exists(&self, key: &str) -> KvResult<bool> {
        match self {
            Backend::Memory(m) => Ok(m.map.lock().unwrap().contains_key(key)),
            Backend::Redis(r) => r.conn().await?.exists(key).await.map_err(other),
        }
    }

    pub async fn get_keys(&self) -> KvResult<Vec<String>> {
        match self {
            Backend::Memory(m) => Ok(m.map.lock().unwrap().keys().cloned().collect()),
            Backend::Redis(r) => r.conn().await?.keys("*").await.map_err(other),
        }
    }

    pub async fn get_many(&self, keys: Vec<String>) -> KvResult<Vec<(String, Option<Vec<u8>>)>> {
        match self {
            Backend::Memory(m) => {
                let map = m.map.lock().unwrap();
                Ok(keys
                    .into_iter()
                    .map(|k| {
                        let v = map.get(&k).map(|(v, _)| v.clone());
                        (k, v)
                    })
                    .collect())
            }
            Backend::Redis(r) => {
                let mut conn = r.conn().await?;
                let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await
                    .map_err(other)?;
                Ok(keys.into_iter().zip(values).collect())
            }
        }
    }

    pub async fn set_many(&self, kvs: Vec<(String, Vec<u8>)>) -> KvResult<()> {
        match self {
            Backend::Memory(m) => {
                let mut map = m.map.lock().unwrap();
                for (k, v) in kvs {
                    map.insert(k, (v, next_version()));
                }
                Ok(())
            }
            Backend::Redis(r) => r.conn().await?.mset(&kvs).await.map_err(other),
        }
    }

    pub async fn delete_many(&self, keys: Vec<String>) -> KvResult<()> {
        match self {
            Backend::Memory(m) => {
                let mut map = m.map.lock().unwrap();
                for k in keys {
                    map.remove(&k);
                }
                Ok(())
            }
            Backend::Redis(r) => r.conn().await?.del(keys).await.map_err(other),
        }
    }

    /// Missing key counts as 0. Memory: value must be exactly 8 bytes (i64 LE), as in
    /// Spin's SQLite store. Redis: `INCRBY`, value is a decimal string.
    pub async fn increment(&self, key: &str, delta: i64) -> KvResult<i64> {
        match self {
            Backend::Memory(m) => {
                let mut map = m.map.lock().unwrap();
                let current = match map.get(key) {
                    None => 0,
                    Some((v, _)) => {
                        let bytes: [u8; 8] = v.as_slice().try_into().map_err(|_| {
                            KvError::Other(format!(
                                "value of {key:?} is not an 8-byte little-endian i64 counter"
                            ))
                        })?;
                        i64::from_le_bytes(bytes)
                    }
                };
                let new = current
                    .checked_add(delta)
                    .ok_or_else(|| KvError::Other("increment overflow".into()))?;
                map.insert(
                    key.to_string(),
                    (new.to_le_bytes().to_vec(), next_version()),
                );
                Ok(new)
            }
            Backend::Redis(r) => r.conn().await?.incr(key, delta).await.map_err(other),
        }
    }

    /// Start a CAS: capture the current value (memory: with its version; redis: WATCH the
    /// key on a fresh connection, then GET).
    pub async fn new_cas(&self, key: &str) -> KvResult<Cas> {
        let state = match self {
            Backend::Memory(m) => {
                let seen = m.map.lock().unwrap().get(key).cloned();
                CasState::Memory {
                    store: m.clone(),
                    key: key.to_string(),
                    seen,
                }
            }
            Backend::Redis(r) => {
                let mut conn = r
                    .client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(other)?;
                redis::cmd("WATCH")
                    .arg(key)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(other)?;
                let seen: Option<Vec<u8>> = conn.get(key).await.map_err(other)?;
                CasState::Redis {
                    conn,
                    key: key.to_string(),
                    seen,
                }
            }
        };
        Ok(Cas {
            backend: self.clone(),
            key: key.to_string(),
            state,
        })
    }
}

impl Cas {
    /// Set `value` only if the key is unchanged since the CAS was created. Consumes the CAS.
    pub async fn swap(self, value: Vec<u8>) -> Result<(), SwapError> {
        match self.state {
            CasState::Memory { store, key, seen } => {
                let mut map = store.map.lock().unwrap();
                let unchanged = match (map.get(&key), &seen) {
                    (None, None) => true,
                    (Some((_, v_now)), Some((_, v_seen))) => v_now == v_seen,
                    _ => false,
                };
                if !unchanged {
                    return Err(SwapError::CasFailed);
                }
                map.insert(key, (value, next_version()));
                Ok(())
            }
            CasState::Redis { mut conn, key, .. } => {
                // EXEC returns nil (-> None) when the WATCHed key changed.
                let res: redis::RedisResult<Option<()>> = redis::pipe()
                    .atomic()
                    .set(&key, value)
                    .ignore()
                    .query_async(&mut conn)
                    .await;
                match res {
                    Ok(Some(())) => Ok(()),
                    Ok(None) => Err(SwapError::CasFailed),
                    Err(e) => Err(SwapError::Other(other(e))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> Backend {
        Backend::Memory(Arc::new(MemoryStore::default()))
    }

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn memory_counter_is_i64_le() {
        block(async {
            let b = memory();
            assert_eq!(b.increment("c", 5).await.unwrap(), 5);
            assert_eq!(b.increment("c", -7).await.unwrap(), -2);
            assert_eq!(
                b.get("c").await.unwrap().unwrap(),
                (-2i64).to_le_bytes().to_vec()
            );
            b.set("s", b"12").await.unwrap();
            assert!(matches!(b.increment("s", 1).await, Err(KvError::Other(_))));
        })
    }

    #[test]
    fn memory_cas_detects_any_intervening_write() {
        block(async {
            let b = memory();
            // Absent key: swap succeeds only while still absent.
            let cas = b.new_cas("k").await.unwrap();
            assert_eq!(cas.current(), None);
            assert!(cas.swap(b"1".to_vec()).await.is_ok());
            let stale = b.new_cas("k").await.unwrap();
            assert!(b
                .new_cas("k")
                .await
                .unwrap()
                .swap(b"2".to_vec())
                .await
                .is_ok());
            assert!(matches!(
                stale.swap(b"x".to_vec()).await,
                Err(SwapError::CasFailed)
            ));
            // ABA: same bytes written back still invalidates the CAS.
            let stale = b.new_cas("k").await.unwrap();
            assert_eq!(stale.current().as_deref(), Some(&b"2"[..]));
            b.set("k", b"2").await.unwrap();
            assert!(matches!(
                stale.swap(b"y".to_vec()).await,
                Err(SwapError::CasFailed)
            ));
            // Delete after capture fails the swap too.
            let stale = b.new_cas("k").await.unwrap();
            b.delete("k").await.unwrap();
            assert!(matches!(
                stale.swap(b"z".to_vec()).await,
                Err(SwapError::CasFailed)
            ));
            assert_eq!(b.get("k").await.unwrap(), None);
        })
    }

    #[test]
    fn unknown_labels_are_denied() {
        block(async {
            let mut m = StoreManager::default();
            m.add("cache", "memory").unwrap();
            assert!(m.open("cache").await.is_ok());
            assert!(matches!(
                m.open("default").await,
                Err(KvError::AccessDenied)
            ));
            assert!(m.add("x", "postgres://nope").is_err());
        })
    }
}
