//! The Bedrock runtime operations Tollgate serves.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    Converse,
    ConverseStream,
    Invoke,
    InvokeWithResponseStream,
}

impl Operation {
    /// The last path segment of `/model/{modelId}/{segment}`.
    pub fn from_path_segment(segment: &str) -> Option<Self> {
        Some(match segment {
            "converse" => Self::Converse,
            "converse-stream" => Self::ConverseStream,
            "invoke" => Self::Invoke,
            "invoke-with-response-stream" => Self::InvokeWithResponseStream,
            _ => return None,
        })
    }

    pub fn path_segment(self) -> &'static str {
        match self {
            Self::Converse => "converse",
            Self::ConverseStream => "converse-stream",
            Self::Invoke => "invoke",
            Self::InvokeWithResponseStream => "invoke-with-response-stream",
        }
    }

    /// Responses of streaming operations are AWS EventStream, not JSON.
    pub fn is_stream(self) -> bool {
        matches!(self, Self::ConverseStream | Self::InvokeWithResponseStream)
    }
}
