//! The worker's part in leases and settlements (`tollgate_core::quota::lease`,
//! `tollgate_core::quota::settlement`): the exchanges in flight on this VM, whose leases its
//! root context's timer renews, and the settlements the store failed, which that timer retries.
//! Core decides when and what; this module keeps the lists and moves the bytes.
//!
//! Both lists are VM-local: a VM that traps loses them, which is what leases are for.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::{Rc, Weak};

use proxy_wasm::types::LogLevel;
use tollgate_core::exchange::Exchange;
use tollgate_core::quota::counters::CasCounters;
use tollgate_core::quota::settlement::{ATTEMPTS_IN_THE_BACKGROUND, MAX_PENDING};
use tollgate_core::quota::{Retried, Unsettled};

use crate::host::{self, SharedData};
use crate::metrics;

/// An exchange, shared between its HTTP context and this VM's timer.
pub type Shared = Rc<RefCell<Box<Exchange>>>;

thread_local! {
    static IN_FLIGHT: RefCell<Vec<Weak<RefCell<Box<Exchange>>>>> = const { RefCell::new(Vec::new()) };
    static PENDING: RefCell<VecDeque<Unsettled>> = const { RefCell::new(VecDeque::new()) };
}

/// Makes `ex` known to the timer until its HTTP context drops it.
pub fn register(ex: &Shared) {
    let _ = IN_FLIGHT.try_with(|list| {
        if let Ok(mut list) = list.try_borrow_mut() {
            list.push(Rc::downgrade(ex));
        }
    });
}

/// Renews `ex`'s lease if it is due (a response chunk arrived), logging what core says.
pub fn renew(ex: &mut Exchange, now_ms: u64) {
    if let Some(line) = ex.renew(&CasCounters(&SharedData), now_ms) {
        host::log(LogLevel::Warn, &line);
    }
}

/// Keeps a settlement the store failed, for the timer to retry.
pub fn keep(unsettled: Unsettled) {
    let refused = PENDING
        .try_with(|pending| match pending.try_borrow_mut() {
            Ok(mut pending) if pending.len() < MAX_PENDING => {
                pending.push_back(unsettled);
                None
            }
            _ => Some(unsettled),
        })
        .ok()
        .flatten();
    if let Some(u) = refused {
        host::log(LogLevel::Critical, &u.not_kept_line());
        apply(&u.not_kept_updates());
    }
}

fn apply(updates: &[tollgate_core::accounting::metrics::Update<'_>]) {
    let mut name = String::new();
    for u in updates {
        metrics::apply(u, &mut name);
    }
}

/// The timer: renews the leases that are due, and retries the settlements that are.
pub fn on_tick() {
    let now = host::now_ms(host::now());
    let live: Vec<Shared> = IN_FLIGHT
        .try_with(|list| match list.try_borrow_mut() {
            Ok(mut list) => {
                list.retain(|w| w.strong_count() > 0);
                list.iter().filter_map(Weak::upgrade).collect()
            }
            Err(_) => Vec::new(),
        })
        .unwrap_or_default();
    for ex in live {
        if let Ok(mut ex) = ex.try_borrow_mut() {
            renew(&mut ex, now);
        }
    }
    let due: Vec<Unsettled> = PENDING
        .try_with(|pending| match pending.try_borrow_mut() {
            Ok(mut pending) => {
                let waiting: Vec<Unsettled> = pending.drain(..).collect();
                let mut due = Vec::new();
                for u in waiting {
                    if u.next_at_ms() <= now {
                        due.push(u);
                    } else {
                        pending.push_back(u);
                    }
                }
                due
            }
            Err(_) => Vec::new(),
        })
        .unwrap_or_default();
    for mut u in due {
        let outcome = u.retry(&CasCounters(&SharedData), now, ATTEMPTS_IN_THE_BACKGROUND);
        apply(&u.metric_updates(outcome));
        match outcome {
            Retried::Again { .. } => keep(u),
            Retried::Settled => {
                if let Some(line) = u.log_line(outcome) {
                    host::log(LogLevel::Warn, &line);
                }
            }
            Retried::Abandoned => {
                if let Some(line) = u.log_line(outcome) {
                    host::log(LogLevel::Critical, &line);
                }
            }
        }
    }
}
