//! Leases end to end in the quota layer: reserve, renew, settle and the report of what dead
//! exchanges left, on both kinds of counters (Envoy's CAS, Spin's increments on SQLite's and
//! Redis's encodings), in every order a live host can produce.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::Arc;

use super::counters::{CasCounters, Counters, IncrementCounters};
use super::lease::Lease;
use super::limits::{Budget, KeyLimits, Limits, Scope};
use super::period::Period;
use super::reservation::*;
use crate::config::ApiKey;
use crate::error::ErrorKind;
use crate::store::memory::{Encoding, MemoryAtomic, MemoryStore};
use crate::store::StoreError;

/// 2026-11-22T12:00:00Z: a lease bucket starts here (default lease: buckets of 300 s).
const NOW: u64 = 1_795_348_800_000;
const LEASE_MS: u64 = 600_000;
/// One and a half leases: whatever was renewed at [`NOW`] has expired.
const EXPIRED: u64 = NOW + 3 * LEASE_MS / 2;
const ESTIMATE: u64 = 1_000;

fn key(limits: Limits) -> ApiKey {
    ApiKey {
        id: "k".into(),
        sha256: Some([0; 32]),
        identities: Default::default(),
        any_model: true,
        models: Default::default(),
        limits: KeyLimits {
            key: limits,
            models: BTreeMap::new(),
            ..KeyLimits::default()
        },
        guardrail: None,
    }
}

/// One request in flight at a time, and a monthly budget.
fn limited(max_concurrent: u64) -> ApiKey {
    key(Limits {
        max_concurrent_requests: Some(max_concurrent),
        budget: Some(Budget {
            pico_usd: 1_000_000,
            period: Period::Monthly,
        }),
        ..Default::default()
    })
}

fn est() -> Estimate {
    Estimate {
        tokens: 10,
        cost_pico_usd: ESTIMATE,
        input_cost_pico_usd: 10,
        ..Default::default()
    }
}

fn admit(c: &dyn Counters, k: &ApiKey, now: u64) -> (Result<Reservation, ErrorKind>, Notes) {
    let mut notes = Notes::default();
    let r = reserve(c, k, "m", est(), false, now, Lease::default(), &mut notes).map_err(|e| e.kind);
    (r, notes)
}

fn settle(r: &mut Reservation, c: &dyn Counters, cost: u64, now: u64) {
    let (failed, error) = r.settle(c, 5, cost, now);
    assert!(failed.is_empty() && error.is_none(), "{error:?}");
}

fn in_flight_now(c: &dyn Counters, now: u64) -> u64 {
    let base = leased_name("k", Scope::Key, "", Leased::Concurrency);
    in_flight(c, &base, Lease::default(), now).unwrap()
}

fn spent(c: &dyn Counters, now: u64) -> i64 {
    c.read("tollgate/q/k/spend", Period::Monthly.window(now))
        .unwrap()
}

/// The three stores: Envoy's CAS shared data, and Spin's increments as SQLite and Redis
/// encode them.
fn each_store(test: impl Fn(&dyn Counters)) {
    let cas = MemoryStore::default();
    test(&CasCounters(&cas));
    for encoding in [Encoding::SqliteLe, Encoding::RedisDecimal] {
        let atomic = MemoryAtomic::new(encoding);
        test(&IncrementCounters(&atomic));
    }
}

