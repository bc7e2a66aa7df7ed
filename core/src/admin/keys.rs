//! API keys created at runtime, kept in a host's [`AtomicStore`] (Spin's key-value store; on
//! Redis every instance sees a change at once). Only the key's hash is stored. Plain reads,
//! writes, deletes and atomic increments only: no compare-and-swap (Spin's Redis store breaks
//! it, see `crate::store`).
//!
//! Layout:
//!
//! | Key | Value |
//! |---|---|
//! | `tollgate/keys/hash/<sha256 hex>` | the entry (JSON: id, models, limits as written, times) |
//! | `tollgate/keys/id/<id>` | the hash of the id's key |
//! | `tollgate/keys/claim/<id>` | a counter: the create whose increment returns 1 owns the id |
//! | `tollgate/keys/slots`, `…/slots/<n>` | a counter, and the id that took slot `n` (listing) |
//!
//! Requests look their key's hash up directly (one read), with no cache: a revocation or a
//! change applies from the next request on every instance. A revocation deletes the id's
//! mapping before the entry; a change writes the entry and then checks that the id still maps
//! to it, deleting it if not. So whichever order a change and a revocation meet in, the key
//! ends revoked. Two changes of one key at once: the last write wins.

use serde::{Deserialize, Serialize};

use crate::config::keys::KeyDocument;
use crate::config::{ApiKey, Config};
use crate::error::{ErrorKind, GatewayError};
use crate::store::{read_integer, AtomicStore, StoreError};

const HASH: &str = "tollgate/keys/hash/";
const ID: &str = "tollgate/keys/id/";
const CLAIM: &str = "tollgate/keys/claim/";
const SLOTS: &str = "tollgate/keys/slots";
/// Most slots a listing reads (keys created, revoked ones included).
pub const MAX_LISTED_SLOTS: i64 = 10_000;

/// Keys the host keeps outside the document, looked up by hash.
pub trait RuntimeKeys {
    /// The key whose hash is `sha256`, valid under `config`; `None` if there is none.
    fn find(&self, config: &Config, sha256: &[u8; 32]) -> Result<Option<ApiKey>, GatewayError>;
}

/// Runtime keys in an [`AtomicStore`].
pub struct StoredKeys<'a, S: AtomicStore + ?Sized>(pub &'a S);

/// A runtime key's entry as stored: the document form of its rules, validated again against
/// the configuration of each request (an alias it names may have gone since).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub id: String,
    pub models: Vec<String>,
    #[serde(default)]
    pub limits: serde_json::Value,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl Entry {
    /// The key this entry describes, under `config`.
    pub fn key(&self, config: &Config, sha256: &[u8; 32]) -> Result<ApiKey, GatewayError> {
        let limits = match &self.limits {
            serde_json::Value::Null => Ok(Default::default()),
            v => serde_json::from_value(v.clone()),
        };
        let invalid = |why: String| {
            GatewayError::new(
                ErrorKind::BadRequest,
                format!("runtime key `{}`: {why}", self.id),
            )
        };
        let doc = KeyDocument {
            id: self.id.clone(),
            sha256: Some(hex::encode(sha256)),
            principals: Vec::new(),
            jwt: Vec::new(),
            models: self.models.clone(),
            limits: limits.map_err(|e| invalid(format!("limits: {e}")))?,
            // Guardrails are set in the document only (README, Guardrails per key).
            guardrail: None,
        };
        doc.validate("key", &config.aliases, &config.targets, &config.region)
            .map_err(|e| invalid(format!("`{}`: {}", e.field, e.message)))
    }
}

pub(crate) fn store_failed(e: StoreError) -> GatewayError {
    GatewayError::new(
        ErrorKind::StateUnavailable,
        format!("the gateway's key-value store failed: {e}"),
    )
}

impl<S: AtomicStore + ?Sized> RuntimeKeys for StoredKeys<'_, S> {
    fn find(&self, config: &Config, sha256: &[u8; 32]) -> Result<Option<ApiKey>, GatewayError> {
        let Some(entry) = entry(self.0, &hex::encode(sha256))? else {
            return Ok(None);
        };
        if config.api_keys.iter().any(|k| k.id == entry.id) {
            // Ids are one namespace (totals and quotas are kept by id): the document's wins.
            return Err(GatewayError::new(
                ErrorKind::UnknownKey,
                format!(
                    "this key's id `{}` now names a key of the configuration; the runtime key no longer works",
                    entry.id
                ),
            ));
        }
        entry.key(config, sha256).map(Some).map_err(|e| {
            GatewayError::new(
                ErrorKind::Internal,
                format!(
                    "the key's stored entry is not valid under the current configuration: {}",
                    e.message
                ),
            )
        })
    }
}

