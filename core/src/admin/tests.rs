use super::*;
use crate::accounting::totals::{Counts, IncrementTotals};
use crate::exchange::{admit_with, Admission, Callers};
use crate::quota::counters::IncrementCounters;
use crate::store::memory::{Encoding, MemoryAtomic};
use serde_json::{json, Value};

const ADMIN: &str = "tg-admin-secret";
const NOW: u64 = 1_795_383_600_000;

fn config() -> Config {
    let doc = format!(
        r#"{{"region":"us-east-1",
            "aliases":{{"claude-fast":"us.anthropic.claude-haiku-4-5-20251001-v1:0"}},
            "api_keys":[{{"id":"doc-key","sha256":"{}","models":["claude-fast"]}}],
            "admin_keys":[{{"id":"ops","sha256":"{}"}}],
            "credentials":{{"type":"inline","access_key_id":"A","secret_access_key":"S"}}}}"#,
        hex::encode(auth::hash_key("tg-doc")),
        hex::encode(auth::hash_key(ADMIN)),
    );
    Config::parse(doc.as_bytes(), &|_| None).unwrap()
}

struct Fixture {
    config: Config,
    store: MemoryAtomic,
    entropy: u8,
}

impl Fixture {
    fn new(encoding: Encoding) -> Self {
        Self {
            config: config(),
            store: MemoryAtomic::new(encoding),
            entropy: 0,
        }
    }

    fn call(
        &mut self,
        method: &str,
        path: &str,
        key: &str,
        body: Value,
    ) -> (u16, Value, Option<String>) {
        self.entropy += 1;
        let totals = IncrementTotals(&self.store);
        let counters = IncrementCounters(&self.store);
        let state = State {
            store: &self.store,
            totals: &totals,
            counters: &counters,
        };
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let headers = [("authorization", &*format!("Bearer {key}"))];
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, *v)).collect();
        let out = handle(
            &self.config,
            &state,
            &Request {
                method,
                path,
                headers: &headers,
                body: &body,
            },
            &[self.entropy; 32],
            NOW,
        );
        let v = serde_json::from_slice(&out.reply.body).unwrap_or(Value::Null);
        (out.reply.status, v, out.audit)
    }

    /// Who `key` is on a model route, or why not.
    fn admit(&self, key: &str) -> Result<String, (u16, String)> {
        let keys = keys::StoredKeys(&self.store);
        let headers = [("x-api-key", key)];
        let callers = Callers {
            caller: None,
            runtime_keys: Some(&keys),
        };
        match admit_with(&self.config, "GET", "/usage", &headers, callers, NOW) {
            Admission::Usage { key, .. } => Ok(key.id.clone()),
            Admission::Refused { error, .. } => Err((error.kind.status(), error.message)),
            _ => Err((0, "unexpected".into())),
        }
    }
}

#[test]
fn a_created_key_works_once_shown_and_only_its_hash_is_stored() {
    for encoding in [Encoding::SqliteLe, Encoding::RedisDecimal] {
        let mut f = Fixture::new(encoding);
        let (status, created, audit) = f.call(
            "POST",
            "/admin/keys",
            ADMIN,
            json!({"id": "team-x", "models": ["claude-fast"], "limits": {"requests_per_minute": 5}}),
        );
        assert_eq!(status, 201, "{created}");
        let key = created["key"].as_str().unwrap().to_string();
        assert!(key.starts_with("tg-") && !key.contains('.'), "{key}");
        assert_eq!(created["sha256"], hex::encode(auth::hash_key(&key)));
        assert_eq!(
            audit.unwrap(),
            r#"{"action":"create","admin":"ops","key_id":"team-x"}"#
        );
        let stored = format!("{:?}", f.store.values.lock().unwrap());
        assert!(!stored.contains(&key), "the plaintext is stored");
        assert_eq!(f.admit(&key).unwrap(), "team-x");
        assert_eq!(f.admit("tg-doc").unwrap(), "doc-key");

        let (status, listed, _) = f.call("GET", "/admin/keys", ADMIN, Value::Null);
        assert_eq!(status, 200);
        let ids: Vec<_> = listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].clone())
            .collect();
        assert_eq!(ids, [json!("doc-key"), json!("team-x")]);
        assert_eq!(listed["keys"][1]["source"], "runtime");
        assert_eq!(
            listed["keys"][1]["usage"]["requests_per_minute"]["limit"],
            5
        );
        assert!(!listed.to_string().contains(&key));
        // The same id again: taken.
        let (status, again, _) = f.call(
            "POST",
            "/admin/keys",
            ADMIN,
            json!({"id": "team-x", "models": ["*"]}),
        );
        assert_eq!(
            (status, again["error"]["code"].as_str()),
            (409, Some("conflict"))
        );
    }
}