#[test]
fn a_dead_exchange_holds_its_slot_for_a_lease_then_is_reported_once_and_stays_billed() {
    each_store(|c| {
        let k = limited(1);
        let (dead, _) = admit(c, &k, NOW);
        std::mem::forget(dead.unwrap());
        for at in [NOW + 1, NOW + LEASE_MS - 1] {
            assert_eq!(
                admit(c, &k, at).0.unwrap_err(),
                ErrorKind::ConcurrencyLimited
            );
        }
        assert_eq!(in_flight_now(c, NOW + LEASE_MS - 1), 1);
        let (next, notes) = admit(c, &k, EXPIRED);
        let mut next = next.unwrap();
        assert_eq!(
            notes.reclaimed,
            [Reclaimed {
                key_id: "k".into(),
                model_id: None,
                requests: 1,
                reserved_pico_usd: ESTIMATE,
                lease_seconds: 600,
            }]
        );
        let line = notes.reclaimed[0].log_line();
        assert!(
            line.contains("lease ran out on key `k`: 1 request in flight gave no word for 600 s")
                && line.contains("slots are free again")
                && line.contains("estimate of $0.000000001 (1000 pico-USD) stays billed"),
            "{line}"
        );
        // The dead request's estimate stays in the budget; the new one's reservation joins it.
        assert_eq!(spent(c, EXPIRED), 2 * ESTIMATE as i64);
        settle(&mut next, c, 400, EXPIRED + 1);
        assert_eq!(spent(c, EXPIRED), ESTIMATE as i64 + 400);
        assert_eq!(in_flight_now(c, EXPIRED + 1), 0);
        // Reported once: later admissions find nothing more.
        for at in [EXPIRED + 2, EXPIRED + 3] {
            let (r, notes) = admit(c, &k, at);
            settle(&mut r.unwrap(), c, 0, at);
            assert!(notes.reclaimed.is_empty());
        }
    });
}

#[test]
fn a_live_exchange_renewed_keeps_its_slot_for_hours() {
    each_store(|c| {
        let k = limited(1);
        let mut live = admit(c, &k, NOW).0.unwrap();
        // Renewed every minute (as a host's timer would), over five hours.
        let mut now = NOW;
        let mut renewed = 0;
        while now < NOW + 5 * 3_600_000 {
            now += 60_000;
            match live.renew(c, now) {
                Renewal::Renewed => renewed += 1,
                Renewal::NotDue => {}
                other => panic!("{other:?}"),
            }
            assert_eq!(
                admit(c, &k, now).0.unwrap_err(),
                ErrorKind::ConcurrencyLimited
            );
            assert_eq!(in_flight_now(c, now), 1);
            assert!(live.renewal_due_at(now).unwrap() > now);
        }
        assert_eq!(renewed, 5 * 12);
        settle(&mut live, c, 700, now);
        assert_eq!(in_flight_now(c, now), 0);
        let (next, notes) = admit(c, &k, now);
        next.unwrap();
        assert!(notes.reclaimed.is_empty(), "a live exchange was reported");
        assert_eq!(spent(c, now), 700 + ESTIMATE as i64);
    });
}

#[test]
fn renewal_is_due_at_each_bucket_and_costs_nothing_in_between() {
    let atomic = MemoryAtomic::new(Encoding::RedisDecimal);
    let c = IncrementCounters(&atomic);
    let k = limited(1);
    let mut live = admit(&c, &k, NOW + 10).0.unwrap();
    assert_eq!(live.renewal_due_at(NOW + 10), Some(NOW + 300_000));
    let ops = || atomic.operations.load(std::sync::atomic::Ordering::Relaxed);
    let before = ops();
    for at in (NOW + 10..NOW + 300_000).step_by(7_000) {
        assert_eq!(live.renew(&c, at), Renewal::NotDue);
    }
    assert_eq!(
        ops(),
        before,
        "a renewal that was not due touched the store"
    );
    assert_eq!(live.renew(&c, NOW + 300_000), Renewal::Renewed);
    // Two holdings (slot, budget record), each added to the new bucket and taken from the old.
    assert!(ops() - before >= 4);
    let no_limits = key(Limits::default());
    let free = admit(&c, &no_limits, NOW).0.unwrap();
    assert_eq!(free.renewal_due_at(NOW), None);
}

