//! Fetched credentials in Envoy (`tollgate_core::upstream::credentials`): every worker VM's root context
//! ticks; the one that takes the lease in shared data fetches with `dispatch_http_call` to the
//! configured cluster, and publishes the credentials in shared data, where every worker's
//! requests read them. Core decides when and who; this module only moves bytes.

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType};
use tollgate_core::store::CasStore;
use tollgate_core::upstream::credentials::fetch::{Call, Fetch, Progress, CALL_TIMEOUT_MS};
use tollgate_core::upstream::credentials::refresh::{State, LEASE_MS};
use tollgate_core::upstream::credentials::{rfc3339, Fetched, Source};

use crate::host::{self, SharedData};

/// How often each worker checks whether a fetch is due (first soon after the VM starts).
pub const TICK: Duration = Duration::from_millis(500);
pub const FIRST_TICK: Duration = Duration::from_millis(20);

fn credentials_key(source: &Source) -> String {
    format!("tollgate/credentials/{}", source.fingerprint())
}

fn state_key(source: &Source) -> String {
    format!("tollgate/credentials/{}/refresh", source.fingerprint())
}

/// The credentials every worker signs with, as last published.
pub fn current(source: &Source) -> Option<Fetched> {
    match SharedData.get(&credentials_key(source)) {
        Ok(Some((bytes, _))) => Fetched::decode(&bytes),
        _ => None,
    }
}

/// One VM's part in keeping the credentials fresh.
pub struct Refresher {
    source: Source,
    /// This VM, in the lease.
    holder: u64,
    /// The fetch this VM runs: the call's token and where the fetch is.
    running: Option<(u32, Fetch)>,
    /// When it started: one whose response never came is given up with its lease.
    running_since_ms: u64,
    ticked: bool,
}

impl Refresher {
    pub fn new(source: Source) -> Self {
        use std::hash::{BuildHasher, RandomState};
        Self {
            source,
            holder: RandomState::new().hash_one(host::now_ms(host::now())) | 1,
            running: None,
            running_since_ms: 0,
            ticked: false,
        }
    }

    pub fn on_tick(&mut self) {
        if !std::mem::replace(&mut self.ticked, true) {
            let _ = hostcalls::set_tick_period(TICK);
        }
        let now = host::now_ms(host::now());
        if self.running.is_some() {
            if now < self.running_since_ms.saturating_add(LEASE_MS) {
                return;
            }
            self.running = None;
        }
        let key = state_key(&self.source);
        let (state, cas) = match SharedData.get(&key) {
            Ok(Some((bytes, cas))) => (State::decode(&bytes), Some(cas)),
            Ok(None) => (State::default(), None),
            Err(e) => return self.log_store_error(&key, &e.to_string()),
        };
        let held = current(&self.source);
        let Some(leased) = state.take_lease(held.as_ref(), now, self.holder) else {
            return;
        };
        let written = match cas {
            Some(cas) => SharedData.set(&key, &leased.encode(), cas),
            // The first lease: written unconditionally, then read back (two VMs may both
            // write it; only the last one's reads back).
            None => SharedData.create(&key, &leased.encode()),
        };
        if written.is_err() {
            return; // another VM took it
        }
        let mine = SharedData
            .get(&key)
            .ok()
            .flatten()
            .is_some_and(|(bytes, _)| State::decode(&bytes).held_by(self.holder, now));
        if !mine {
            return;
        }
        let (fetch, call) = Fetch::start(&self.source);
        self.running_since_ms = now;
        self.dispatch(fetch, &call, now);
    }

    fn dispatch(&mut self, fetch: Fetch, call: &Call, now: u64) {
        let endpoint = &self.source.endpoint;
        let mut headers: Vec<(&str, &str)> = vec![
            (":method", call.method),
            (":path", &call.path),
            (":authority", &endpoint.authority),
            (":scheme", endpoint.scheme),
        ];
        headers.extend(call.headers.iter().map(|(n, v)| (*n, v.as_str())));
        match hostcalls::dispatch_http_call(
            &self.source.cluster,
            headers,
            None,
            vec![],
            Duration::from_millis(CALL_TIMEOUT_MS),
        ) {
            Ok(token) => self.running = Some((token, fetch)),
            Err(status) => self.failed(
                &format!(
                    "Envoy refused the call to cluster `{}` ({status:?}): is the cluster in \
                     Envoy's configuration?",
                    self.source.cluster
                ),
                now,
            ),
        }
    }

    /// A response to this VM's call (`num_headers` 0: the call failed).
    pub fn on_response(&mut self, token: u32, num_headers: usize, body_size: usize) {
        let Some((running, fetch)) = self.running.take() else {
            return;
        };
        if running != token {
            self.running = Some((running, fetch));
            return;
        }
        let status = if num_headers == 0 {
            0
        } else {
            hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders)
                .ok()
                .and_then(|h| {
                    h.into_iter()
                        .find(|(n, _)| n == ":status")
                        .and_then(|(_, v)| std::str::from_utf8(&v).ok()?.parse().ok())
                })
                .unwrap_or(0)
        };
        let body = match hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size) {
            Ok(Some(b)) => b,
            _ => Vec::new(),
        };
        let now = host::now_ms(host::now());
        match fetch.on_response(&self.source, status, &body, now) {
            Ok(Progress::Next(fetch, call)) => self.dispatch(fetch, &call, now),
            Ok(Progress::Done(fetched)) => self.publish(&fetched),
            Err(e) => self.failed(&e.to_string(), now),
        }
    }

    fn publish(&self, fetched: &Fetched) {
        let key = credentials_key(&self.source);
        if let Err(e) = SharedData.create(&key, &fetched.encode()) {
            return self.log_store_error(&key, &e.to_string());
        }
        self.write_state(State::succeeded());
        crate::metrics::on_credential_refresh(true);
        host::log(
            LogLevel::Info,
            &format!(
                "tollgate: credentials from {} refreshed; they expire at {}",
                self.source.describe(),
                rfc3339(fetched.expires_ms)
            ),
        );
    }

    fn failed(&self, why: &str, now: u64) {
        let key = state_key(&self.source);
        let state = SharedData
            .get(&key)
            .ok()
            .flatten()
            .map(|(b, _)| State::decode(&b))
            .unwrap_or_default()
            .failed(now);
        self.write_state(state);
        crate::metrics::on_credential_refresh(false);
        let held = current(&self.source).filter(|f| f.usable(now));
        let consequence = match held {
            Some(f) => format!(
                "the credentials held serve until shortly before {}",
                rfc3339(f.expires_ms)
            ),
            None => "no valid credentials: requests are answered 503".to_string(),
        };
        host::log(
            LogLevel::Warn,
            &format!(
                "tollgate: could not refresh credentials ({why}); {consequence}; retrying in {} ms",
                state.retry_at_ms.saturating_sub(now)
            ),
        );
    }

    fn write_state(&self, state: State) {
        let key = state_key(&self.source);
        if let Err(e) = SharedData.create(&key, &state.encode()) {
            self.log_store_error(&key, &e.to_string());
        }
    }

    fn log_store_error(&self, key: &str, e: &str) {
        host::log(
            LogLevel::Error,
            &format!("tollgate: shared data `{key}`: {e}"),
        );
    }
}