#[test]
fn usage_is_listed_and_limits_change_at_once() {
    let mut f = Fixture::new(Encoding::RedisDecimal);
    let (_, created, _) = f.call(
        "POST",
        "/admin/keys",
        ADMIN,
        json!({"id": "t", "models": ["*"]}),
    );
    let key = created["key"].as_str().unwrap().to_string();
    IncrementTotals(&f.store)
        .add(
            "t",
            "claude-fast",
            &Counts {
                requests: 2,
                cost_pico_usd: 7,
                ..Default::default()
            },
        )
        .unwrap();
    let (_, shown, _) = f.call("GET", "/admin/keys/t", ADMIN, Value::Null);
    assert_eq!(shown["usage"]["requests"], 2);
    assert_eq!(shown["usage"]["cost_pico_usd"], 7);
    assert!(shown["usage"].get("budget").is_none());

    let (status, changed, audit) = f.call(
        "PATCH",
        "/admin/keys/t",
        ADMIN,
        json!({"limits": {"budget": {"usd": "0.5", "period": "daily"}}}),
    );
    assert_eq!(status, 200, "{changed}");
    assert!(audit.unwrap().contains("\"update\""));
    let (_, shown, _) = f.call("GET", "/admin/keys/t", ADMIN, Value::Null);
    assert_eq!(shown["usage"]["budget"]["limit_usd"], "0.50");
    assert_eq!(f.admit(&key).unwrap(), "t");
    // Limits that do not validate change nothing.
    let (status, e, _) = f.call(
        "PATCH",
        "/admin/keys/t",
        ADMIN,
        json!({"limits": {"requests_per_minute": 0}}),
    );
    assert_eq!(status, 400, "{e}");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("requests_per_minute"));
    let (status, _, _) = f.call(
        "PATCH",
        "/admin/keys/t",
        ADMIN,
        json!({"models": ["claude-slow"]}),
    );
    assert_eq!(status, 400);
    let (_, shown, _) = f.call("GET", "/admin/keys/t", ADMIN, Value::Null);
    assert_eq!(shown["usage"]["budget"]["limit_usd"], "0.50");
    // `null` removes the limits.
    let (status, _, _) = f.call("PATCH", "/admin/keys/t", ADMIN, json!({"limits": null}));
    assert_eq!(status, 200);
    let (_, shown, _) = f.call("GET", "/admin/keys/t", ADMIN, Value::Null);
    assert!(shown["usage"].get("budget").is_none());
}

#[test]
fn a_revoked_key_is_refused_at_its_next_request_and_its_id_is_free_again() {
    let mut f = Fixture::new(Encoding::SqliteLe);
    let (_, created, _) = f.call(
        "POST",
        "/admin/keys",
        ADMIN,
        json!({"id": "gone", "models": ["*"]}),
    );
    let key = created["key"].as_str().unwrap().to_string();
    assert_eq!(f.admit(&key).unwrap(), "gone");
    let (status, out, audit) = f.call("DELETE", "/admin/keys/gone", ADMIN, Value::Null);
    assert_eq!((status, out["revoked"].clone()), (200, json!(true)));
    assert!(audit.unwrap().contains("\"revoke\""));
    assert_eq!(f.admit(&key).unwrap_err().0, 401);
    let (status, _, _) = f.call("DELETE", "/admin/keys/gone", ADMIN, Value::Null);
    assert_eq!(status, 404);
    let (status, _, _) = f.call("PATCH", "/admin/keys/gone", ADMIN, json!({"models": ["*"]}));
    assert_eq!(status, 404);
    let (_, listed, _) = f.call("GET", "/admin/keys", ADMIN, Value::Null);
    assert_eq!(listed["keys"].as_array().unwrap().len(), 1);
    // Issued again under the same id: a new key; the old one stays refused.
    let (status, again, _) = f.call(
        "POST",
        "/admin/keys",
        ADMIN,
        json!({"id": "gone", "models": ["*"]}),
    );
    assert_eq!(status, 201);
    assert_eq!(f.admit(again["key"].as_str().unwrap()).unwrap(), "gone");
    assert_eq!(f.admit(&key).unwrap_err().0, 401);
}