#[test]
fn a_late_settlement_corrects_the_budget_once_whatever_the_order() {
    // The dead exchange (est. 1000) wakes up after its lease ran out and settles at 400: before
    // the reclaiming admission, after it, or between its read and its claim.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum When {
        Before,
        After,
        During,
    }
    for when in [When::Before, When::After, When::During] {
        each_store(|store| {
            let k = limited(1);
            let late = RefCell::new(admit(store, &k, NOW).0.ok());
            let settle_late = || {
                if let Some(mut r) = late.borrow_mut().take() {
                    settle(&mut r, store, 400, EXPIRED + 5);
                }
            };
            let c = BeforeClaim {
                inner: store,
                hook: (when == When::During).then_some(&settle_late as &dyn Fn()),
            };
            if when == When::Before {
                settle_late();
            }
            let (next, notes) = admit(&c, &k, EXPIRED);
            let mut next = next.unwrap();
            settle_late();
            // Reported unless it settled first (the report is what the bucket held when
            // claimed)...
            let reported = usize::from(when != When::Before);
            assert_eq!(notes.reclaimed.len(), reported, "{when:?}");
            // ...and the budget holds the late request's actual cost once, not its estimate.
            assert_eq!(spent(store, EXPIRED), 400 + ESTIMATE as i64, "{when:?}");
            // The new request's slot is the only one held; the late one freed nothing of it.
            assert_eq!(in_flight_now(store, EXPIRED + 6), 1, "{when:?}");
            settle(&mut next, store, 300, EXPIRED + 6);
            assert_eq!(spent(store, EXPIRED), 700, "{when:?}");
            assert_eq!(in_flight_now(store, EXPIRED + 6), 0, "{when:?}");
        });
    }
}

/// Counters that run a hook just before each claim of an expired bucket.
struct BeforeClaim<'a> {
    inner: &'a dyn Counters,
    hook: Option<&'a dyn Fn()>,
}

impl Counters for BeforeClaim<'_> {
    fn add(&self, name: &str, window: u64, delta: i64) -> Result<i64, StoreError> {
        if name.contains("/expired/") {
            if let Some(hook) = self.hook {
                hook();
            }
        }
        self.inner.add(name, window, delta)
    }
    fn read(&self, name: &str, window: u64) -> Result<i64, StoreError> {
        self.inner.read(name, window)
    }
}

#[test]
fn of_many_reclaimers_exactly_one_reports() {
    // Eight admissions at once find the same expired bucket (two slots left by dead requests).
    let cas = Arc::new(MemoryStore::default());
    let atomic = Arc::new(MemoryAtomic::new(Encoding::SqliteLe));
    let k = Arc::new(limited(20));
    for dead in 0..2 {
        std::mem::forget(admit(&CasCounters(&*cas), &k, NOW + dead).0.unwrap());
        std::mem::forget(
            admit(&IncrementCounters(&*atomic), &k, NOW + dead)
                .0
                .unwrap(),
        );
    }
    let barrier = Arc::new(std::sync::Barrier::new(16));
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let (cas, atomic, k, barrier) =
                (cas.clone(), atomic.clone(), k.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let notes = if i % 2 == 0 {
                    admit(&CasCounters(&*cas), &k, EXPIRED).1
                } else {
                    admit(&IncrementCounters(&*atomic), &k, EXPIRED).1
                };
                (i % 2, notes.reclaimed)
            })
        })
        .collect();
    let mut reports = [Vec::new(), Vec::new()];
    for t in threads {
        let (store, reclaimed) = t.join().unwrap();
        reports[store].extend(reclaimed);
    }
    for r in reports {
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!((r[0].requests, r[0].reserved_pico_usd), (2, 2 * ESTIMATE));
    }
}

#[test]
fn an_admission_during_a_renewal_sees_the_slot_once_or_twice_never_not_at_all() {
    each_store(|store| {
        let k = limited(1);
        let mut live = admit(store, &k, NOW).0.unwrap();
        let next_bucket = NOW + 300_000;
        // Just after the renewal's add to the new bucket, before it takes from the old one.
        let seen = Cell::new(None);
        let c = AfterFirstAdd {
            inner: store,
            hook: &|| seen.set(Some(admit(store, &k, next_bucket).0.map(|_| ()))),
            fired: Cell::new(false),
        };
        assert_eq!(live.renew(&c, next_bucket), Renewal::Renewed);
        assert_eq!(seen.get(), Some(Err(ErrorKind::ConcurrencyLimited)));
        assert_eq!(in_flight_now(store, next_bucket), 1);
    });
}

