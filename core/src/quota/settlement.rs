//! Settlements the store failed: kept and tried again until they go through, their windows are
//! over, or the host's bound is reached — never dropped without a word.
//!
//! A settlement is a few counter writes (free a slot, replace an estimate by the actual use).
//! Those that fail are kept as [`Unsettled`]; the host retries it (Envoy from its workers' timer,
//! Spin within the request, with back-off) and logs what [`Unsettled::retry`] returns. A write
//! whose window is over by then is moot and dropped: a minute or budget period that ended is
//! read no more, and a lease bucket that expired no longer counts.

use std::borrow::Cow;

use crate::accounting::metrics::{Metric, Update};
use crate::quota::counters::Counters;

/// One counter write the store failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Write {
    pub name: String,
    pub window: u64,
    pub delta: i64,
    /// Quota time at which the window is over (the write is then moot); `None`: never.
    pub until_ms: Option<u64>,
}

/// Delays before the 2nd, 3rd… attempt (ms); the last one repeats.
const BACKOFF_MS: &[u64] = &[250, 1_000, 4_000, 10_000];
/// Attempts a host that retries within the request makes (Spin): the end's own and three more,
/// over about five seconds.
pub const ATTEMPTS_WITHIN_A_REQUEST: u32 = 4;
/// Attempts a host that retries in the background makes (Envoy's timer): about six minutes.
pub const ATTEMPTS_IN_THE_BACKGROUND: u32 = 40;
/// Most settlements a host keeps retrying at once (Envoy: per worker); past it, new ones are
/// logged as not retried.
pub const MAX_PENDING: usize = 1_000;

/// The writes of one exchange's settlement that the store failed.
#[derive(Debug)]
pub struct Unsettled {
    key_id: String,
    request_id: Option<String>,
    writes: Vec<Write>,
    /// Attempts made, the end's own included.
    attempts: u32,
    last_error: String,
    /// The quota clock and the host clock when the exchange ended: the test clock moves on
    /// with real time.
    quota_at_ms: u64,
    host_at_ms: u64,
    next_at_ms: u64,
    /// Writes dropped because their window ended before they went through.
    moot: usize,
}

/// What a retry came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retried {
    /// Every write went through (or was moot).
    Settled,
    /// Some still fail: try again at this host time (ms).
    Again { at_ms: u64 },
    /// The host's bound is reached: what the writes would have released stays held (slots
    /// until their lease runs out; estimates billed instead of actual use).
    Abandoned,
}

fn backoff_ms(attempts: u32) -> u64 {
    let i = usize::try_from(attempts.saturating_sub(1)).unwrap_or(usize::MAX);
    BACKOFF_MS
        .get(i)
        .or(BACKOFF_MS.last())
        .copied()
        .unwrap_or(1_000)
}

impl Unsettled {
    /// The failed `writes` of one settlement (its first attempt, at host time `host_now_ms`
    /// and quota time `quota_now_ms`); `None` if there are none.
    pub(crate) fn new(
        key_id: &str,
        request_id: Option<&str>,
        writes: Vec<Write>,
        error: String,
        host_now_ms: u64,
        quota_now_ms: u64,
    ) -> Option<Self> {
        (!writes.is_empty()).then(|| Self {
            key_id: key_id.to_string(),
            request_id: request_id.map(str::to_string),
            writes,
            attempts: 1,
            last_error: error,
            quota_at_ms: quota_now_ms,
            host_at_ms: host_now_ms,
            next_at_ms: host_now_ms.saturating_add(backoff_ms(1)),
            moot: 0,
        })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Host time (ms) of the next attempt.
    pub fn next_at_ms(&self) -> u64 {
        self.next_at_ms
    }

    /// Tries the failed writes again at host time `now_ms`; `max_attempts` is the host's bound
    /// (the end's own attempt included).
    pub fn retry(&mut self, counters: &dyn Counters, now_ms: u64, max_attempts: u32) -> Retried {
        let quota_now = self
            .quota_at_ms
            .saturating_add(now_ms.saturating_sub(self.host_at_ms));
        let before = self.writes.len();
        self.writes
            .retain(|w| w.until_ms.is_none_or(|end| quota_now < end));
        self.moot += before - self.writes.len();
        let mut failed = Vec::new();
        for w in self.writes.drain(..) {
            if let Err(e) = counters.add(&w.name, w.window, w.delta) {
                self.last_error = e.to_string();
                failed.push(w);
            }
        }
        self.writes = failed;
        self.attempts = self.attempts.saturating_add(1);
        if self.writes.is_empty() {
            Retried::Settled
        } else if self.attempts >= max_attempts {
            Retried::Abandoned
        } else {
            self.next_at_ms = now_ms.saturating_add(backoff_ms(self.attempts));
            Retried::Again {
                at_ms: self.next_at_ms,
            }
        }
    }

    fn whose(&self) -> String {
        match &self.request_id {
            Some(id) => format!("key `{}` (request {id})", self.key_id),
            None => format!("key `{}`", self.key_id),
        }
    }

    /// The line a host logs once a retry has `outcome` (none while it is to be tried again):
    /// a warning when it settled, critical when abandoned.
    pub fn log_line(&self, outcome: Retried) -> Option<String> {
        let moot = match self.moot {
            0 => String::new(),
            n => format!(" ({n} of its writes were moot: their windows had ended)"),
        };
        match outcome {
            Retried::Again { .. } => None,
            Retried::Settled => Some(format!(
                "tollgate: quota settlement of {} settled on attempt {}{moot}; it had failed: {}",
                self.whose(),
                self.attempts,
                self.last_error
            )),
            Retried::Abandoned => Some(format!(
                "tollgate: quota settlement of {} abandoned after {} attempts ({}){moot}: what it \
                 still held stays held — a concurrency slot until its lease runs out, the \
                 estimate in its budget and token window instead of what it used",
                self.whose(),
                self.attempts,
                self.last_error
            )),
        }
    }

    /// The line a host logs when it cannot keep this settlement ([`MAX_PENDING`] are waiting).
    pub fn not_kept_line(&self) -> String {
        format!(
            "tollgate: quota settlement of {} failed ({}) and is NOT retried: {MAX_PENDING} \
             settlements already wait for the store; what it held stays held as if abandoned",
            self.whose(),
            self.last_error
        )
    }

    /// The metrics a retry with `outcome` moves: one retry, and an abandoned settlement.
    pub fn metric_updates(&self, outcome: Retried) -> Vec<Update<'_>> {
        let key = || Cow::Borrowed(self.key_id.as_str());
        let mut out = vec![Update::new(Metric::SettlementRetries, [key()], 1)];
        if outcome == Retried::Abandoned {
            out.push(Update::new(Metric::SettlementsAbandoned, [key()], 1));
        }
        out
    }

