//! The credentials endpoints over HTTP (see [`crate::credentials`]), and their controls:
//!
//! * `PUT /latest/api/token` (with `x-aws-ec2-metadata-token-ttl-seconds`), then
//!   `GET /latest/meta-data/iam/security-credentials/` and `…/<role>` with
//!   `x-aws-ec2-metadata-token`: IMDSv2 only (a request without a valid token gets 401);
//! * `GET /v1/credentials` (EKS Pod Identity's path), with `Authorization: <token>` when the
//!   emulator was given one, and `GET /v2/credentials/<id>` (ECS's, which takes none);
//! * `GET /_emulator/credentials`: the newest set's number, how many requests each path got, and
//!   the last sets issued (secrets included: tests look for them where they must not be);
//!   `POST /_emulator/credentials/down` and `…/up`: an outage (every credentials path answers
//!   503) and its end.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use super::{full, json_response, ResponseBody};
use crate::credentials::{Rotation, ROLE};
use crate::ledger::now_ms;

const IMDS_CREDENTIALS: &str = "/latest/meta-data/iam/security-credentials/";

#[derive(Default)]
pub struct Endpoints {
    down: AtomicBool,
    imds_tokens: Mutex<HashSet<String>>,
    token_requests: AtomicU64,
    role_requests: AtomicU64,
    imds_credentials: AtomicU64,
    container_credentials: AtomicU64,
    refused: AtomicU64,
}

pub fn is_credentials_path(path: &str) -> bool {
    path == "/latest/api/token"
        || path.starts_with(IMDS_CREDENTIALS)
        || path == "/v1/credentials"
        || path.starts_with("/v2/credentials/")
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ResponseBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r
}

pub fn answer(
    endpoints: &Endpoints,
    rotation: &Rotation,
    container_token: Option<&str>,
    req: &Request<Incoming>,
) -> Response<ResponseBody> {
    if endpoints.down.load(Ordering::SeqCst) {
        endpoints.refused.fetch_add(1, Ordering::SeqCst);
        return text(StatusCode::SERVICE_UNAVAILABLE, "emulated outage");
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let path = req.uri().path();
    let method = req.method().as_str();
    if path == "/latest/api/token" {
        endpoints.token_requests.fetch_add(1, Ordering::SeqCst);
        let ttl_ok = header("x-aws-ec2-metadata-token-ttl-seconds")
            .and_then(|v| v.parse::<u32>().ok())
            .is_some_and(|ttl| (1..=21_600).contains(&ttl));
        if method != "PUT" {
            return text(StatusCode::METHOD_NOT_ALLOWED, "");
        }
        if !ttl_ok {
            return text(StatusCode::BAD_REQUEST, "");
        }
        let n = endpoints.token_requests.load(Ordering::SeqCst);
        let token = format!("emu-imds-{n}-{}", now_ms());
        if let Ok(mut tokens) = endpoints.imds_tokens.lock() {
            tokens.insert(token.clone());
        }
        return text(StatusCode::OK, token);
    }
    if let Some(role) = path.strip_prefix(IMDS_CREDENTIALS) {
        let valid = header("x-aws-ec2-metadata-token").is_some_and(|t| {
            endpoints
                .imds_tokens
                .lock()
                .is_ok_and(|tokens| tokens.contains(&t))
        });
        if !valid {
            return text(StatusCode::UNAUTHORIZED, "");
        }
        if role.is_empty() {
            endpoints.role_requests.fetch_add(1, Ordering::SeqCst);
            return text(StatusCode::OK, ROLE);
        }
        if role != ROLE {
            return text(StatusCode::NOT_FOUND, "");
        }
        endpoints.imds_credentials.fetch_add(1, Ordering::SeqCst);
        return json_text(rotation.document(now_ms(), true));
    }
    if path == "/v1/credentials"
        && container_token.is_some_and(|t| header("authorization").as_deref() != Some(t))
    {
        return text(StatusCode::UNAUTHORIZED, "");
    }
    endpoints
        .container_credentials
        .fetch_add(1, Ordering::SeqCst);
    json_text(rotation.document(now_ms(), false))
}

fn json_text(body: String) -> Response<ResponseBody> {
    let mut r = text(StatusCode::OK, body);
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

pub fn control(
    endpoints: &Endpoints,
    rotation: Option<&Rotation>,
    method: &str,
    what: &str,
) -> Response<ResponseBody> {
    match (method, what) {
        ("POST", "/down") => endpoints.down.store(true, Ordering::SeqCst),
        ("POST", "/up") => endpoints.down.store(false, Ordering::SeqCst),
        ("GET", "") => {}
        _ => {
            return json_response(
                StatusCode::NOT_FOUND,
                &json!({ "message": "unknown emulator control endpoint" }),
            )
        }
    }
    let load = |c: &AtomicU64| c.load(Ordering::SeqCst);
    json_response(
        StatusCode::OK,
        &json!({
            "rotating": rotation.is_some(),
            "generation": rotation.map(|r| r.generation_at(now_ms())),
            "every_ms": rotation.map(|r| r.every_ms),
            "lifetime_ms": rotation.map(|r| r.lifetime_ms),
            "down": endpoints.down.load(Ordering::SeqCst),
            "token_requests": load(&endpoints.token_requests),
            "role_requests": load(&endpoints.role_requests),
            "imds_credentials": load(&endpoints.imds_credentials),
            "container_credentials": load(&endpoints.container_credentials),
            "refused": load(&endpoints.refused),
            "issued": rotation.map(|r| {
                let newest = r.generation_at(now_ms());
                (newest.saturating_sub(99)..=newest)
                    .map(|n| {
                        let set = r.set(n);
                        json!({
                            "generation": n,
                            "access_key_id": set.credentials.access_key_id,
                            "secret_access_key": set.credentials.secret_access_key,
                            "session_token": set.credentials.session_token,
                            "expires_ms": set.expires_ms,
                        })
                    })
                    .collect::<Vec<_>>()
            }),
        }),
    )
}
