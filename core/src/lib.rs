//! Tollgate's gateway logic, free of I/O: hosts pass in time, bytes and a store.
//!
//! Every rule lives here once; `filter/` (proxy-wasm) and `host-spin/` (Spin) only adapt host
//! callbacks to these types.

pub mod auth;
pub mod config;
pub mod counters;
pub mod credentials;
pub mod endpoints;
pub mod error;
pub mod eventstream;
pub mod exchange;
pub mod host_reply;
pub mod images;
pub mod limits;
pub mod meter;
pub mod metrics;
pub mod model_family;
pub mod model_id;
pub mod operation;
pub mod options;
pub mod period;
pub mod pricing;
pub mod quota;
pub mod record;
pub mod request_body;
pub mod request_headers;
pub mod route;
pub mod signing;
pub mod store;
pub mod totals;
pub mod usage;

pub use operation::Operation;
pub use usage::Usage;
