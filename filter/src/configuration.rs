//! What a configuration document that does not parse does: reject the update, or fail closed.
//!
//! Envoy runs `on_configure` first in a throw-away "canary" VM; `false` there makes Envoy refuse
//! the configuration (an ECDS or LDS update is rejected, the previous one keeps serving). At
//! startup there is no previous one: refusing would stop Envoy, or leave an ECDS filter without
//! configuration, so a bad *first* document fails closed instead (loaded, every request answered
//! 500 naming the field). Once a valid document has served, a bad one is rejected.
//!
//! The outcome for a given document must never change. Envoy caches the canary's answer per
//! document and, for a document it has seen, configures the running VMs without asking the
//! canary again; a VM whose `on_configure` then returns `false` is marked failed by Envoy, which
//! refuses every later configuration on it (and skips the filter on a worker whose plugin
//! failed to load). So the first VM to see a bad document records its outcome, and every VM
//! after it — the running workers, a later canary for the same bytes — follows that record.
//! Both facts live where every VM of this `vm_id` sees them, for as long as the process keeps
//! one: Envoy shared data.

use std::fmt::Write;

use proxy_wasm::types::LogLevel;
use sha2::{Digest, Sha256};
use tollgate_core::store::CasStore;

use crate::host::{self, SharedData};

const SERVED: &str = "tollgate/config/served";
const OUTCOME_PREFIX: &str = "tollgate/config/invalid/";
const REJECT: &[u8] = b"reject";
const FAIL_CLOSED: &[u8] = b"fail-closed";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// Refuse the document: the configuration serving now stays.
    Reject,
    /// Load it and answer every request with 500.
    FailClosed,
}

/// Records that a valid document has served: bad documents from now on are rejected.
pub fn mark_served() {
    if let Err(e) = SharedData.create(SERVED, b"1") {
        host::log(
            LogLevel::Error,
            &format!("tollgate: could not record `{SERVED}`: {e}"),
        );
    }
}

/// The outcome for `document`, which does not parse: the recorded one if any VM decided it
/// already, else decided now and recorded. Without a record it can never be `Reject`, the one
/// answer that must be the same in every VM.
pub fn on_invalid(document: &[u8]) -> Invalid {
    let key = outcome_key(document);
    match SharedData.get(&key) {
        Ok(Some((recorded, _))) => {
            if recorded == REJECT {
                Invalid::Reject
            } else {
                Invalid::FailClosed
            }
        }
        Ok(None) => {
            let decided = match SharedData.get(SERVED) {
                Ok(Some(_)) => Invalid::Reject,
                Ok(None) => Invalid::FailClosed,
                Err(e) => {
                    log_store_error(SERVED, &e);
                    Invalid::FailClosed
                }
            };
            let value = if decided == Invalid::Reject {
                REJECT
            } else {
                FAIL_CLOSED
            };
            match SharedData.create(&key, value) {
                Ok(()) => decided,
                Err(e) => {
                    log_store_error(&key, &e);
                    Invalid::FailClosed
                }
            }
        }
        Err(e) => {
            log_store_error(&key, &e);
            Invalid::FailClosed
        }
    }
}

fn outcome_key(document: &[u8]) -> String {
    let mut key = String::with_capacity(OUTCOME_PREFIX.len() + 64);
    key.push_str(OUTCOME_PREFIX);
    for b in Sha256::digest(document) {
        let _ = write!(key, "{b:02x}");
    }
    key
}

fn log_store_error(key: &str, e: &tollgate_core::store::StoreError) {
    host::log(
        LogLevel::Error,
        &format!("tollgate: shared data `{key}`: {e}"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_key_is_the_documents_sha256() {
        // printf %s '{}' | sha256sum
        assert_eq!(
            outcome_key(b"{}"),
            "tollgate/config/invalid/44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }
}
