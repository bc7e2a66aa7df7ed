//! Tollgate's gateway logic, free of I/O: hosts pass in time, bytes and a store.
//!
//! Every rule lives here once; `filter/` (proxy-wasm) and `host-spin/` (Spin) only adapt host
//! callbacks to these types. The folders follow an exchange from start to end:
//!
//! | Module | What |
//! |---|---|
//! | [`config`] | The configuration document: keys, aliases, credentials. |
//! | [`exchange`] | One request from head to usage record: the state machine hosts drive. |
//! | [`request`] | Reading the client's request: route, API key, model ID, headers, body (output cap, cost-raising options). |
//! | [`quota`] | Limits, the counters they are enforced with, budget periods; reserve, then reconcile. |
//! | [`upstream`] | The request to Bedrock: its rewrite, signing; replies a host makes in Bedrock's place. |
//! | [`response`] | Bedrock's answer: EventStream decoding, the usage meter, what the client gets of each chunk (the budget cut-off). |
//! | [`dialect`] | The dialects clients speak: Bedrock's own (passed through), error envelopes, the translator seam. |
//! | [`accounting`] | Money, prices, the usage record, lifetime totals, metric values. |
//! | [`endpoints`] | The gateway's own endpoints (`GET /usage`, `GET /v1/models`). |
//! | [`error`] | What went wrong, and the reply a client gets for it. |
//! | [`store`] | The key-value primitives hosts provide. |

pub mod accounting;
pub mod config;
pub mod dialect;
pub mod endpoints;
pub mod error;
pub mod exchange;
pub mod quota;
pub mod request;
pub mod response;
pub mod store;
pub mod upstream;

pub use accounting::usage::Usage;
pub use request::operation::Operation;
