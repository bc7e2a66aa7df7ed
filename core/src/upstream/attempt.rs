//! One attempt of a request at one target of its plan: the prepared body (the client's, with
//! the key's guardrail) clamped to that target's output cap, that target's model ID in the
//! path, and a signature over both. The exchange builds its first attempt this way; the Spin
//! component each fallback; Envoy's upstream filter every attempt after the first.

use std::time::SystemTime;

use crate::config::Config;
use crate::error::{ErrorKind, GatewayError};
use crate::request::body::{self as request_body, RequestBody};
use crate::request::model_id;
use crate::routing::plan::Plan;
use crate::upstream::credentials::Signer;
use crate::upstream::request::UpstreamRequest;
use crate::upstream::signing::SigningKeyCache;

/// One attempt's request, and the output limit it now carries.
#[derive(Debug)]
pub struct Attempt {
    pub request: UpstreamRequest,
    /// The most output the attempt allows (`None`: the request names no limit).
    pub max_output_tokens: Option<u64>,
}

/// The request for `plan`'s target `index`, from the prepared `body`. `headers` are set on it
/// besides the signature (a key's guardrail on invoke). `None` if the plan has no such target.
#[allow(clippy::too_many_arguments)]
pub fn build(
    config: &Config,
    plan: &Plan,
    index: usize,
    body: &[u8],
    headers: &[(String, String)],
    signer: &Signer<'_>,
    signing_keys: &mut SigningKeyCache,
    now: SystemTime,
) -> Result<Attempt, GatewayError> {
    let read = request_body::scan(body, plan.operation)?;
    build_scanned(
        config,
        plan,
        index,
        body,
        &read,
        headers,
        signer,
        signing_keys,
        now,
    )
}

/// [`build`] with the body already read (`read`, scanned from `body`).
#[allow(clippy::too_many_arguments)]
pub fn build_scanned(
    config: &Config,
    plan: &Plan,
    index: usize,
    body: &[u8],
    read: &RequestBody,
    headers: &[(String, String)],
    signer: &Signer<'_>,
    signing_keys: &mut SigningKeyCache,
    now: SystemTime,
) -> Result<Attempt, GatewayError> {
    let target = plan.targets.get(index).ok_or_else(|| {
        GatewayError::new(
            ErrorKind::Internal,
            format!("attempt {} has no target in the request's plan", index + 1),
        )
    })?;
    let limit = read.output_limit(body, &target.model_id, target.max_output_tokens);
    let sent = limit.rewritten.as_deref().unwrap_or(body);
    let path = format!(
        "/model/{}/{}",
        model_id::encode_path_label(&target.model_id),
        plan.operation.path_segment()
    );
    let mut set_headers = signer.headers(
        signing_keys,
        &config.region,
        &config.upstream_host,
        &path,
        sent,
        now,
    )?;
    set_headers.extend(headers.iter().cloned());
    Ok(Attempt {
        request: UpstreamRequest {
            path,
            authority: config.upstream_host.clone(),
            remove_headers: Vec::new(),
            set_headers,
            body: limit.rewritten,
        },
        max_output_tokens: limit.max_output_tokens,
    })
}
