//! The admin API's adapter: reads the request body, takes 32 bytes from the host's
//! cryptographic random source (a created key's plaintext), and hands both to core's
//! `admin::handle` with the store. Changes are logged as `tollgate.admin {json}` lines on stdout,
//! next to the usage records.

use futures::StreamExt;
use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{BoxBody, Response};
use spin_sdk::wasip3::http_compat::IncomingRequestBody;
use tollgate_core::accounting::totals::IncrementTotals;
use tollgate_core::admin::{self, Request, State, MAX_BODY_BYTES};
use tollgate_core::config::Config;
use tollgate_core::error::{ErrorKind, GatewayError};
use tollgate_core::quota::counters::IncrementCounters;

use crate::kv::Kv;
use crate::{drain, log_out, now_ms, reply, STORE_LABEL};

pub async fn serve(
    config: &Config,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: IncomingRequestBody,
) -> Response<BoxBody> {
    let mut chunks = body.stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let Ok(chunk) = chunk else {
            return refuse(ErrorKind::BadRequest, "the request body could not be read");
        };
        if bytes.len() + chunk.len() > MAX_BODY_BYTES {
            drain(chunks).await;
            return refuse(
                ErrorKind::BodyTooLarge,
                "admin request bodies are at most 64 KiB",
            );
        }
        bytes.extend_from_slice(&chunk);
    }
    let kv = Kv::open(STORE_LABEL);
    let totals = IncrementTotals(&kv);
    let counters = IncrementCounters(&kv);
    let state = State {
        store: &kv,
        totals: &totals,
        counters: &counters,
    };
    let request = Request {
        method,
        path,
        headers,
        body: &bytes,
    };
    let Some(entropy) = entropy() else {
        return refuse(
            ErrorKind::Internal,
            "the host's random source gave no bytes",
        );
    };
    let outcome = admin::handle(
        config,
        &state,
        &request,
        &entropy,
        now_ms(std::time::SystemTime::now()),
    );
    if let Some(line) = outcome.audit {
        log_out(&format!("tollgate.admin {line}"));
    }
    reply(&outcome.reply)
}

fn refuse(kind: ErrorKind, message: &str) -> Response<BoxBody> {
    reply(&GatewayError::new(kind, message).to_openai_reply())
}

/// 32 bytes of `wasi:random/random` (a CSPRNG; it may answer short reads, so it is asked again,
/// a bounded number of times, until it has given them all).
fn entropy() -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    let mut filled = 0;
    for _ in 0..64 {
        if filled == out.len() {
            return Some(out);
        }
        let got = spin_sdk::wasip3::random::random::get_random_bytes((out.len() - filled) as u64);
        for b in got {
            if let Some(slot) = out.get_mut(filled) {
                *slot = b;
                filled += 1;
            }
        }
    }
    (filled == out.len()).then_some(out)
}