#[test]
fn a_change_racing_a_revocation_never_brings_the_key_back() {
    let mut f = Fixture::new(Encoding::RedisDecimal);
    let (_, created, _) = f.call(
        "POST",
        "/admin/keys",
        ADMIN,
        json!({"id": "r", "models": ["*"]}),
    );
    let key = created["key"].as_str().unwrap().to_string();
    // A change that read the key before a revocation writes its entry after it.
    let (hash, mut entry) = keys::get(&f.store, "r").unwrap().unwrap();
    keys::revoke(&f.store, "r").unwrap();
    entry.updated_ms += 1;
    assert_eq!(
        keys::update(&f.store, &hash, &entry).unwrap_err().kind,
        ErrorKind::NotFound
    );
    assert_eq!(f.admit(&key).unwrap_err().0, 401);
}

#[test]
fn admin_keys_and_api_keys_never_stand_in_for_each_other() {
    let mut f = Fixture::new(Encoding::SqliteLe);
    let (status, e, _) = f.call("GET", "/admin/keys", "tg-doc", Value::Null);
    assert_eq!(
        (status, e["error"]["type"].as_str()),
        (401, Some("authentication_error"))
    );
    let (status, _, _) = f.call("GET", "/admin/keys", "", Value::Null);
    assert_eq!(status, 401);
    assert_eq!(f.admit(ADMIN).unwrap_err().0, 401);
    let (_, created, _) = f.call(
        "POST",
        "/admin/keys",
        ADMIN,
        json!({"id": "api", "models": ["*"]}),
    );
    let (status, _, _) = f.call(
        "GET",
        "/admin/keys",
        created["key"].as_str().unwrap(),
        Value::Null,
    );
    assert_eq!(status, 401);
    // The document's keys are the document's.
    for (method, body) in [("PATCH", json!({"models": ["*"]})), ("DELETE", Value::Null)] {
        let (status, e, _) = f.call(method, "/admin/keys/doc-key", ADMIN, body);
        assert_eq!(status, 409, "{e}");
    }
    let (status, _, _) = f.call(
        "POST",
        "/admin/keys",
        ADMIN,
        json!({"id": "doc-key", "models": ["*"]}),
    );
    assert_eq!(status, 409);
    // An admin key that is also an API key is refused when the document loads.
    let doc = format!(
        r#"{{"region":"us-east-1","api_keys":[{{"id":"a","sha256":"{h}","models":["*"]}}],
            "admin_keys":[{{"id":"ops","sha256":"{h}"}}],
            "credentials":{{"type":"inline","access_key_id":"A","secret_access_key":"S"}}}}"#,
        h = hex::encode(auth::hash_key("same"))
    );
    assert_eq!(
        Config::parse(doc.as_bytes(), &|_| None).unwrap_err().field,
        "admin_keys[0].sha256"
    );
}

#[test]
fn bad_requests_get_json_errors() {
    let mut f = Fixture::new(Encoding::SqliteLe);
    for (method, path, body) in [
        ("POST", "/admin/keys", json!({"id": "x"})),
        ("POST", "/admin/keys", json!({"id": "x y", "models": ["*"]})),
        (
            "POST",
            "/admin/keys",
            json!({"id": "x", "models": ["*"], "sha256": "ab"}),
        ),
        (
            "POST",
            "/admin/keys",
            json!({"id": "x", "models": ["nope"]}),
        ),
        ("PATCH", "/admin/keys/x", json!({})),
    ] {
        let (status, e, _) = f.call(method, path, ADMIN, body.clone());
        assert!(status == 400 || status == 404, "{body}: {status}");
        assert!(e["error"]["message"].is_string(), "{e}");
    }
    let (status, e, _) = f.call("PUT", "/admin/keys", ADMIN, Value::Null);
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    assert!(
        is_admin_path("/admin/keys?x=1")
            && is_admin_path("/admin")
            && !is_admin_path("/administrator")
    );
    // Without admin keys there is no admin API, and no store lookups for unknown keys.
    f.config.admin_keys.clear();
    let (status, _, _) = f.call("GET", "/admin/keys", ADMIN, Value::Null);
    assert_eq!(status, 404);
    let before = f
        .store
        .operations
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(f.admit("tg-unknown").unwrap_err().0, 401);
    assert_eq!(
        f.store
            .operations
            .load(std::sync::atomic::Ordering::Relaxed),
        before
    );
}
