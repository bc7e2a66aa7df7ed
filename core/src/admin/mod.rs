//! The admin API (Spin): API keys managed at runtime, next to the document's own. Authenticated
//! by an admin key whose hash is in the document's `admin_keys`; admin keys are never API keys
//! and API keys never admin keys. Errors are JSON `{"error": {"message", "type", "code"}}`.
//!
//! | Route | What |
//! |---|---|
//! | `POST /admin/keys` | create `{"id", "models", "limits"}`: the key's plaintext is in this answer only |
//! | `GET /admin/keys` | every key, the document's and the runtime ones, with its usage |
//! | `GET /admin/keys/{id}` | one key with its usage |
//! | `PATCH /admin/keys/{id}` | change a runtime key's `models` and/or `limits` |
//! | `DELETE /admin/keys/{id}` | revoke a runtime key |
//!
//! On Envoy, keys are the document's only; the same operations are a new document, through
//! live configuration (ECDS).

pub mod keys;

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::accounting::totals::UsageTotals;
use crate::config::{keys::is_key_id, ApiKey, Config};
use crate::endpoints;
use crate::error::{ErrorKind, GatewayError, Reply};
use crate::quota::counters::Counters;
use crate::quota::lease::Lease;
use crate::request::auth;
use crate::store::AtomicStore;

use keys::Entry;

/// Where the admin API's routes start.
const PREFIX: &str = "/admin";
/// Largest admin request body a host reads.
pub const MAX_BODY_BYTES: usize = 64 << 10;

/// Whether `path` (query included, as hosts give it) is the admin API's.
pub fn is_admin_path(path: &str) -> bool {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    path == PREFIX || path.starts_with("/admin/")
}

/// One admin request, its body read.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// Where the admin API reads and writes.
pub struct State<'a> {
    pub store: &'a dyn AtomicStore,
    pub totals: &'a dyn UsageTotals,
    pub counters: &'a dyn Counters,
}

/// The answer, and a line for the host's log when something changed (which admin key did
/// what to which key; never a key itself).
pub struct Outcome {
    pub reply: Reply,
    pub audit: Option<String>,
}

/// Serves one admin request. `entropy`: 32 bytes from the host's cryptographic random source,
/// the new key's plaintext if one is created.
pub fn handle(
    config: &Config,
    state: &State<'_>,
    request: &Request<'_>,
    entropy: &[u8; 32],
    now_ms: u64,
) -> Outcome {
    let admin = match authenticate(config, request.headers) {
        Ok(admin) => admin,
        Err(e) => return refused(&e),
    };
    let path = request
        .path
        .split_once('?')
        .map_or(request.path, |(p, _)| p);
    let id = path
        .strip_prefix("/admin/keys/")
        .filter(|id| !id.is_empty());
    let result = match (request.method, path, id) {
        ("POST", "/admin/keys", _) => create(config, state, request.body, entropy, now_ms),
        ("GET", "/admin/keys", _) => list(config, state, now_ms),
        ("GET", _, Some(id)) => show(config, state, id, now_ms).map(|r| (r, None)),
        ("PATCH", _, Some(id)) => update(config, state, id, request.body, now_ms),
        ("DELETE", _, Some(id)) => revoke(config, state, id),
        _ => Err(GatewayError::new(
            ErrorKind::NotFound,
            format!(
                "no admin route for {} {path}: POST and GET /admin/keys; GET, PATCH and DELETE /admin/keys/{{id}}",
                request.method
            ),
        )),
    };
    match result {
        Ok((reply, change)) => Outcome {
            reply,
            audit: change.map(|(action, key_id)| {
                serde_json::json!({"admin": admin, "action": action, "key_id": key_id}).to_string()
            }),
        },
        Err(e) => refused(&e),
    }
}

fn refused(e: &GatewayError) -> Outcome {
    Outcome {
        reply: e.to_openai_reply(),
        audit: None,
    }
}

