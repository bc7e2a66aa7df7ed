//! Envoy stats for Tollgate: `tollgate_core::accounting::metrics` decides which series move
//! and by how much; this module names them for Envoy (`stats`), defines each stat once per VM
//! and applies the updates.
//!
//! Only `Result`-returning host calls: a refused definition or increment is logged once per
//! VM and otherwise ignored — metrics never fail a request nor trap the VM.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{LogLevel, MetricType};
use tollgate_core::accounting::metrics::{self as core_metrics, MetricKind, Update};
use tollgate_core::error::GatewayError;

use crate::host;
use crate::stats;

thread_local! {
    /// Metric id by stat name, `None` if Envoy refused to define it (not retried). Label values
    /// have bounded cardinality, so this map is bounded too.
    static IDS: RefCell<HashMap<String, Option<u32>>> = RefCell::new(HashMap::new());
    /// Whether a failure was already logged in this VM.
    static WARNED: Cell<bool> = const { Cell::new(false) };
}

/// A request refused by the gateway itself. `key_id` is `None` before authentication.
pub fn on_refusal(error: &GatewayError, key_id: Option<&str>) {
    let mut name = String::new();
    for update in core_metrics::refusal_updates(error, key_id) {
        apply(&update, &mut name);
    }
}

/// A fetch of credentials ended (`tollgate_core::upstream::credentials::refresh_update`).
pub fn on_credential_refresh(succeeded: bool) {
    let mut name = String::new();
    apply(
        &tollgate_core::upstream::credentials::refresh_update(succeeded),
        &mut name,
    );
}

/// Applies one of core's metric updates (a refusal's, or one an ended exchange makes).
/// `name` is scratch space for the stat name, reused across updates.
pub fn apply(update: &Update<'_>, name: &mut String) {
    stats::write_name(update, name);
    let Some(id) = metric_id(name, update.kind()) else {
        return;
    };
    let result = match update.kind() {
        // Envoy refuses a zero increment (BadArgument); core never makes one.
        MetricKind::Counter if update.value == 0 => Ok(()),
        MetricKind::Counter => {
            hostcalls::increment_metric(id, i64::try_from(update.value).unwrap_or(i64::MAX))
        }
        MetricKind::Histogram => hostcalls::record_metric(id, update.value),
    };
    if let Err(e) = result {
        warn_once(&format!("could not update metric `{name}`: {e:?}"));
    }
}

fn metric_id(name: &str, kind: MetricKind) -> Option<u32> {
    let cached = IDS
        .try_with(|ids| ids.try_borrow().ok().and_then(|m| m.get(name).copied()))
        .ok()
        .flatten();
    if let Some(id) = cached {
        return id;
    }
    let metric_type = match kind {
        MetricKind::Counter => MetricType::Counter,
        MetricKind::Histogram => MetricType::Histogram,
    };
    let id = match hostcalls::define_metric(metric_type, name) {
        Ok(id) => Some(id),
        Err(e) => {
            warn_once(&format!("could not define metric `{name}`: {e:?}"));
            None
        }
    };
    let _ = IDS.try_with(|ids| {
        if let Ok(mut m) = ids.try_borrow_mut() {
            m.insert(name.to_string(), id);
        }
    });
    id
}

fn warn_once(message: &str) {
    let first = WARNED.try_with(|w| !w.replace(true)).unwrap_or(false);
    if first {
        host::log(
            LogLevel::Warn,
            &format!("tollgate: {message} (further metric errors in this worker are not logged)"),
        );
    }
}
