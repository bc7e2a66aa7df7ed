//! `POST /v1/messages/count_tokens`: Bedrock's CountTokens for Claude models (free of charge;
//! the request is the InvokeModel body Messages would send, base64 in
//! `{"input": {"invokeModel": {"body": …}}}`), answered `{"input_tokens": N}`. Other models, and
//! Claude models Bedrock cannot count (it refuses with a validation error), get an estimate
//! made here — four bytes a token, as the gateway estimates input everywhere — marked
//! `"estimated": true` and `x-tollgate-token-count: estimated`.

use std::borrow::Cow;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::{invoke, MessagesRequest, Target, Translation, ENVELOPE};
use crate::accounting::record::estimate_tokens;
use crate::dialect::refusal::{error_type, Class, Refusal};
use crate::dialect::{BedrockRequest, ResponseHead, Translator};
use crate::error::{GatewayError, Reply};
use crate::request::model_family;
use crate::request::operation::Operation;

/// The header that marks a count the gateway estimated.
pub const ESTIMATED_HEADER: &str = "x-tollgate-token-count";

#[derive(Serialize)]
struct Count {
    input_tokens: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    estimated: bool,
}

fn count_body(input_tokens: u64, estimated: bool) -> Vec<u8> {
    serde_json::to_vec(&Count {
        input_tokens,
        estimated,
    })
    .unwrap_or_default()
}

fn estimate(req: &MessagesRequest<'_>) -> u64 {
    estimate_tokens(req.body_len as u64).max(1)
}

pub(super) fn translate(
    req: &MessagesRequest<'_>,
    target: &Target<'_>,
) -> Result<Translation, GatewayError> {
    if !model_family::is_anthropic(target.model_id) {
        return Ok(Translation::Reply {
            reply: Reply {
                status: 200,
                headers: vec![
                    ("content-type", "application/json".into()),
                    (ESTIMATED_HEADER, "estimated".into()),
                ],
                body: count_body(estimate(req), true),
            },
            operation: Operation::CountTokens,
        });
    }
    let mut dropped = Vec::new();
    // A complete InvokeModel body: CountTokens validates it as InvokeModel would.
    let invoke_body = invoke::body(req, target, Some(1), &mut dropped)?;
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Input {
        invoke_model: Body,
    }
    #[derive(Serialize)]
    struct Body {
        body: String,
    }
    #[derive(Serialize)]
    struct Request {
        input: Input,
    }
    let body = serde_json::to_vec(&Request {
        input: Input {
            invoke_model: Body {
                body: base64::engine::general_purpose::STANDARD.encode(&invoke_body),
            },
        },
    })
    .unwrap_or_default();
    let response = CountResponse::new(estimate(req));
    Ok(BedrockRequest::json(
        Operation::CountTokens,
        body,
        Box::new(response),
        dropped,
    ))
}

/// Largest CountTokens answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// Bedrock's count in Anthropic's shape; the estimate where Bedrock cannot count the model.
pub(crate) struct CountResponse {
    estimate: u64,
    state: State,
}

enum State {
    Waiting,
    Count(Vec<u8>),
    Estimate,
    Refused(Refusal),
}

impl CountResponse {
    pub(crate) fn new(estimate: u64) -> Self {
        Self {
            estimate,
            state: State::Waiting,
        }
    }
}

impl Translator for CountResponse {
    fn head(&mut self, status: u16, headers: &[(&str, &str)]) -> ResponseHead {
        let kind = Class::of(error_type(headers));
        let json = ("content-type", "application/json".to_string());
        if (200..300).contains(&status) {
            self.state = State::Count(Vec::new());
            ResponseHead {
                status: None,
                set: vec![json],
                remove: vec!["content-length"],
            }
        } else if status == 400 && kind == Class::Validation {
            // "The provided model doesn't support counting tokens": estimate instead.
            self.state = State::Estimate;
            ResponseHead {
                status: Some(200),
                set: vec![json, (ESTIMATED_HEADER, "estimated".into())],
                remove: vec!["content-length", "x-amzn-errortype"],
            }
        } else {
            let (refusal, head) = Refusal::new(&ENVELOPE, status, headers);
            self.state = State::Refused(refusal);
            head
        }
    }

    fn body<'a>(&mut self, bedrock: &'a [u8]) -> Cow<'a, [u8]> {
        match &mut self.state {
            State::Waiting => return Cow::Borrowed(bedrock),
            State::Count(buf) => {
                let room = MAX_ANSWER.saturating_sub(buf.len());
                buf.extend_from_slice(bedrock.get(..room.min(bedrock.len())).unwrap_or_default());
            }
            State::Estimate => {}
            State::Refused(r) => r.push(bedrock),
        }
        Cow::Owned(Vec::new())
    }

    fn end(&mut self) -> Vec<u8> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Counted {
            input_tokens: u64,
        }
        match &mut self.state {
            State::Waiting => Vec::new(),
            State::Count(buf) => match serde_json::from_slice::<Counted>(buf) {
                Ok(c) => count_body(c.input_tokens, false),
                Err(_) => count_body(self.estimate, true),
            },
            State::Estimate => count_body(self.estimate, true),
            State::Refused(r) => r.finish(),
        }
    }

    fn cut_off(&mut self, _message: &str) -> Vec<u8> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (ResponseHead, serde_json::Value) {
        let mut t = CountResponse::new(42);
        let head = t.head(status, headers);
        let mut out = t.body(body).into_owned();
        out.extend_from_slice(&t.end());
        (head, serde_json::from_slice(&out).unwrap())
    }

    #[test]
    fn bedrocks_count_an_estimate_or_an_error() {
        let (head, v) = run(200, &[], br#"{"inputTokens":17}"#);
        assert_eq!(head.status, None);
        assert_eq!(v, serde_json::json!({"input_tokens": 17}));
        let (head, v) = run(
            400,
            &[("x-amzn-errortype", "ValidationException:http://x")],
            br#"{"message":"The provided model doesn't support counting tokens."}"#,
        );
        assert_eq!(head.status, Some(200));
        assert!(head.set.contains(&(ESTIMATED_HEADER, "estimated".into())));
        assert_eq!(
            v,
            serde_json::json!({"input_tokens": 42, "estimated": true})
        );
        let (head, v) = run(
            429,
            &[("x-amzn-errortype", "ThrottlingException")],
            br#"{"message":"slow"}"#,
        );
        assert_eq!(head.status, None);
        assert_eq!(v["error"]["type"], "rate_limit_error");
    }
}
