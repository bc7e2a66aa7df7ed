//! Admission: what a request is, from its head alone. Its route, its key entry (by API key or
//! by the caller's identity, `request::identity`), and — where the path names it — its model
//! (an alias resolved, an ID put in its one spelling) and whether the key may use it; then
//! either a local answer or an [`Exchange`] to forward. A translated route's model is in its
//! body: [`resolve_model`] runs once the body is in.

use std::sync::Arc;

use crate::accounting::pricing::{self, ServiceTier};
use crate::accounting::usage::Usage;
use crate::config::{ApiKey, Config};
use crate::dialect::bedrock::PassThrough;
use crate::dialect::Dialect;
use crate::error::{ErrorKind, GatewayError, Reply};
use crate::quota::Reservation;
use crate::request::encoding::ContentEncoding;
use crate::request::headers as request_headers;
use crate::request::identity::{self, Callers};
use crate::request::model_id;
use crate::request::operation::Operation;
use crate::request::options::HeaderOptions;
use crate::request::route::{self, Route};
use crate::response::meter::UsageMeter;
use crate::response::relay::Relay;
use crate::routing::targets::{self, Targets};

use super::Exchange;

/// What to do with a request once its head is known.
pub enum Admission {
    /// Buffer the body (at most [`Exchange::body_limit`] bytes), then call
    /// [`Exchange::upstream_request`].
    Forward(Box<Exchange>),
    /// Answer `GET /usage` for this key from the store, as of `now_ms`.
    Usage { key: Arc<ApiKey>, now_ms: u64 },
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

/// With `test_hooks` on, this request header injects a fault into the request's exchange, so
/// tests meet crashes and store failures the way production does ([`TestFault`]).
pub const TEST_FAULT_HEADER: &str = "x-tollgate-test-fault";

/// A fault a test injects with [`TEST_FAULT_HEADER`] (`test_hooks` only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestFault {
    /// `trap-after-admission`: once the request is admitted (its reservation taken), the host
    /// stops dead — the Envoy filter traps its VM, the Spin component its instance — and
    /// nothing settles the exchange.
    TrapAfterAdmission,
    /// `store-error-on-settle`: the first attempt to settle the exchange's reservation fails as
    /// a store error would.
    StoreErrorOnSettle,
}

impl TestFault {
    fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            "trap-after-admission" => Some(Self::TrapAfterAdmission),
            "store-error-on-settle" => Some(Self::StoreErrorOnSettle),
            _ => None,
        }
    }
}

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
    admit_with(config, method, path, headers, Callers::default(), now_ms)
}

/// [`admit`], knowing more about the caller than its headers say: what the host verified (the
/// peer certificate, a JWT) and where runtime keys are kept.
pub fn admit_with(
    config: &Config,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    callers: Callers<'_>,
    now_ms: u64,
) -> Admission {
    let dialect = Dialect::of_request(path, headers);
    let authenticated = route::route(method, path).and_then(|route| match route {
        // A connectivity probe needs no key: it learns nothing but that the gateway is up.
        Route::Probe => Ok((route, None)),
        _ => Ok((
            route,
            Some(identity::authenticate(config, headers, callers)?),
        )),
    });
    let (route, key) = match authenticated {
        Ok((_, None)) => return Admission::Reply(crate::endpoints::probe_reply()),
        Ok((route, Some(key))) => (route, key),
        Err(error) => {
            return Admission::Refused {
                error,
                key_id: None,
                dialect,
            }
        }
    };
    let key_id = key.id.clone();
    match admit_key(config, route, key, headers, dialect, now_ms) {
        Ok(a) => a,
        Err(error) => Admission::Refused {
            error,
            key_id: Some(key_id),
            dialect,
        },
    }
}

