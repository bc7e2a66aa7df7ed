//! One request through the gateway, from request head to usage record, as a sans-IO state
//! machine. Hosts feed it headers, body bytes and time, and do what it says.

use std::time::SystemTime;

use crate::auth;
use crate::config::Config;
use crate::error::{ErrorKind, GatewayError, Reply};
use crate::meter::UsageMeter;
use crate::model_id;
use crate::operation::Operation;
use crate::record::{self, UsageRecord};
use crate::route::{self, Route};
use crate::signing;

/// What to do with a request once its head is known.
pub enum Admission {
    /// Buffer the body (at most [`Exchange::body_limit`] bytes), then call
    /// [`Exchange::upstream_request`].
    Forward(Box<Exchange>),
    /// Answer `GET /usage` for this key from the store.
    Usage { key_id: String },
    /// Answer with this and stop.
    Reply(Reply),
}

/// Request headers the client must never send upstream: its own credentials, and any AWS
/// signing headers, which Tollgate replaces with its own.
pub fn is_client_credential_header(name: &str) -> bool {
    name == "authorization" || name == "x-api-key" || name.starts_with("x-amz-")
}

/// Decides what to do with a request. `headers` names are lowercase.
pub fn admit(config: &Config, method: &str, path: &str, headers: &[(&str, &str)], now_ms: u64) -> Admission {
    match admit_inner(config, method, path, headers, now_ms) {
        Ok(a) => a,
        Err(e) => Admission::Reply(e.to_bedrock_reply()),
    }
}

fn admit_inner(
    config: &Config,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    now_ms: u64,
) -> Result<Admission, GatewayError> {
    let route = route::route(method, path)?;
    let key = auth::authenticate(&config.api_keys, auth::presented_key(headers)?)?;
    let (label, operation) = match route {
        Route::Usage => return Ok(Admission::Usage { key_id: key.id.clone() }),
        Route::Model { label, operation } => (label, operation),
    };
    let model = model_id::decode_path_label(label)
        .ok_or_else(|| GatewayError::new(ErrorKind::BadRequest, "the model ID in the path is not valid"))?;
    let model_id = match config.aliases.get(&model) {
        Some(target) => target.clone(),
        None if model_id::is_model_id(&model) => model.clone(),
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
    let strip_headers = headers
        .iter()
        .filter(|(n, _)| is_client_credential_header(n))
        .map(|(n, _)| n.to_string())
        .collect();
    let request_id = headers
        .iter()
        .find(|(n, _)| *n == "x-request-id")
        .map(|(_, v)| v.chars().take(128).collect());
    Ok(Admission::Forward(Box::new(Exchange {
        request_id,
        key_id: key.id.clone(),
        model,
        model_id,
        operation,
        started_ms: now_ms,
        body_limit: config.max_request_body_bytes,
        strip_headers,
        request_bytes: 0,
        status: None,
        sent_upstream: false,
        meter: UsageMeter::new(operation),
        finished: false,
    })))
}

/// The changes that turn the client's request into the upstream one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRequest {
    /// New `:path`: the real model ID, percent-encoded once.
    pub path: String,
    /// New `:authority` / host.
    pub authority: String,
    /// Client headers to remove (lowercase names).
    pub remove_headers: Vec<String>,
    /// Headers to set (signature, date, token).
    pub set_headers: Vec<(String, String)>,
}

pub struct Exchange {
    /// The host's request ID (Envoy's `x-request-id`), to join records with access logs.
    pub request_id: Option<String>,
    pub key_id: String,
    /// The model as the client named it.
    pub model: String,
    pub model_id: String,
    pub operation: Operation,
    started_ms: u64,
    body_limit: u64,
    strip_headers: Vec<String>,
    request_bytes: u64,
    status: Option<u16>,
    sent_upstream: bool,
    meter: UsageMeter,
    finished: bool,
}

impl Exchange {
    pub fn body_limit(&self) -> u64 {
        self.body_limit
    }

    /// Checks a (partial) body size against the limit; hosts call it as bytes arrive.
    pub fn check_body_size(&mut self, size: u64) -> Result<(), GatewayError> {
        if size > self.body_limit {
            self.status = Some(ErrorKind::BodyTooLarge.status());
            return Err(GatewayError::new(
                ErrorKind::BodyTooLarge,
                format!("the request body is larger than this gateway's limit of {} bytes", self.body_limit),
            ));
        }
        Ok(())
    }

    /// The upstream request for the complete `body`, signed at `now`.
    pub fn upstream_request(
        &mut self,
        config: &Config,
        body: &[u8],
        now: SystemTime,
    ) -> Result<UpstreamRequest, GatewayError> {
        self.request_bytes = body.len() as u64;
        self.check_body_size(self.request_bytes)?;
        let path = format!(
            "/model/{}/{}",
            model_id::encode_path_label(&self.model_id),
            self.operation.path_segment()
        );
        let set_headers = signing::upstream_auth_headers(
            &config.upstream_auth,
            &config.region,
            &config.upstream_host,
            &path,
            body,
            now,
        )
        .inspect_err(|_| self.status = Some(ErrorKind::Internal.status()))?;
        self.sent_upstream = true;
        Ok(UpstreamRequest {
            path,
            authority: config.upstream_host.clone(),
            remove_headers: std::mem::take(&mut self.strip_headers),
            set_headers,
        })
    }

    /// The gateway answered this request itself (an error after admission).
    pub fn replied_locally(&mut self, status: u16) {
        self.status.get_or_insert(status);
    }

    pub fn on_response_headers<'a>(&mut self, status: u16, headers: impl IntoIterator<Item = (&'a str, &'a str)>) {
        self.status.get_or_insert(status);
        self.meter.on_response_headers(headers);
    }

    pub fn on_response_body(&mut self, chunk: &[u8]) {
        self.meter.on_body(chunk);
    }

    /// The usage record, once, when the exchange is over (completed, failed, or cancelled).
    /// `None` if it was already produced.
    pub fn finish(&mut self, config: &Config, now_ms: u64) -> Option<UsageRecord> {
        if std::mem::replace(&mut self.finished, true) {
            return None;
        }
        let reading = self.meter.finish();
        // No status: the upstream never answered (reset, timeout, client gone first).
        let status = self.status.unwrap_or(0);
        Some(record::make(record::Facts {
            request_id: self.request_id.as_deref(),
            key_id: &self.key_id,
            model: &self.model,
            model_id: &self.model_id,
            region: &config.region,
            operation: self.operation,
            status,
            sent_upstream: self.sent_upstream,
            reading: &reading,
            request_bytes: self.request_bytes,
            latency_ms: now_ms.saturating_sub(self.started_ms),
        }))
    }
}