/// The admin key's id. Every admin hash is compared, in constant time.
fn authenticate(config: &Config, headers: &[(&str, &str)]) -> Result<String, GatewayError> {
    if config.admin_keys.is_empty() {
        return Err(GatewayError::new(
            ErrorKind::NotFound,
            "the admin API is off: the configuration has no `admin_keys`",
        ));
    }
    let Some(key) = auth::presented(headers)?.key else {
        return Err(GatewayError::new(
            ErrorKind::MissingKey,
            "the admin API needs an admin key: `Authorization: Bearer <admin key>` or `x-api-key`",
        ));
    };
    let digest = auth::hash_key(key);
    let mut found = None;
    for admin in &config.admin_keys {
        if bool::from(admin.sha256.ct_eq(&digest)) {
            found = Some(admin.id.clone());
        }
    }
    found.ok_or_else(|| GatewayError::new(ErrorKind::UnknownKey, "the admin key is not valid"))
}

type Done = (Reply, Option<(&'static str, String)>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    id: String,
    models: Vec<String>,
    #[serde(default)]
    limits: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    #[serde(default)]
    models: Option<Vec<String>>,
    /// Absent: unchanged; `null` or `{}`: no limits.
    #[serde(default, deserialize_with = "present")]
    limits: Option<serde_json::Value>,
}

/// Tells a `null` member from an absent one (absent keeps `None` through `default`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

fn body<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, GatewayError> {
    serde_json::from_slice(bytes)
        .map_err(|e| GatewayError::new(ErrorKind::BadRequest, format!("the request body: {e}")))
}

fn configured<'c>(config: &'c Config, id: &str) -> Option<&'c ApiKey> {
    config.api_keys.iter().find(|k| k.id == id).map(|k| &**k)
}

fn in_the_document(id: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::Conflict,
        format!("key `{id}` is in the configuration document: change it there"),
    )
}

fn create(
    config: &Config,
    state: &State<'_>,
    bytes: &[u8],
    entropy: &[u8; 32],
    now_ms: u64,
) -> Result<Done, GatewayError> {
    let new: NewKey = body(bytes)?;
    if !is_key_id(&new.id) {
        return Err(GatewayError::new(
            ErrorKind::BadRequest,
            "`id`: 1 to 128 letters, digits, `-`, `_` or `.`",
        ));
    }
    if configured(config, &new.id).is_some() {
        return Err(in_the_document(&new.id));
    }
    // No dots: a JWT verifier before Tollgate must never take it for a token.
    let plaintext = format!(
        "tg-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(entropy)
    );
    let sha256 = auth::hash_key(&plaintext);
    let entry = Entry {
        id: new.id,
        models: new.models,
        limits: new.limits,
        created_ms: now_ms,
        updated_ms: now_ms,
    };
    entry.key(config, &sha256)?;
    keys::create(state.store, &sha256, &entry)?;
    let mut view = runtime_view(&entry);
    view.insert("key".into(), plaintext.into());
    view.insert("sha256".into(), hex::encode(sha256).into());
    Ok((Reply::json(201, &view), Some(("create", entry.id))))
}

fn list(config: &Config, state: &State<'_>, now_ms: u64) -> Result<Done, GatewayError> {
    let mut out = Vec::new();
    for key in &config.api_keys {
        out.push(with_usage(
            configured_view(key),
            state,
            key,
            now_ms,
            config.lease,
        )?);
    }
    for (hash, entry) in keys::list(state.store)? {
        out.push(runtime_with_usage(config, state, &hash, &entry, now_ms)?);
    }
    Ok((Reply::json(200, &serde_json::json!({ "keys": out })), None))
}

fn show(config: &Config, state: &State<'_>, id: &str, now_ms: u64) -> Result<Reply, GatewayError> {
    let view = match configured(config, id) {
        Some(key) => with_usage(configured_view(key), state, key, now_ms, config.lease)?,
        None => {
            let (hash, entry) = keys::get(state.store, id)?.ok_or_else(|| keys::not_found(id))?;
            runtime_with_usage(config, state, &hash, &entry, now_ms)?
        }
    };
    Ok(Reply::json(200, &view))
}