fn entry<S: AtomicStore + ?Sized>(store: &S, hash: &str) -> Result<Option<Entry>, GatewayError> {
    let Some(bytes) = store.get(&format!("{HASH}{hash}")).map_err(store_failed)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        GatewayError::new(
            ErrorKind::Internal,
            format!("the stored entry of a runtime key is unreadable: {e}"),
        )
    })
}

fn text<S: AtomicStore + ?Sized>(store: &S, key: &str) -> Result<Option<String>, GatewayError> {
    Ok(store
        .get(key)
        .map_err(store_failed)?
        .and_then(|b| String::from_utf8(b).ok()))
}

/// The hash and entry of runtime key `id`.
pub fn get<S: AtomicStore + ?Sized>(
    store: &S,
    id: &str,
) -> Result<Option<(String, Entry)>, GatewayError> {
    let Some(hash) = text(store, &format!("{ID}{id}"))? else {
        return Ok(None);
    };
    Ok(entry(store, &hash)?
        .filter(|e| e.id == id)
        .map(|e| (hash, e)))
}

/// Stores a new key's entry under its hash; `Conflict` if the id is taken.
pub fn create<S: AtomicStore + ?Sized>(
    store: &S,
    sha256: &[u8; 32],
    entry: &Entry,
) -> Result<(), GatewayError> {
    let claim = format!("{CLAIM}{}", entry.id);
    if store.increment(&claim, 1).map_err(store_failed)? != 1 {
        return Err(GatewayError::new(
            ErrorKind::Conflict,
            format!("a runtime key `{}` exists already", entry.id),
        ));
    }
    let hash = hex::encode(sha256);
    let written = serde_json::to_vec(entry)
        .map_err(|e| StoreError::Host(e.to_string()))
        .and_then(|json| store.set(&format!("{HASH}{hash}"), &json))
        .and_then(|()| store.set(&format!("{ID}{}", entry.id), hash.as_bytes()));
    if let Err(e) = written {
        // Give the id back; the key does not exist. (If this fails too, DELETE frees the id.)
        let _ = store.delete_many(&[format!("{HASH}{hash}"), format!("{ID}{}", entry.id), claim]);
        return Err(store_failed(e));
    }
    // Listed from here on. A failure now leaves a working key that the list misses.
    let slot = store.increment(SLOTS, 1).map_err(store_failed)?;
    store
        .set(&format!("{SLOTS}/{slot}"), entry.id.as_bytes())
        .map_err(store_failed)
}

/// Replaces the entry of runtime key `id` (see the module docs for a revocation meanwhile).
pub fn update<S: AtomicStore + ?Sized>(
    store: &S,
    hash: &str,
    entry: &Entry,
) -> Result<(), GatewayError> {
    let key = format!("{HASH}{hash}");
    let json =
        serde_json::to_vec(entry).map_err(|e| store_failed(StoreError::Host(e.to_string())))?;
    store.set(&key, &json).map_err(store_failed)?;
    if text(store, &format!("{ID}{}", entry.id))?.as_deref() != Some(hash) {
        store.delete_many(&[key]).map_err(store_failed)?;
        return Err(not_found(&entry.id));
    }
    Ok(())
}

/// Revokes runtime key `id`: from the next request on, it is refused. Frees the id.
pub fn revoke<S: AtomicStore + ?Sized>(store: &S, id: &str) -> Result<(), GatewayError> {
    let id_key = format!("{ID}{id}");
    let hash = text(store, &id_key)?;
    // The mapping first (see the module docs), then the entry, then the id's claim.
    store.delete_many(&[id_key]).map_err(store_failed)?;
    if let Some(hash) = &hash {
        store
            .delete_many(&[format!("{HASH}{hash}")])
            .map_err(store_failed)?;
    }
    store
        .delete_many(&[format!("{CLAIM}{id}")])
        .map_err(store_failed)?;
    match hash {
        Some(_) => Ok(()),
        None => Err(not_found(id)),
    }
}

/// Every runtime key, in the order they were created.
pub fn list<S: AtomicStore + ?Sized>(store: &S) -> Result<Vec<(String, Entry)>, GatewayError> {
    let slots = read_integer(store, SLOTS)
        .map_err(store_failed)?
        .unwrap_or(0)
        .clamp(0, MAX_LISTED_SLOTS);
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for n in 1..=slots {
        let Some(id) = text(store, &format!("{SLOTS}/{n}"))? else {
            continue;
        };
        if !seen.insert(id.clone()) {
            continue;
        }
        if let Some(found) = get(store, &id)? {
            out.push(found);
        }
    }
    Ok(out)
}

pub(crate) fn not_found(id: &str) -> GatewayError {
    GatewayError::new(ErrorKind::NotFound, format!("no runtime key `{id}`"))
}
