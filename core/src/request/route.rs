//! Which of Tollgate's routes a request is for.

use crate::error::{ErrorKind, GatewayError};
use crate::request::operation::Operation;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `POST /model/{modelId}/{operation}`; the label is still percent-encoded.
    Model {
        label: &'a str,
        operation: Operation,
    },
    /// `GET /usage`: the caller's own totals.
    Usage,
    /// `GET /v1/models`: what the caller may use, in the OpenAI list shape.
    Models,
}

/// Routes `method` and `path` (query string included, as hosts give it). Bedrock's runtime
/// operations take no query parameters, so any query is dropped.
pub fn route<'a>(method: &str, path: &'a str) -> Result<Route<'a>, GatewayError> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let not_found = || {
        GatewayError::new(
            ErrorKind::NotFound,
            format!("no route for {method} {path}: Tollgate serves POST /model/{{modelId}}/converse, /converse-stream, /invoke, /invoke-with-response-stream, GET /usage and GET /v1/models"),
        )
    };
    let local = match path {
        "/usage" => Some(Route::Usage),
        "/v1/models" => Some(Route::Models),
        _ => None,
    };
    if let Some(local) = local {
        return if method == "GET" {
            Ok(local)
        } else {
            Err(not_found())
        };
    }
    let Some(rest) = path.strip_prefix("/model/") else {
        return Err(not_found());
    };
    let Some((label, op)) = rest.rsplit_once('/') else {
        return Err(not_found());
    };
    let Some(operation) = Operation::from_path_segment(op) else {
        return Err(not_found());
    };
    if label.contains('/') {
        return Err(GatewayError::new(
            ErrorKind::BadRequest,
            "the model ID in the path must be percent-encoded (an ARN's `/` as %2F)",
        ));
    }
    if label.is_empty() || method != "POST" {
        return Err(not_found());
    }
    Ok(Route::Model { label, operation })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_routes() {
        assert_eq!(
            route("POST", "/model/claude-fast/converse-stream").unwrap(),
            Route::Model {
                label: "claude-fast",
                operation: Operation::ConverseStream
            }
        );
        assert_eq!(
            route(
                "POST",
                "/model/us.anthropic.claude-haiku-4-5-20251001-v1%3A0/invoke?x=1"
            )
            .unwrap(),
            Route::Model {
                label: "us.anthropic.claude-haiku-4-5-20251001-v1%3A0",
                operation: Operation::Invoke
            }
        );
        assert_eq!(route("GET", "/usage").unwrap(), Route::Usage);
        assert_eq!(route("GET", "/v1/models?x=1").unwrap(), Route::Models);
        assert_eq!(
            route("POST", "/v1/models").unwrap_err().kind,
            ErrorKind::NotFound
        );
    }

    #[test]
    fn everything_else_is_404() {
        for (m, p) in [
            ("GET", "/model/claude-fast/converse"),
            ("POST", "/model/claude-fast/count-tokens"),
            ("POST", "/model//converse"),
            ("POST", "/"),
            ("POST", "/usage"),
            ("POST", "/v2/chat"),
            ("POST", "/model/converse"),
        ] {
            assert_eq!(
                route(m, p).unwrap_err().kind,
                ErrorKind::NotFound,
                "{m} {p}"
            );
        }
        assert_eq!(
            route(
                "POST",
                "/model/arn:aws:bedrock:us-east-1:1:inference-profile/x.y/converse"
            )
            .unwrap_err()
            .kind,
            ErrorKind::BadRequest
        );
    }
}
