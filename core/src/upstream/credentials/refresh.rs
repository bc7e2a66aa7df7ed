//! When to fetch credentials, and who: the schedule every host follows.
//!
//! * Refresh ahead of expiry: at `expires − min(REFRESH_MARGIN, lifetime / 2)`, and at least
//!   hourly ([`MAX_AGE_MS`]: IMDS and ECS hand out a new set about every hour, each valid for
//!   hours, so holding the newest one rides out an endpoint outage of hours); never sooner than
//!   [`MIN_REFRESH_INTERVAL_MS`] after the last fetch (an endpoint may answer the same set again
//!   until it rotates them).
//! * One fetcher at a time: a fetch runs under a lease in the shared state, so one VM (Envoy)
//!   fetches for all; a lease whose holder vanished runs out after [`LEASE_MS`].
//! * After a failure, back off (1 s, doubling, at most [`BACKOFF_MAX_MS`]); the credentials
//!   already held keep serving while they are usable ([`super::Fetched::usable`]).
//!
//! The state is a small record hosts keep beside the credentials; every decision is a pure
//! function of it, the credentials and the host's clock.

use super::fetch::CALL_TIMEOUT_MS;
use super::Fetched;

/// How long before expiry a refresh starts (the AWS SDKs' advisory refresh), for credentials
/// that live longer than twice this.
pub const REFRESH_MARGIN_MS: u64 = 15 * 60_000;
pub const MIN_REFRESH_INTERVAL_MS: u64 = 1_000;
pub const MAX_AGE_MS: u64 = 60 * 60_000;
pub const BACKOFF_FIRST_MS: u64 = 1_000;
pub const BACKOFF_MAX_MS: u64 = 10_000;
/// Longer than a fetch can take: three calls (IMDSv2), each timed out by the host.
pub const LEASE_MS: u64 = 3 * CALL_TIMEOUT_MS + 1_000;

/// When credentials fetched as `f` should be refreshed.
pub fn refresh_at(f: &Fetched) -> u64 {
    let ahead = REFRESH_MARGIN_MS.min(f.lifetime_ms() / 2);
    f.expires_ms
        .saturating_sub(ahead)
        .min(f.fetched_ms.saturating_add(MAX_AGE_MS))
        .max(f.fetched_ms.saturating_add(MIN_REFRESH_INTERVAL_MS))
}

/// The shared refresh state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// A fetch is running until then (0: none).
    pub lease_until_ms: u64,
    /// Who runs it (a random number per VM).
    pub holder: u64,
    /// Failures in a row.
    pub failures: u32,
    /// After a failure, no fetch before then.
    pub retry_at_ms: u64,
}

const STATE_LEN: usize = 28;