fn admit_key(
    config: &Config,
    route: Route<'_>,
    key: Arc<ApiKey>,
    headers: &[(&str, &str)],
    dialect: Dialect,
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
    let test_fault = header(TEST_FAULT_HEADER)
        .filter(|_| config.test_hooks)
        .and_then(TestFault::parse);
    let (resolved, operation, api) = match route {
        Route::Usage => {
            return Ok(Admission::Usage {
                key,
                now_ms: quota_now_ms,
            })
        }
        Route::Models => {
            return Ok(Admission::Reply(crate::endpoints::models_reply(
                config, &key,
            )))
        }
        Route::InferenceProfiles => {
            return Ok(Admission::Reply(
                crate::endpoints::inference_profiles_reply(config, &key),
            ))
        }
        Route::Probe => return Ok(Admission::Reply(crate::endpoints::probe_reply())),
        Route::Model { label, operation } => {
            let model = model_id::decode_path_label(label).ok_or_else(|| {
                GatewayError::new(
                    ErrorKind::BadRequest,
                    "the model ID in the path is not valid",
                )
            })?;
            (Some(resolve_model(config, &key, &model)?), operation, None)
        }
        // The model is in the body: resolved once it is read.
        Route::Translated(api) => (None, Operation::Invoke, Some(api)),
    };
    let content_encoding = ContentEncoding::of_header(header("content-encoding"))?;
    let Resolved {
        model,
        model_id,
        scope,
        targets: several,
    } = resolved.unwrap_or_default();
    let kept_headers = api.map_or_else(Vec::new, |api| {
        headers
            .iter()
            .filter(|(n, _)| api.reads_headers().contains(n))
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    });
    let strip_headers = request_headers::to_remove(headers.iter().map(|(n, _)| *n));
    let header_options = HeaderOptions::read(headers);
    let request_id = header("x-request-id").map(|v| v.chars().take(128).collect());
    let declared_body_bytes = header("content-length").and_then(|v| v.trim().parse().ok());
    Ok(Admission::Forward(Box::new(Exchange {
        request_id,
        key_id: key.id.clone(),
        key,
        model,
        model_id,
        scope,
        alias_targets: several,
        route: None,
        operation,
        dialect,
        api,
        kept_headers,
        content_encoding,
        dropped: Vec::new(),
        started_ms: now_ms,
        quota_now_ms,
        reservation: Reservation::default(),
        relay: Relay::new(Box::new(PassThrough)),
        cut_off_allowance: None,
        guardrail: None,
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
        test_fault,
        notes: Default::default(),
        unsettled: None,
        lapse_reported: false,
    })))
}

/// A model as a request names it, resolved.
#[derive(Default)]
pub(crate) struct Resolved {
    /// As records name it: the alias, or the model ID in its one spelling.
    pub(crate) model: String,
    /// The Bedrock model ID (for an alias of several targets, its first in list order).
    pub(crate) model_id: String,
    /// What allowlists and per-model limits know it by: the model ID, or an alias of several
    /// targets (`routing::targets::key_of`).
    pub(crate) scope: String,
    /// The targets of an alias of several; planned once the body is in.
    pub(crate) targets: Option<Targets>,
}

/// The model a request names (`model`, decoded): aliases resolve to canonical IDs (at load); a
/// raw ID is canonicalised here, so every allowlist, limit and price lookup sees one spelling
/// per model. Refused when it is neither, when `key` may not use it, or when it (or any target
/// of its alias) is an image model without a per-image price.
pub(crate) fn resolve_model(
    config: &Config,
    key: &ApiKey,
    model: &str,
) -> Result<Resolved, GatewayError> {
    let several = config.targets.get(model);
    let (model, model_id) = match config.aliases.get(model) {
        Some(target) => (model.to_string(), target.clone()),
        None if several.is_some() => {
            let first = several
                .and_then(|t| t.targets().first())
                .map(|t| t.model_id.clone())
                .unwrap_or_default();
            (model.to_string(), first)
        }
        None if model_id::is_model_id(model) => {
            let id = model_id::canonical(model, &config.region)
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
    let scope = match several {
        Some(_) => targets::key_of(&model),
        None => model_id.clone(),
    };
    if !key.may_use(&scope) {
        return Err(GatewayError::new(
            ErrorKind::ModelNotAllowed,
            format!("API key `{}` is not allowed to use model `{model}`", key.id),
        ));
    }
    let every_target: Vec<&str> = match several {
        Some(t) => t.targets().iter().map(|t| t.model_id.as_str()).collect(),
        None => vec![model_id.as_str()],
    };
    if let Some(unpriced) = every_target
        .iter()
        .find(|id| pricing::quote(&config.region, id).unpriced_images(id))
    {
        return Err(GatewayError::new(
            ErrorKind::BadRequest,
            format!(
                "`{unpriced}` is an image model this gateway has no per-image price for; \
                 it cannot be billed, so it is refused"
            ),
        ));
    }
    Ok(Resolved {
        model,
        model_id,
        scope,
        targets: several.cloned(),
    })
}
