//! Leases: what a request in flight holds — a concurrency slot, its budget reservation — counts
//! only while its exchange shows signs of life, so that one whose host died (a trapped VM, a
//! killed instance, a settlement the store kept failing) cannot hold a key's slots for good.
//!
//! Time is cut into buckets of half a lease. What an exchange holds is counted in the bucket it
//! last renewed in, and a bucket counts while it is one of the [`LIVE_BUCKETS`] latest: so a
//! holding lives between one lease and one and a half after its exchange's last renewal. A live
//! exchange renews whenever its bucket is no longer the current one (hosts ask on response
//! chunks and on a timer), moving what it holds into the current bucket. Neither host can list
//! its store's keys, so each holding counter is [`SLOTS`] counters, bucket `b` in slot
//! `b % SLOTS`: the live buckets, plus the one just expired, still readable until its slot is
//! reused.

/// Buckets that count: the current one and the two before it.
pub const LIVE_BUCKETS: u64 = 3;
/// Counters per holding: the live buckets and the one that expired last.
pub const SLOTS: u64 = LIVE_BUCKETS + 1;
/// The lease when the configuration names none: longer than a Bedrock call lasts without a
/// byte of response (renewal then keeps longer ones alive).
pub const DEFAULT_LEASE_SECONDS: u64 = 600;
/// Shortest and longest lease a configuration may set.
pub const MIN_LEASE_SECONDS: u64 = 2;
pub const MAX_LEASE_SECONDS: u64 = 86_400;

/// How long what an exchange holds outlives the exchange's last sign of life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    seconds: u64,
}

impl Default for Lease {
    fn default() -> Self {
        Self {
            seconds: DEFAULT_LEASE_SECONDS,
        }
    }
}

impl Lease {
    /// A lease of `seconds`, clamped to [`MIN_LEASE_SECONDS`]..=[`MAX_LEASE_SECONDS`] (the
    /// configuration refuses values outside).
    pub fn new(seconds: u64) -> Self {
        Self {
            seconds: seconds.clamp(MIN_LEASE_SECONDS, MAX_LEASE_SECONDS),
        }
    }

    pub fn seconds(self) -> u64 {
        self.seconds
    }

    fn bucket_ms(self) -> u64 {
        self.seconds * 1000 / (LIVE_BUCKETS - 1)
    }

    /// The bucket of quota time `now_ms`.
    pub fn bucket(self, now_ms: u64) -> u64 {
        now_ms / self.bucket_ms()
    }

    /// Whether what was renewed in `bucket` still counts at `now_ms` (a clock behind the
    /// holder's sees it live).
    pub fn is_live(self, bucket: u64, now_ms: u64) -> bool {
        self.bucket(now_ms) < bucket.saturating_add(LIVE_BUCKETS)
    }

    /// When (quota time) what was renewed in `bucket` stops counting.
    pub fn expires_at_ms(self, bucket: u64) -> u64 {
        bucket
            .saturating_add(LIVE_BUCKETS)
            .saturating_mul(self.bucket_ms())
    }

    /// Milliseconds from `now_ms` until the next bucket starts: when a holder renews next.
    pub fn ms_until_next_bucket(self, now_ms: u64) -> u64 {
        self.bucket_ms() - now_ms % self.bucket_ms()
    }

    /// The bucket that expired last at `now_ms`: what it still holds is left by exchanges
    /// that gave no word for a lease. `None` before there is one.
    pub fn just_expired(self, now_ms: u64) -> Option<u64> {
        self.bucket(now_ms).checked_sub(LIVE_BUCKETS)
    }

    /// The live buckets at `now_ms`, oldest first, the current one last.
    pub fn live_buckets(self, now_ms: u64) -> impl Iterator<Item = u64> {
        let now = self.bucket(now_ms);
        (0..LIVE_BUCKETS)
            .rev()
            .filter_map(move |back| now.checked_sub(back))
    }

    /// The counter of holding `base` that keeps `bucket`. The lease is part of the name: a
    /// configuration that changes it starts its counters afresh rather than misread buckets
    /// of another length.
    pub fn slot(self, base: &str, bucket: u64) -> String {
        format!("{base}/{}s/{}", self.seconds, bucket % SLOTS)
    }

    /// Every counter of holding `base`.
    pub fn slots(self, base: &str) -> impl Iterator<Item = String> + '_ {
        (0..SLOTS).map(move |bucket| self.slot(base, bucket))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_795_348_800_000; // 2026-11-22T12:00:00Z, a bucket boundary

    #[test]
    fn a_holding_lives_one_to_one_and_a_half_leases() {
        let lease = Lease::default();
        for renewed_at in [NOW, NOW + 299_999] {
            let b = lease.bucket(renewed_at);
            assert!(lease.is_live(b, renewed_at + 600_000 - 1));
            assert!(lease.is_live(b, lease.expires_at_ms(b) - 1));
            assert!(!lease.is_live(b, lease.expires_at_ms(b)));
            assert!(!lease.is_live(b, renewed_at + 900_000));
            assert!(lease.expires_at_ms(b) - renewed_at >= 600_000);
            assert!(lease.expires_at_ms(b) - renewed_at <= 900_000);
        }
        // A clock behind the holder's sees it live.
        assert!(lease.is_live(lease.bucket(NOW), NOW - 5_000));
    }

    #[test]
    fn buckets_and_slots() {
        let lease = Lease::new(600);
        let b = lease.bucket(NOW);
        assert_eq!(
            lease.live_buckets(NOW).collect::<Vec<_>>(),
            [b - 2, b - 1, b]
        );
        assert_eq!(lease.just_expired(NOW), Some(b - 3));
        assert_eq!(lease.live_buckets(0).collect::<Vec<_>>(), [0]);
        assert_eq!(lease.just_expired(0), None);
        assert_eq!(lease.ms_until_next_bucket(NOW), 300_000);
        assert_eq!(lease.ms_until_next_bucket(NOW + 299_999), 1);
        // The live buckets and the one just expired each have a slot of their own.
        let mut slots: Vec<_> = lease
            .live_buckets(NOW)
            .chain(lease.just_expired(NOW))
            .map(|b| lease.slot("q/k/concurrent", b))
            .collect();
        slots.sort();
        slots.dedup();
        assert_eq!(slots.len() as u64, SLOTS);
        let mut all: Vec<_> = lease.slots("q/k/concurrent").collect();
        all.sort();
        assert_eq!(slots, all);
        assert_eq!(lease.slot("q/k/concurrent", 7), "q/k/concurrent/600s/3");
        assert_eq!(Lease::new(0).seconds(), MIN_LEASE_SECONDS);
        assert_eq!(Lease::new(u64::MAX).seconds(), MAX_LEASE_SECONDS);
    }

    #[test]
    fn any_clock_is_safe() {
        for lease in [
            Lease::new(2),
            Lease::default(),
            Lease::new(MAX_LEASE_SECONDS),
        ] {
            for now in [0, 1, u64::MAX - 1, u64::MAX] {
                let b = lease.bucket(now);
                let _ = lease.is_live(b, now);
                let _ = lease.expires_at_ms(b);
                assert!(lease.ms_until_next_bucket(now) >= 1);
                assert!(lease.live_buckets(now).count() >= 1);
            }
        }
    }
}
