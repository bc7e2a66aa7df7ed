//! Envoy stats for Tollgate: `tollgate_core::metrics` decides what moves; this module defines
//! the stats (once per VM and name) and applies the updates.
//!
//! Only `Result`-returning host calls: a refused definition or increment is logged once per
//! VM and otherwise ignored — metrics never fail a request nor trap the VM.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{LogLevel, MetricType};
use tollgate_core::error::GatewayError;
use tollgate_core::metrics::{self as core_metrics, Labels, MetricKind, Update};
use tollgate_core::record::UsageRecord;

use crate::host;

thread_local! {
    /// Metric id by stat name, `None` if Envoy refused to define it (not retried). Label values
    /// have bounded cardinality, so this map is bounded too.
    static IDS: RefCell<HashMap<String, Option<u32>>> = RefCell::new(HashMap::new());
    /// Whether a failure was already logged in this VM.
    static WARNED: Cell<bool> = const { Cell::new(false) };
}

/// A request refused by the gateway itself. `key_id` is `None` before authentication.
pub fn on_refusal(error: &GatewayError, key_id: Option<&str>) {
    apply(&core_metrics::refusal_updates(error, key_id));
}

/// A finished exchange's record. `cost_before_pico`: the running pico-USD total of the
/// record's (key, model label) series just before this record's cost was added — what
/// `totals::add` returns as `model_cost_before_pico_usd`; 0 if that failed (the cost counter
/// is then off by at most one micro-USD).
pub fn on_record(record: &UsageRecord, cost_before_pico: u64) {
    apply(&core_metrics::record_updates(
        record,
        Labels::of(record),
        cost_before_pico,
    ));
}

/// A fetch of credentials ended (`tollgate_core::credentials::refresh_update`).
pub fn on_credential_refresh(succeeded: bool) {
    apply(&[tollgate_core::credentials::refresh_update(succeeded)]);
}

fn apply(updates: &[Update]) {
    for u in updates {
        let Some(id) = metric_id(&u.name, u.kind) else {
            continue;
        };
        let result = match u.kind {
            // Envoy refuses a zero increment (BadArgument); core never makes one.
            MetricKind::Counter if u.value == 0 => Ok(()),
            MetricKind::Counter => {
                hostcalls::increment_metric(id, i64::try_from(u.value).unwrap_or(i64::MAX))
            }
            MetricKind::Histogram => hostcalls::record_metric(id, u.value),
        };
        if let Err(e) = result {
            warn_once(&format!("could not update metric `{}`: {e:?}", u.name));
        }
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
