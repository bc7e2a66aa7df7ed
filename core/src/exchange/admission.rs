//! Admission: what a request is, from its head alone. Its route, its API key, its model (an
//! alias resolved, an ID put in its one spelling), whether the key may use that model; then
//! either a local answer or an [`Exchange`] to forward.

use crate::accounting::pricing::{self, ServiceTier};
use crate::accounting::usage::Usage;
use crate::config::{ApiKey, Config};
use crate::dialect::bedrock::PassThrough;
use crate::dialect::Dialect;
use crate::error::{ErrorKind, GatewayError, Reply};
use crate::quota::Reservation;
use crate::request::auth;
use crate::request::headers as request_headers;
use crate::request::model_id;
use crate::request::options::HeaderOptions;
use crate::request::route::{self, Route};
use crate::response::meter::UsageMeter;
use crate::response::relay::Relay;

use super::Exchange;

/// What to do with a request once its head is known.
pub enum Admission {
    /// Buffer the body (at most [`Exchange::body_limit`] bytes), then call
    /// [`Exchange::upstream_request`].
    Forward(Box<Exchange>),
    /// Answer `GET /usage` for this key from the store, as of `now_ms`.
    Usage { key_id: String, now_ms: u64 },
    /// Answer with this (a local endpoint that needs no store) and stop.
    Reply(Reply),
    /// Answer with the error's reply and stop. `key_id` is known once the key authenticated.
    Refused {
        error: GatewayError,
        key_id: Option<String>,
        /// The shape clients of this route expect errors in.
        dialect: Dialect,
    },
}

/// With `test_hooks` on, this request header sets the quota clock (ms since the epoch), so
/// tests can cross minutes and budget periods without sleeping.
pub const TEST_CLOCK_HEADER: &str = "x-tollgate-test-now-ms";

/// The latest instant the test clock may be set to: 9999-12-31T23:59:59.999Z. Values past it
/// are clamped, so no period or window arithmetic ever sees a clock near `u64::MAX`.
pub const MAX_TEST_CLOCK_MS: u64 = 253_402_300_799_999;

/// Decides what to do with a request. `headers` names are lowercase.
pub fn admit(
    config: &Config,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    now_ms: u64,
) -> Admission {
    let authenticated = route::route(method, path).and_then(|route| {
        let key = auth::authenticate(&config.api_keys, auth::presented_key(headers)?)?;
        Ok((route, key))
    });
    let (route, key) = match authenticated {
        Ok(found) => found,
        Err(error) => {
            return Admission::Refused {
                error,
                key_id: None,
                dialect: Dialect::for_path(path),
            }
        }
    };
    match admit_key(config, route, key, headers, now_ms) {
        Ok(a) => a,
        Err(error) => Admission::Refused {
            error,
            key_id: Some(key.id.clone()),
            dialect: Dialect::for_path(path),
        },
    }
}

fn admit_key(
    config: &Config,
    route: Route<'_>,
    key: &ApiKey,
    headers: &[(&str, &str)],
    now_ms: u64,
) -> Result<Admission, GatewayError> {
    let header = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let quota_now_ms = match header(TEST_CLOCK_HEADER) {
        Some(v) if config.test_hooks => v
            .trim()
            .parse::<u64>()
            .map_or(now_ms, |t| t.min(MAX_TEST_CLOCK_MS)),
        _ => now_ms,
    };
    let (label, operation) = match route {
        Route::Usage => {
            return Ok(Admission::Usage {
                key_id: key.id.clone(),
                now_ms: quota_now_ms,
            })
        }
        Route::Models => {
            return Ok(Admission::Reply(crate::endpoints::models_reply(
                config, key,
            )))
        }
        Route::Model { label, operation } => (label, operation),
    };
    let model = model_id::decode_path_label(label).ok_or_else(|| {
        GatewayError::new(
            ErrorKind::BadRequest,
            "the model ID in the path is not valid",
        )
    })?;
    // Aliases resolve to canonical IDs (at load); a raw ID is canonicalised here, so every
    // allowlist, limit and price lookup sees one spelling per model. `model` (records, totals,
    // metrics) is the alias, or that one spelling.
    let (model, model_id) = match config.aliases.get(&model) {
        Some(target) => (model, target.clone()),
        None if model_id::is_model_id(&model) => {
            let id = model_id::canonical(&model, &config.region)
                .map_err(|why| GatewayError::new(ErrorKind::BadRequest, why))?;
            (id.clone(), id)
        }
        None => {
            return Err(GatewayError::new(
                ErrorKind::UnknownModel,
                format!("`{model}` is not a configured model alias or a Bedrock model ID"),
            ))
        }
    };
    if !key.may_use(&model_id) {
        return Err(GatewayError::new(
            ErrorKind::ModelNotAllowed,
            format!("API key `{}` is not allowed to use model `{model}`", key.id),
        ));
    }
    if let Some(encoding) = header("content-encoding")
        .map(str::trim)
        .filter(|e| !e.is_empty() && !e.eq_ignore_ascii_case("identity"))
    {
        // Tollgate reads the body (output limit, options) and Bedrock takes it uncompressed.
        return Err(GatewayError::new(
            ErrorKind::BadRequest,
            format!("request bodies must not be compressed (content-encoding: {encoding})"),
        ));
    }
    if pricing::quote(&config.region, &model_id).unpriced_images(&model_id) {
        return Err(GatewayError::new(
            ErrorKind::BadRequest,
            format!(
                "`{model_id}` is an image model this gateway has no per-image price for; \
                 it cannot be billed, so it is refused"
            ),
        ));
    }
    let strip_headers = request_headers::to_remove(headers.iter().map(|(n, _)| *n));
    let header_options = HeaderOptions::read(headers);
    let request_id = header("x-request-id").map(|v| v.chars().take(128).collect());
    let declared_body_bytes = header("content-length").and_then(|v| v.trim().parse().ok());
    Ok(Admission::Forward(Box::new(Exchange {
        request_id,
        key_id: key.id.clone(),
        model,
        model_id,
        operation,
        started_ms: now_ms,
        quota_now_ms,
        reservation: Reservation::default(),
        relay: Relay::new(Box::new(PassThrough)),
        body_limit: config.max_request_body_bytes,
        declared_body_bytes,
        strip_headers,
        header_options,
        service_tier: ServiceTier::Standard,
        unpriced: Vec::new(),
        request_bytes: 0,
        status: None,
        sent_upstream: false,
        host_answered: false,
        estimate: Usage::default(),
        priced_per_image: false,
        meter: UsageMeter::new(operation),
        finished: false,
    })))
}