impl State {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(STATE_LEN);
        out.extend_from_slice(&self.lease_until_ms.to_le_bytes());
        out.extend_from_slice(&self.holder.to_le_bytes());
        out.extend_from_slice(&self.failures.to_le_bytes());
        out.extend_from_slice(&self.retry_at_ms.to_le_bytes());
        out
    }

    /// What [`State::encode`] wrote; anything else reads as the initial state.
    pub fn decode(bytes: &[u8]) -> Self {
        let u64_at = |i: usize| {
            bytes
                .get(i..i + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
        };
        let u32_at = |i: usize| {
            bytes
                .get(i..i + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes)
        };
        if bytes.len() != STATE_LEN {
            return Self::default();
        }
        Self {
            lease_until_ms: u64_at(0).unwrap_or(0),
            holder: u64_at(8).unwrap_or(0),
            failures: u32_at(16).unwrap_or(0),
            retry_at_ms: u64_at(20).unwrap_or(0),
        }
    }

    /// Whether credentials are due for a fetch at `now_ms` (lease aside): none held, or their
    /// refresh time has come; and no back-off after a failure is running.
    pub fn due(&self, current: Option<&Fetched>, now_ms: u64) -> bool {
        now_ms >= self.retry_at_ms && current.is_none_or(|f| now_ms >= refresh_at(f))
    }

    /// The state that gives `holder` the lease for a fetch starting at `now_ms`, if one is due
    /// and no other fetch holds the lease. Hosts write it with compare-and-swap: whoever's
    /// write lands fetches.
    pub fn take_lease(&self, current: Option<&Fetched>, now_ms: u64, holder: u64) -> Option<Self> {
        (self.due(current, now_ms) && now_ms >= self.lease_until_ms).then_some(Self {
            lease_until_ms: now_ms.saturating_add(LEASE_MS),
            holder,
            ..*self
        })
    }

    /// Whether `holder` holds a lease that has not run out.
    pub fn held_by(&self, holder: u64, now_ms: u64) -> bool {
        self.holder == holder && now_ms < self.lease_until_ms
    }

    /// After a fetch that succeeded.
    pub fn succeeded() -> Self {
        Self::default()
    }

    /// After a fetch that failed at `now_ms`: back off.
    pub fn failed(&self, now_ms: u64) -> Self {
        let failures = self.failures.saturating_add(1);
        let backoff = BACKOFF_FIRST_MS
            .saturating_mul(1u64 << failures.saturating_sub(1).min(20))
            .min(BACKOFF_MAX_MS);
        Self {
            lease_until_ms: 0,
            holder: 0,
            failures,
            retry_at_ms: now_ms.saturating_add(backoff),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetched(fetched_ms: u64, lifetime_ms: u64) -> Fetched {
        Fetched {
            access_key_id: "A".into(),
            secret_access_key: "S".into(),
            session_token: None,
            expires_ms: fetched_ms + lifetime_ms,
            fetched_ms,
        }
    }

    const HOUR: u64 = 3_600_000;

    #[test]
    fn refresh_hourly_fifteen_minutes_ahead_or_at_half_life() {
        assert_eq!(refresh_at(&fetched(0, 6 * HOUR)), HOUR);
        assert_eq!(refresh_at(&fetched(0, HOUR)), HOUR - 15 * 60_000);
        assert_eq!(refresh_at(&fetched(1_000, 10_000)), 6_000);
        // The same set again, close to its end: not sooner than a second later.
        assert_eq!(refresh_at(&fetched(50_000, 1_200)), 51_000);
    }

    /// A fake clock drives the schedule through a day of hourly credentials, an outage and
    /// competing VMs: the credentials held are always usable while the endpoint answers, a
    /// refresh never starts while another holds the lease, and the endpoint is asked about
    /// once per rotation rather than once per tick.
    #[test]
    fn schedule_with_a_fake_clock() {
        // The endpoint hands out sets that live 6 h; a new one each hour.
        let issue = |now: u64| {
            let n = now / HOUR;
            fetched(now, (n * HOUR + 6 * HOUR) - now)
        };
        let mut state = State::default();
        let mut current: Option<Fetched> = None;
        let mut fetches = 0;
        let mut unusable_ms = 0;
        let tick = 500;
        let mut now = 0;
        while now < 24 * HOUR {
            // Two VMs tick; each tries to take the lease.
            for vm in [1, 2] {
                if let Some(leased) = state.take_lease(current.as_ref(), now, vm) {
                    state = leased;
                    fetches += 1;
                    // The endpoint is down from 10:00 to 16:30.
                    let down = (10 * HOUR..16 * HOUR + HOUR / 2).contains(&now);
                    if down {
                        state = state.failed(now);
                    } else {
                        assert!(state.held_by(vm, now));
                        current = Some(issue(now));
                        state = State::succeeded();
                    }
                }
            }
            if !current.as_ref().is_some_and(|c| c.usable(now)) {
                unusable_ms += tick;
            }
            now += tick;
        }
        // Up at once; then the set fetched at 09:00 (the newest, expiring 15:00) serves through
        // the outage until 14:59 (a minute before expiry), and nothing does until 16:30.
        let outage = (16 * HOUR + HOUR / 2) - (15 * HOUR - 60_000);
        // (The first retry after 16:30 comes within one back-off.)
        assert!(
            unusable_ms <= outage + BACKOFF_MAX_MS + tick,
            "{unusable_ms}"
        );
        assert!(unusable_ms >= outage - tick, "{unusable_ms}");
        // Hourly refreshes plus the outage's retries, at most one per 10 s: far fewer than the
        // ticks (172,800 of them).
        let outage_retries = (6 * HOUR + HOUR / 2) / BACKOFF_MAX_MS;
        assert!(fetches < 24 + outage_retries + 10, "{fetches}");
        assert!(fetches > outage_retries, "{fetches}");
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_resets() {
        let mut s = State::default();
        let mut waits = Vec::new();
        for _ in 0..7 {
            s = s.failed(1_000_000);
            waits.push(s.retry_at_ms - 1_000_000);
        }
        assert_eq!(waits, [1_000, 2_000, 4_000, 8_000, 10_000, 10_000, 10_000]);
        assert!(!s.due(None, 1_000_000 + 9_999));
        assert!(s.due(None, 1_000_000 + 10_000));
        assert_eq!(State::succeeded(), State::default());
        let mut many = State {
            failures: u32::MAX,
            ..State::default()
        };
        many = many.failed(u64::MAX - 5);
        assert_eq!(many.retry_at_ms, u64::MAX);
    }

    #[test]
    fn the_lease_excludes_others_until_it_runs_out() {
        let s = State::default();
        let leased = s.take_lease(None, 1_000, 7).unwrap();
        assert!(leased.held_by(7, 1_000));
        assert!(!leased.held_by(8, 1_000));
        assert_eq!(leased.take_lease(None, 1_000 + LEASE_MS - 1, 8), None);
        // A holder that vanished: the lease runs out.
        let taken = leased.take_lease(None, 1_000 + LEASE_MS, 8).unwrap();
        assert!(taken.held_by(8, 1_000 + LEASE_MS));
        assert!(!taken.held_by(7, 1_000 + LEASE_MS));
        // Nothing due: no lease.
        let f = fetched(0, 10_000);
        assert_eq!(State::default().take_lease(Some(&f), 4_999, 1), None);
        assert!(State::default().take_lease(Some(&f), 5_000, 1).is_some());
    }

    #[test]
    fn state_encoding_round_trips() {
        let s = State {
            lease_until_ms: 1,
            holder: u64::MAX,
            failures: 3,
            retry_at_ms: 99,
        };
        assert_eq!(State::decode(&s.encode()), s);
        assert_eq!(State::decode(b"junk"), State::default());
        assert_eq!(State::decode(&[]), State::default());
    }
}
