//! The ledger: one entry per model API request, recorded when its response (or stream) is
//! finished. It is the test oracle for what the emulator actually served.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::responses::Usage;

/// One request, as seen and as answered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Order of arrival, from 1; never reused, not even after a reset.
    pub seq: u64,
    /// The `x-amzn-RequestId` answered.
    pub request_id: String,
    pub method: String,
    /// `converse`, `converse-stream`, `invoke`, `invoke-with-response-stream`, or null when
    /// the path is no operation.
    pub operation: Option<String>,
    /// The path exactly as on the request line.
    pub raw_path: String,
    pub raw_query: String,
    /// The `{modelId}` label percent-decoded once, or null when the path is no operation.
    pub model_id: Option<String>,
    /// `sigv4`, `bearer` or `none` (no Authorization header).
    pub auth: String,
    /// True when the SigV4 signature (or the bearer token) verified.
    pub signature_valid: bool,
    /// `Type: message` of the error answered (or of the exception that ended a stream, or
    /// "client disconnected"), else null.
    pub error: Option<String>,
    /// The `x-amzn-ErrorType` answered (or the stream exception type), else null.
    pub error_type: Option<String>,
    /// Every request header, `[name, value]`, names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    pub body_sha256: String,
    /// The directives recognised in the body, as written (`output=5`).
    pub directives: Vec<String>,
    pub status: u16,
    /// Usage as served (for a stream: what it reports, or would have reported had it not been
    /// cut short). Null for rejected requests.
    pub usage: Option<Usage>,
    /// The answer text served: the whole text, or for a stream the text of the deltas written.
    pub output_text: Option<String>,
    pub stream: bool,
    /// Streams: EventStream frames wholly handed to the connection (the exception frame too).
    pub stream_events_sent: Option<u64>,
    /// Streams: content delta frames wholly handed to the connection.
    pub content_events_sent: Option<u64>,
    /// Streams: false if the client went away or `fail-after` fired.
    pub stream_completed: Option<bool>,
    /// Streams: the client closed the connection before the stream ended.
    pub client_disconnected: Option<bool>,
    /// Streams: output tokens in the text deltas written.
    pub output_tokens_sent: Option<u64>,
    /// Unix milliseconds.
    pub received_at_ms: u64,
    /// Streams: when the first / last frame was wholly handed to the connection.
    pub first_event_at_ms: Option<u64>,
    pub last_event_at_ms: Option<u64>,
    /// Streams: when each frame was wholly handed to the connection.
    pub event_sent_at_ms: Option<Vec<u64>>,
    /// When the entry was recorded (the answer, or the stream, finished).
    pub completed_at_ms: u64,
    /// The rotating credential set (`credentials::Rotation`) the request was signed with, when
    /// it named one.
    pub credentials_generation: Option<u64>,
}

/// A ticket taken when a request arrives; recording with it after a reset is a no-op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub seq: u64,
    generation: u64,
}

#[derive(Default)]
pub struct Ledger {
    next_seq: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    generation: u64,
    entries: Vec<Entry>,
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock must not take the ledger down with it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Numbers a request as it arrives.
    pub fn begin(&self) -> Ticket {
        // Numbered under the lock, so a reset cannot fall between the number and the generation.
        let inner = self.lock();
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst) + 1;
        Ticket {
            seq,
            generation: inner.generation,
        }
    }

    /// Records a finished request, unless the ledger was reset since it arrived.
    pub fn record(&self, ticket: Ticket, mut entry: Entry) {
        entry.seq = ticket.seq;
        let mut inner = self.lock();
        if inner.generation == ticket.generation {
            inner.entries.push(entry);
        }
    }

    /// Every entry, in order of arrival.
    pub fn entries(&self) -> Vec<Entry> {
        let mut entries = self.lock().entries.clone();
        entries.sort_by_key(|e| e.seq);
        entries
    }

    /// Clears the ledger; requests still in flight will not be recorded.
    pub fn reset(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.entries.clear();
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_in_arrival_order_and_reset_drops_in_flight() {
        let ledger = Ledger::new();
        let a = ledger.begin();
        let b = ledger.begin();
        ledger.record(
            b,
            Entry {
                status: 200,
                ..Entry::default()
            },
        );
        ledger.record(
            a,
            Entry {
                status: 429,
                ..Entry::default()
            },
        );
        let seqs: Vec<u64> = ledger.entries().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 2]);
        assert_eq!(ledger.entries()[0].status, 429);

        let c = ledger.begin();
        ledger.reset();
        ledger.record(c, Entry::default());
        assert!(ledger.is_empty());
        let d = ledger.begin();
        ledger.record(d, Entry::default());
        assert_eq!(ledger.entries()[0].seq, 4);
    }

    #[test]
    fn serializes_headers_as_pairs() {
        let e = Entry {
            headers: vec![("host".into(), "h".into())],
            ..Entry::default()
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["headers"], serde_json::json!([["host", "h"]]));
        assert_eq!(v["usage"], serde_json::Value::Null);
    }

    #[test]
    fn exact_under_concurrency() {
        let ledger = std::sync::Arc::new(Ledger::new());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let ledger = ledger.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        let t = ledger.begin();
                        ledger.record(t, Entry::default());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let seqs: Vec<u64> = ledger.entries().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=800).collect::<Vec<_>>());
    }
}
