//! Fetched credentials on Spin (`tollgate_core::upstream::credentials`): kept in the key-value store, so
//! every instance (and, on Redis, every Spin process) signs with the same set; refreshed by the
//! request that finds them due, over outbound HTTP. Core decides when; this module moves bytes.
//!
//! Spin has no timers and its Redis store's compare-and-swap is broken (see `kv`), so there is
//! no lease: one refresh per due moment is picked by an atomic increment of a lock key (the first
//! to count 1 fetches, in the background, while the request goes on with the credentials held),
//! and when the credentials held are no longer usable every request that needs them fetches and
//! waits, as long as no back-off after a failure runs (concurrent refreshes are harmless; a
//! request without credentials would only fail).

use std::time::SystemTime;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::FullBody;
use tollgate_core::store::AtomicStore;
use tollgate_core::upstream::credentials::fetch::{Call, Fetch, Progress, CALL_TIMEOUT_MS};
use tollgate_core::upstream::credentials::refresh::{self, State, LEASE_MS};
use tollgate_core::upstream::credentials::{rfc3339, Fetched, Source};

use crate::kv::Kv;
use crate::{log_err, now_ms};

/// Largest credentials response read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

fn credentials_key(source: &Source) -> String {
    format!("tollgate/credentials/{}", source.fingerprint())
}

fn state_key(source: &Source) -> String {
    format!("tollgate/credentials/{}/refresh", source.fingerprint())
}

fn lock_key(source: &Source, bucket: u64) -> String {
    format!(
        "tollgate/credentials/{}/lock@{bucket}",
        source.fingerprint()
    )
}

/// The credentials to sign this request with: the stored ones, refreshed first if due.
pub async fn current(kv: &Kv, source: &Source) -> Option<Fetched> {
    let now = now_ms(SystemTime::now());
    let held = match kv.get(&credentials_key(source)) {
        Ok(bytes) => bytes.and_then(|b| Fetched::decode(&b)),
        Err(e) => {
            log_err(&format!(
                "tollgate: reading the stored credentials failed: {e}"
            ));
            None
        }
    };
    if held.as_ref().is_some_and(|f| now < refresh::refresh_at(f)) {
        return held;
    }
    let state = kv
        .get(&state_key(source))
        .ok()
        .flatten()
        .map(|b| State::decode(&b))
        .unwrap_or_default();
    if !state.due(held.as_ref(), now) {
        return held;
    }
    if !held.as_ref().is_some_and(|f| f.usable(now)) {
        // Nothing to sign with: this request waits for the fetch.
        return refresh(kv, source, state, held).await;
    }
    // One refresh per lease-long window while the credentials held still serve, in the
    // background: this request signs with them meanwhile (the instance lives until the task
    // ends).
    let bucket = now / LEASE_MS;
    let lock = lock_key(source, bucket);
    if kv.increment(&lock, 1).is_ok_and(|n| n == 1) {
        let source = source.clone();
        let stale = [lock, lock_key(&source, bucket.saturating_sub(1))];
        let background = held.clone();
        spin_sdk::wasip3::spawn(async move {
            let kv = Kv::open(crate::STORE_LABEL);
            refresh(&kv, &source, state, background).await;
            let _ = kv.delete_many(&stale);
        });
    }
    held
}

/// Fetches, stores the outcome (the credentials, or the failure's back-off) and returns what to
/// sign with: the new credentials, or those `held`.
async fn refresh(kv: &Kv, source: &Source, state: State, held: Option<Fetched>) -> Option<Fetched> {
    let outcome = fetch(source).await;
    let now = now_ms(SystemTime::now());
    match outcome {
        Ok(fetched) => {
            if let Err(e) = kv.set(&credentials_key(source), &fetched.encode()) {
                log_err(&format!(
                    "tollgate: storing refreshed credentials failed: {e}"
                ));
            }
            let _ = kv.set(&state_key(source), &State::succeeded().encode());
            log_err(&format!(
                "tollgate: credentials from {} refreshed; they expire at {}",
                source.describe(),
                rfc3339(fetched.expires_ms)
            ));
            Some(fetched)
        }
        Err(why) => {
            let failed = state.failed(now);
            let _ = kv.set(&state_key(source), &failed.encode());
            let consequence = match held.as_ref().filter(|f| f.usable(now)) {
                Some(f) => format!(
                    "the credentials held serve until shortly before {}",
                    rfc3339(f.expires_ms)
                ),
                None => "no valid credentials: requests are answered 503".to_string(),
            };
            log_err(&format!(
                "tollgate: could not refresh credentials ({why}); {consequence}; retrying in {} ms",
                failed.retry_at_ms.saturating_sub(now)
            ));
            held
        }
    }
}

/// One fetch, call by call.
async fn fetch(source: &Source) -> Result<Fetched, String> {
    let (mut fetch, mut call) = Fetch::start(source);
    // IMDSv2 takes three calls; more would be a bug.
    for _ in 0..4 {
        let (status, body) = send(source, &call).await;
        match fetch
            .on_response(source, status, &body, now_ms(SystemTime::now()))
            .map_err(|e| e.to_string())?
        {
            Progress::Next(next, next_call) => (fetch, call) = (next, next_call),
            Progress::Done(fetched) => return Ok(fetched),
        }
    }
    Err("the credentials endpoint kept asking for more calls".to_string())
}

/// (status, body) of one call; status 0 when there was no answer (refused, timed out, denied).
async fn send(source: &Source, call: &Call) -> (u16, Vec<u8>) {
    let url = source.endpoint.url(&call.path);
    let mut request = http::Request::builder().method(call.method).uri(&url);
    for (name, value) in &call.headers {
        request = request.header(*name, value.as_str());
    }
    let Ok(request) = request.body(FullBody::new(Bytes::new())) else {
        return (0, Vec::new());
    };
    let answer = async {
        let response = match spin_sdk::http::send(request).await {
            Ok(r) => r,
            Err(code) => {
                log_err(&format!(
                    "tollgate: credentials call to {url} failed: {code:?}"
                ));
                return (0, Vec::new());
            }
        };
        let status = response.status().as_u16();
        let mut body = Vec::new();
        let mut chunks = response.into_body().stream();
        while let Some(chunk) = chunks.next().await {
            match chunk {
                Ok(c) if body.len() + c.len() <= MAX_RESPONSE_BYTES => body.extend_from_slice(&c),
                // Too long for credentials, or cut short: core refuses what it gets.
                _ => break,
            }
        }
        (status, body)
    };
    futures::select! {
        out = answer.fuse() => out,
        () = spin_sdk::time::sleep(std::time::Duration::from_millis(CALL_TIMEOUT_MS)).fuse() => {
            log_err(&format!("tollgate: credentials call to {url} timed out"));
            (0, Vec::new())
        }
    }
}
