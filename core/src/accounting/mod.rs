//! What an exchange costs and where that is counted: prices, the usage record, lifetime
//! totals, metric values.

pub mod metrics;
pub mod money;
pub mod pricing;
pub mod record;
pub mod totals;
pub mod usage;