/// Counters that run a hook once, after the first add that goes through.
struct AfterFirstAdd<'a> {
    inner: &'a dyn Counters,
    hook: &'a dyn Fn(),
    fired: Cell<bool>,
}

impl Counters for AfterFirstAdd<'_> {
    fn add(&self, name: &str, window: u64, delta: i64) -> Result<i64, StoreError> {
        let v = self.inner.add(name, window, delta)?;
        if !self.fired.replace(true) {
            (self.hook)();
        }
        Ok(v)
    }
    fn read(&self, name: &str, window: u64) -> Result<i64, StoreError> {
        self.inner.read(name, window)
    }
}

#[test]
fn a_renewal_too_late_lapses_and_settles_only_the_budget() {
    each_store(|c| {
        let k = limited(1);
        let mut stalled = admit(c, &k, NOW).0.unwrap();
        assert_eq!(stalled.renew(c, EXPIRED), Renewal::Lapsed);
        assert_eq!(stalled.renew(c, EXPIRED + 1), Renewal::NotDue);
        assert_eq!(stalled.renewal_due_at(EXPIRED), None);
        let mut other = admit(c, &k, EXPIRED).0.unwrap();
        settle(&mut stalled, c, 250, EXPIRED + 2);
        // The other request still holds its slot; the budget has the stalled one's actual cost.
        assert_eq!(in_flight_now(c, EXPIRED + 2), 1);
        assert_eq!(spent(c, EXPIRED), 250 + ESTIMATE as i64);
        settle(&mut other, c, 0, EXPIRED + 3);
    });
}

#[test]
fn spin_keys_stay_bounded_over_many_buckets() {
    for encoding in [Encoding::SqliteLe, Encoding::RedisDecimal] {
        let atomic = MemoryAtomic::new(encoding);
        let c = IncrementCounters(&atomic);
        let k = limited(3);
        let mut sizes = Vec::new();
        for bucket in 0..60u64 {
            let at = NOW + bucket * 300_000 + 17;
            let mut r = admit(&c, &k, at).0.unwrap();
            // Every fifth bucket a request dies, leaving something to reclaim.
            if bucket % 5 == 0 {
                std::mem::forget(r);
            } else {
                r.renew(&c, at + 1);
                settle(&mut r, &c, 1, at + 2);
            }
            sizes.push(atomic.keys().len());
        }
        let most = *sizes.iter().max().unwrap();
        // Three leased names (slots, budget records, claims) of 4 slots, each a key and its
        // marker, plus the budget's spend window and its marker.
        assert!(most <= 3 * 4 * 2 + 2, "{most}: {:?}", atomic.keys());
        assert_eq!(sizes[59], sizes[40], "{:?}", atomic.keys());
    }
}

#[test]
fn a_store_that_fails_the_settlement_leaves_writes_to_retry() {
    struct Down;
    impl Counters for Down {
        fn add(&self, _: &str, _: u64, _: i64) -> Result<i64, StoreError> {
            Err(StoreError::Host("down".into()))
        }
        fn read(&self, _: &str, _: u64) -> Result<i64, StoreError> {
            Err(StoreError::Host("down".into()))
        }
    }
    each_store(|c| {
        let k = limited(1);
        let mut r = admit(c, &k, NOW).0.unwrap();
        let (failed, error) = r.settle(&Down, 5, 400, NOW + 1);
        assert_eq!(error, Some(StoreError::Host("down".into())));
        // The slot, the budget's correction, the budget record.
        assert_eq!(failed.len(), 3);
        assert_eq!(in_flight_now(c, NOW + 2), 1);
        let mut u = super::settlement::Unsettled::new("k", None, failed, "down".into(), 0, NOW + 1)
            .unwrap();
        assert_eq!(u.retry(c, 250, 4), super::settlement::Retried::Settled);
        assert_eq!(in_flight_now(c, NOW + 2), 0);
        assert_eq!(spent(c, NOW), 400);
        admit(c, &k, NOW + 3).0.unwrap();
    });
}
