//! Envoy stats for Tollgate (being written): see `on_refusal` and `on_record`.

use tollgate_core::error::GatewayError;
use tollgate_core::record::UsageRecord;

/// A request refused by the gateway itself. `key_id` is `None` before authentication.
pub fn on_refusal(_error: &GatewayError, _key_id: Option<&str>) {}

/// A finished exchange's record.
pub fn on_record(_record: &UsageRecord) {}
