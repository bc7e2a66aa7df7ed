//! Routing an alias to its targets: fallback chains and weighted splits (`targets`), a
//! request's plan of targets with context-window and body-format skips (`plan`), and which
//! failures move a request on to its next target (`attempts`).
//!
//! The rule lives here once; the hosts only carry it out. The Spin component loops over its
//! outbound calls; on Envoy, the router retries each failed attempt (the route's retry policy),
//! and each attempt passes through Tollgate's upstream filter, which reads the plan from the
//! request's filter state and rewrites, clamps and signs the attempt for its target.

pub mod attempts;
pub mod plan;
pub mod targets;
