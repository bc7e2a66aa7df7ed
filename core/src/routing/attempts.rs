//! Attempts: which failures move a request on to its next target, and the log of the
//! attempts one request made.
//!
//! A request falls back when its attempt got no response at all (a connection that failed or
//! was reset before the response began), a throttle (429) or a server error (5xx) — always
//! before the first byte of a response reaches the client, since a response that has begun
//! cannot be taken back. Anything else (a 2xx, a 4xx refusal) is the answer. The same rule
//! drives both hosts: the Spin component loops over its outbound calls with it, and Envoy's
//! router retries with the policy `envoy/*.yaml` ship (`retry_on: 5xx,retriable-status-codes`,
//! `retriable_status_codes: [429]`), which is this rule written in Envoy's terms.

use serde::Serialize;

/// Why an attempt handed the request on to the next target, or why a target was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// 429 from the target.
    Throttled,
    /// A 5xx from the target.
    ServerError,
    /// No response: the connection failed, or was reset before the response began.
    Connection,
    /// Not tried: the request's estimated input is larger than the target's context window.
    ContextWindow,
    /// Not tried: an invoke body is written for one provider's models, and this target is
    /// another provider's.
    BodyFormat,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Self::Throttled => "throttled",
            Self::ServerError => "server_error",
            Self::Connection => "connection",
            Self::ContextWindow => "context_window",
            Self::BodyFormat => "body_format",
        }
    }
}

/// Whether an attempt answered with `status` (`None`: no response at all) falls back to the
/// next target, and why.
pub fn fallback_reason(status: Option<u16>) -> Option<Reason> {
    match status {
        None => Some(Reason::Connection),
        Some(429) => Some(Reason::Throttled),
        Some(500..=599) => Some(Reason::ServerError),
        Some(_) => None,
    }
}

/// One attempt of a request: the target it went to (an index into the request's plan) and
/// the status it got, if any yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub target: usize,
    pub status: Option<u16>,
}

/// The attempts of one request, in order. On Envoy each attempt passes through Tollgate's
/// upstream filter, which appends to this log (kept in the request's filter state); the
/// downstream filter reads it to bill the attempt that answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttemptLog {
    attempts: Vec<Attempt>,
}

/// Most attempts a log holds: more than any plan has targets.
const MAX_ATTEMPTS: usize = 64;

impl AttemptLog {
    pub fn attempts(&self) -> &[Attempt] {
        &self.attempts
    }

    pub fn is_empty(&self) -> bool {
        self.attempts.is_empty()
    }

    /// A new attempt, to `target`, not answered yet.
    pub fn start(&mut self, target: usize) {
        if self.attempts.len() < MAX_ATTEMPTS {
            self.attempts.push(Attempt {
                target,
                status: None,
            });
        }
    }

    /// The latest attempt got `status`.
    pub fn answered(&mut self, status: u16) {
        if let Some(last) = self.attempts.last_mut() {
            last.status = Some(status);
        }
    }

    /// `0:429,1:-`: each attempt's target and status (`-`: none).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(self.attempts.len() * 6);
        for (i, a) in self.attempts.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&a.target.to_string());
            out.push(':');
            match a.status {
                Some(s) => out.push_str(&s.to_string()),
                None => out.push('-'),
            }
        }
        out
    }

    /// The log [`AttemptLog::encode`] wrote; `None` if it is not one.
    pub fn decode(s: &str) -> Option<Self> {
        let mut attempts = Vec::new();
        if s.is_empty() {
            return Some(Self { attempts });
        }
        for part in s.split(',') {
            if attempts.len() >= MAX_ATTEMPTS {
                return None;
            }
            let (target, status) = part.split_once(':')?;
            let target = target.parse().ok()?;
            let status = match status {
                "-" => None,
                s => Some(s.parse().ok()?),
            };
            attempts.push(Attempt { target, status });
        }
        Some(Self { attempts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttles_server_errors_and_no_response_fall_back() {
        assert_eq!(fallback_reason(None), Some(Reason::Connection));
        assert_eq!(fallback_reason(Some(429)), Some(Reason::Throttled));
        for s in [500, 502, 503, 504, 599] {
            assert_eq!(fallback_reason(Some(s)), Some(Reason::ServerError), "{s}");
        }
        for s in [200, 204, 400, 403, 404, 408, 413, 424] {
            assert_eq!(fallback_reason(Some(s)), None, "{s}");
        }
    }

    #[test]
    fn the_log_round_trips() {
        let mut log = AttemptLog::default();
        assert_eq!(AttemptLog::decode(&log.encode()), Some(log.clone()));
        log.start(0);
        log.answered(429);
        log.start(2);
        assert_eq!(log.encode(), "0:429,2:-");
        assert_eq!(AttemptLog::decode("0:429,2:-"), Some(log.clone()));
        log.answered(200);
        assert_eq!(
            log.attempts(),
            [
                Attempt {
                    target: 0,
                    status: Some(429)
                },
                Attempt {
                    target: 2,
                    status: Some(200)
                }
            ]
        );
        for junk in ["x", "0", "0:", "0:x", ":1", "0:1,", "-1:200", "0:99999"] {
            assert_eq!(AttemptLog::decode(junk), None, "{junk}");
        }
    }
}
