//! Per-key limits and their enforcement: the limits as configured, the windowed counters they
//! are kept in, UTC budget periods and rate windows, the reservation each admitted request
//! holds until it is settled, the lease on what it holds, and the retry of settlements the
//! store failed.

pub mod counters;
pub mod lease;
pub mod limits;
pub mod period;
pub mod reservation;
pub mod settlement;

pub use lease::Lease;
pub use reservation::{
    counter_name, counter_names, estimate, in_flight, leased_name, reserve, Estimate, Leased,
    Notes, Reclaimed, Renewal, Reservation, DEFAULT_MAX_OUTPUT_TOKENS,
};
pub use settlement::{Retried, Unsettled};

#[cfg(test)]
mod lease_tests;