    /// The metric a settlement that cannot be kept moves.
    pub fn not_kept_updates(&self) -> Vec<Update<'_>> {
        vec![Update::new(
            Metric::SettlementsAbandoned,
            [Cow::Borrowed(self.key_id.as_str())],
            1,
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::counters::CasCounters;
    use crate::store::memory::MemoryStore;
    use crate::store::StoreError;
    use std::cell::Cell;

    /// Counters that fail their first `fails` writes, then pass them on.
    struct Flaky<'a> {
        inner: &'a dyn Counters,
        fails: Cell<u32>,
    }

    impl Counters for Flaky<'_> {
        fn add(&self, name: &str, window: u64, delta: i64) -> Result<i64, StoreError> {
            if self.fails.get() > 0 {
                self.fails.set(self.fails.get() - 1);
                return Err(StoreError::Host("busy".into()));
            }
            self.inner.add(name, window, delta)
        }
        fn read(&self, name: &str, window: u64) -> Result<i64, StoreError> {
            self.inner.read(name, window)
        }
    }

    fn write(name: &str, delta: i64, until_ms: Option<u64>) -> Write {
        Write {
            name: name.into(),
            window: 1,
            delta,
            until_ms,
        }
    }

    #[test]
    fn retries_back_off_then_settle() {
        let s = MemoryStore::default();
        let c = CasCounters(&s);
        c.add("slot", 1, 1).unwrap();
        let mut u = Unsettled::new(
            "k",
            Some("r1"),
            vec![write("slot", -1, None)],
            "store: down".into(),
            1_000,
            50_000,
        )
        .unwrap();
        assert_eq!(u.next_at_ms(), 1_250);
        let flaky = Flaky {
            inner: &c,
            fails: Cell::new(2),
        };
        assert_eq!(u.retry(&flaky, 1_250, 10), Retried::Again { at_ms: 2_250 });
        assert_eq!(u.log_line(Retried::Again { at_ms: 0 }), None);
        assert_eq!(u.retry(&flaky, 2_250, 10), Retried::Again { at_ms: 6_250 });
        assert_eq!(u.retry(&flaky, 6_250, 10), Retried::Settled);
        assert_eq!(c.read("slot", 1).unwrap(), 0);
        assert_eq!(
            u.log_line(Retried::Settled).unwrap(),
            "tollgate: quota settlement of key `k` (request r1) settled on attempt 4; it had \
             failed: store: busy"
        );
        assert!(Unsettled::new("k", None, vec![], String::new(), 0, 0).is_none());
    }

    #[test]
    fn retries_stop_at_the_bound_and_drop_moot_writes() {
        let s = MemoryStore::default();
        let c = CasCounters(&s);
        let down = Flaky {
            inner: &c,
            fails: Cell::new(u32::MAX),
        };
        // One write whose window ends at quota time 60_000 (10 s after the end), one never.
        let mut u = Unsettled::new(
            "k",
            None,
            vec![write("minute", -5, Some(60_000)), write("total", -5, None)],
            "store: down".into(),
            1_000,
            50_000,
        )
        .unwrap();
        assert!(matches!(u.retry(&down, 2_000, 3), Retried::Again { .. }));
        assert_eq!(u.writes.len(), 2);
        // 10 s later the minute is over: its write is moot.
        assert_eq!(u.retry(&down, 11_000, 3), Retried::Abandoned);
        assert_eq!(u.writes.len(), 1);
        let line = u.log_line(Retried::Abandoned).unwrap();
        assert!(
            line.contains("abandoned after 3 attempts (store: busy)")
                && line.contains("1 of its writes were moot"),
            "{line}"
        );
        assert_eq!(
            u.metric_updates(Retried::Abandoned)
                .iter()
                .map(|m| m.metric)
                .collect::<Vec<_>>(),
            [Metric::SettlementRetries, Metric::SettlementsAbandoned]
        );
        // Everything moot: settled without a write.
        let mut u = Unsettled::new(
            "k",
            None,
            vec![write("minute", -5, Some(60_000))],
            "x".into(),
            0,
            59_000,
        )
        .unwrap();
        assert_eq!(u.retry(&down, 5_000, 3), Retried::Settled);
    }
}