fn update(
    config: &Config,
    state: &State<'_>,
    id: &str,
    bytes: &[u8],
    now_ms: u64,
) -> Result<Done, GatewayError> {
    if configured(config, id).is_some() {
        return Err(in_the_document(id));
    }
    let change: Change = body(bytes)?;
    if change.models.is_none() && change.limits.is_none() {
        return Err(GatewayError::new(
            ErrorKind::BadRequest,
            "name what changes: `models` and/or `limits`",
        ));
    }
    let (hash, mut entry) = keys::get(state.store, id)?.ok_or_else(|| keys::not_found(id))?;
    if let Some(models) = change.models {
        entry.models = models;
    }
    if let Some(limits) = change.limits {
        entry.limits = limits;
    }
    entry.updated_ms = now_ms;
    let mut sha256 = [0u8; 32];
    hex::decode_to_slice(&hash, &mut sha256).map_err(|e| {
        GatewayError::new(
            ErrorKind::Internal,
            format!("a stored key hash is unreadable: {e}"),
        )
    })?;
    entry.key(config, &sha256)?;
    keys::update(state.store, &hash, &entry)?;
    Ok((
        Reply::json(200, &runtime_view(&entry)),
        Some(("update", entry.id)),
    ))
}

fn revoke(config: &Config, state: &State<'_>, id: &str) -> Result<Done, GatewayError> {
    if configured(config, id).is_some() {
        return Err(in_the_document(id));
    }
    keys::revoke(state.store, id)?;
    Ok((
        Reply::json(200, &serde_json::json!({"id": id, "revoked": true})),
        Some(("revoke", id.to_string())),
    ))
}

type View = serde_json::Map<String, serde_json::Value>;

fn configured_view(key: &ApiKey) -> View {
    let models: Vec<&str> = if key.any_model {
        vec!["*"]
    } else {
        key.models.iter().map(String::as_str).collect()
    };
    let mut view = View::new();
    view.insert("id".into(), key.id.clone().into());
    view.insert("source".into(), "configuration".into());
    view.insert("models".into(), serde_json::json!(models));
    view
}

fn runtime_view(entry: &Entry) -> View {
    #[derive(Serialize)]
    struct Shown<'a> {
        id: &'a str,
        source: &'static str,
        models: &'a [String],
        limits: &'a serde_json::Value,
        created_ms: u64,
        updated_ms: u64,
    }
    let shown = Shown {
        id: &entry.id,
        source: "runtime",
        models: &entry.models,
        limits: &entry.limits,
        created_ms: entry.created_ms,
        updated_ms: entry.updated_ms,
    };
    match serde_json::to_value(shown) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => View::new(),
    }
}

fn runtime_with_usage(
    config: &Config,
    state: &State<'_>,
    hash: &str,
    entry: &Entry,
    now_ms: u64,
) -> Result<serde_json::Value, GatewayError> {
    let mut sha256 = [0u8; 32];
    let key = hex::decode_to_slice(hash, &mut sha256)
        .ok()
        .and_then(|()| entry.key(config, &sha256).ok());
    let mut view = runtime_view(entry);
    match key {
        Some(key) => with_usage(view, state, &key, now_ms, config.lease),
        None => {
            // Listed, so an operator can see and fix or revoke it; requests with it get 500.
            view.insert(
                "problem".into(),
                "not valid under the current configuration".into(),
            );
            Ok(serde_json::Value::Object(view))
        }
    }
}

/// `view` with the key's `/usage` (lifetime totals, and its budget and rates now).
fn with_usage(
    mut view: View,
    state: &State<'_>,
    key: &ApiKey,
    now_ms: u64,
    lease: Lease,
) -> Result<serde_json::Value, GatewayError> {
    let totals = state.totals.read(&key.id).map_err(keys::store_failed)?;
    let names = crate::dialect::Dialect::ALL.map(|d| d.name());
    let dialects = state
        .totals
        .read_dialects(&key.id, &names)
        .map_err(keys::store_failed)?;
    let mut usage: BTreeMap<String, serde_json::Value> = serde_json::from_slice(
        &endpoints::usage_reply(key, &totals, &dialects, state.counters, now_ms, lease).body,
    )
    .unwrap_or_default();
    usage.remove("key_id");
    view.insert("usage".into(), serde_json::json!(usage));
    Ok(serde_json::Value::Object(view))
}

#[cfg(test)]
mod tests;
