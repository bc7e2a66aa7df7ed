//! Per-key limits and their enforcement: the limits as configured, the windowed counters they
//! are kept in, UTC budget periods and rate windows, and the reservation each admitted request
//! holds until it is settled.

pub mod counters;
pub mod limits;
pub mod period;
pub mod reservation;

pub use reservation::{
    counter_name, counter_names, estimate, reserve, Estimate, Reservation,
    DEFAULT_MAX_OUTPUT_TOKENS,
};
