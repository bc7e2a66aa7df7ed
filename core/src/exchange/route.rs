//! The exchange's targets: the plan it tries them in, what each would cost, the attempts
//! made, and which one answered (and is billed).

use std::time::SystemTime;

use crate::accounting::pricing::{Quote, ServiceTier};
use crate::accounting::record::{AttemptRecord, SkippedRecord};
use crate::accounting::usage::Usage;
use crate::config::Config;
use crate::error::GatewayError;
use crate::request::options::Unpriced;
use crate::routing::attempts::{self, AttemptLog};
use crate::routing::plan::{Plan, Skipped};
use crate::upstream::attempt;
use crate::upstream::credentials::{Fetched, Signer};
use crate::upstream::request::UpstreamRequest;
use crate::upstream::signing::SigningKeyCache;

use super::Exchange;

/// What billing needs of one planned target, decided before anything is sent.
#[derive(Clone, Debug)]
pub(super) struct Priced {
    pub(super) tier: ServiceTier,
    pub(super) unpriced: Vec<Unpriced>,
    pub(super) quote: Quote,
    /// What it would use at most: billed if it ran but its usage never came back.
    pub(super) estimate: Usage,
}

/// An admitted exchange's targets and attempts.
#[derive(Debug)]
pub(super) struct Route {
    pub(super) plan: Plan,
    /// One per planned target, in plan order.
    pub(super) priced: Vec<Priced>,
    pub(super) skipped: Vec<Skipped>,
    pub(super) attempts: AttemptLog,
    /// The body every attempt is made from (the client's, with the key's guardrail), kept
    /// while another target may be tried.
    pub(super) prepared: Option<Vec<u8>>,
    /// Whether attempt 1 was sent with a body other than `prepared` (clamped for its target).
    pub(super) first_rewritten: bool,
    /// Headers every attempt carries besides its signature (a key's guardrail on invoke).
    pub(super) headers: Vec<(String, String)>,
    /// Client headers no attempt forwards (a client's guardrail headers, when the key has one).
    pub(super) remove_headers: Vec<String>,
}

impl Route {
    /// The target that answered, or that is being tried: the latest attempt's.
    fn current(&self) -> usize {
        self.attempts.attempts().last().map_or(0, |a| a.target)
    }

    /// The usage record's view of the attempts, when the alias has several targets.
    pub(super) fn records(&self) -> (Vec<AttemptRecord>, Vec<SkippedRecord>) {
        let attempts = self.attempts.attempts();
        let records = attempts
            .iter()
            .enumerate()
            .map(|(i, a)| AttemptRecord {
                model_id: self
                    .plan
                    .targets
                    .get(a.target)
                    .map(|t| t.model_id.clone())
                    .unwrap_or_default(),
                status: a.status.unwrap_or(0),
                // Only an attempt another followed fell back.
                fallback: if i + 1 < attempts.len() {
                    attempts::fallback_reason(a.status)
                } else {
                    None
                },
            })
            .collect();
        let skipped = self
            .skipped
            .iter()
            .map(|s| SkippedRecord {
                model_id: s.model_id.clone(),
                reason: s.reason,
            })
            .collect();
        (records, skipped)
    }
}

/// What Envoy's downstream filter publishes for Tollgate's upstream filter, which builds each
/// attempt after the first (see [`Exchange::fallbacks`]).
#[derive(Debug)]
pub struct Fallbacks<'a> {
    /// The plan ([`Plan::encode`]), for the request's filter state.
    pub plan: String,
    /// The body attempts are made from, when attempt 1 went with another (clamped for its
    /// target): later attempts clamp this one for theirs.
    pub body: Option<&'a [u8]>,
    /// How many times the router may retry: one less than the targets.
    pub retries: usize,
}

impl Exchange {
    /// Whether this request has more than one target to try.
    pub fn has_fallbacks(&self) -> bool {
        self.route
            .as_ref()
            .is_some_and(|r| r.plan.targets.len() > 1)
    }

    /// When this request has more than one target to try: what an Envoy host hands its
    /// upstream filter. `None` for one target (nothing to fall back to).
    pub fn fallbacks(&self) -> Option<Fallbacks<'_>> {
        let route = self.route.as_ref()?;
        let n = route.plan.targets.len();
        (n > 1).then(|| Fallbacks {
            plan: route.plan.encode(),
            body: route.prepared.as_deref().filter(|_| route.first_rewritten),
            retries: n - 1,
        })
    }

    /// The attempts Envoy's upstream filter logged (its filter state, [`AttemptLog::encode`]):
    /// which target answered, what the others got. An empty or unreadable log leaves the
    /// exchange's own (attempt 1 at the first target): no upstream filter ran.
    pub fn sync_attempts(&mut self, log: &str) {
        let Some(route) = self.route.as_mut() else {
            return;
        };
        match AttemptLog::decode(log) {
            Some(log)
                if !log.is_empty()
                    && log
                        .attempts()
                        .iter()
                        .all(|a| a.target < route.plan.targets.len()) =>
            {
                route.attempts = log;
            }
            _ => {}
        }
        self.price_current();
    }

    /// The attempt in flight got `status` (`None`: no response — the connection failed or was
    /// reset before one). If the rule falls back and a target is left, that target's request,
    /// signed at `now`, for the host to send instead; `None`: this is the exchange's answer
    /// (the host carries on with it). The Spin component calls this for every response and
    /// failure before anything reaches the client.
    pub fn fall_back(
        &mut self,
        config: &Config,
        status: Option<u16>,
        signing_keys: &mut SigningKeyCache,
        now: SystemTime,
        fetched: Option<&Fetched>,
    ) -> Option<Result<UpstreamRequest, GatewayError>> {
        let route = self.route.as_mut()?;
        if let Some(s) = status {
            route.attempts.answered(s);
        }
        attempts::fallback_reason(status)?;
        let next = route.current() + 1;
        if next >= route.plan.targets.len() {
            return None;
        }
        let now_ms = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        // The last target: nothing will be built from the body again.
        let prepared = if next + 1 >= route.plan.targets.len() {
            route.prepared.take()
        } else {
            route.prepared.clone()
        }
        .unwrap_or_default();
        let built =
            Signer::for_request(&config.upstream_auth, fetched, now_ms).and_then(|signer| {
                attempt::build(
                    config,
                    &route.plan,
                    next,
                    &prepared,
                    &route.headers,
                    &signer,
                    signing_keys,
                    now,
                )
            });
        route.attempts.start(next);
        let remove_headers = route.remove_headers.clone();
        self.price_current();
        Some(built.map(|a| {
            let mut request = a.request;
            // Always the body to send: clamped for this target, or as prepared.
            request.body.get_or_insert(prepared);
            request.remove_headers = remove_headers;
            request
        }))
    }

    /// Bills (and prices a cut-off stream) at the target being tried or that answered.
    pub(super) fn price_current(&mut self) {
        let Some(route) = self.route.as_ref() else {
            return;
        };
        let index = route.current();
        let (Some(target), Some(priced)) = (route.plan.targets.get(index), route.priced.get(index))
        else {
            return;
        };
        self.model_id.clone_from(&target.model_id);
        self.service_tier = priced.tier;
        self.unpriced.clone_from(&priced.unpriced);
        self.estimate = priced.estimate;
        self.priced_per_image = priced.quote.per_image_pico_usd.is_some();
        if let Some(allowance) = self.cut_off_allowance {
            self.relay.cut_off_at(allowance, priced.quote);
        }
    }
}
