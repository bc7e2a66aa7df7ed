//! Anthropic beta flags on Bedrock. The client sends them in `anthropic-beta` (Claude Code
//! sends a dozen); Bedrock takes them in the body's `anthropic_beta` list and refuses the whole
//! request for a flag it does not know ("invalid beta flag") or for a body field whose beta is
//! missing ("Extra inputs are not permitted"). So only the flags of an allowlist go on, and
//! each body field that needs a flag goes with it or not at all.

/// The flags Bedrock documents for Claude on InvokeModel: the `anthropic_beta` parameter of
/// "Anthropic Claude Messages API: request and response"
/// (<https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-anthropic-claude-messages-request-response.html>)
/// and the pages it links for tool use, extended thinking, the 1M context window, context
/// management, effort and compaction. The configuration's `anthropic_betas` replaces it.
pub const BEDROCK_BETAS: &[&str] = &[
    "computer-use-2024-10-22",
    "computer-use-2025-01-24",
    "computer-use-2025-11-24",
    "token-efficient-tools-2025-02-19",
    "interleaved-thinking-2025-05-14",
    "output-128k-2025-02-19",
    "dev-full-thinking-2025-05-14",
    "context-1m-2025-08-07",
    "context-management-2025-06-27",
    "effort-2025-11-24",
    "tool-search-tool-2025-10-19",
    "tool-examples-2025-10-29",
    "compact-2026-01-12",
];

/// Body fields Bedrock accepts only with a beta flag: (field, flag).
pub const BETA_FIELDS: &[(&str, &str)] = &[
    ("context_management", "context-management-2025-06-27"),
    ("output_config", "effort-2025-11-24"),
];

/// The flags to send: those of `header` (comma-separated) and of the body's own
/// `anthropic_beta` list that `allowed` names, each once, in order. The others are added to
/// `dropped` as `beta:<flag>`.
pub(super) fn forwarded(
    header: Option<&str>,
    body_list: &[String],
    allowed: &[String],
    dropped: &mut Vec<String>,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let asked = header
        .into_iter()
        .flat_map(|h| h.split(','))
        .map(str::trim)
        .chain(body_list.iter().map(|s| s.trim()))
        .filter(|f| !f.is_empty());
    for flag in asked {
        if allowed.iter().any(|a| a == flag) {
            if !out.iter().any(|f| f == flag) {
                out.push(flag.to_string());
            }
        } else {
            let note = format!("beta:{flag}");
            if !dropped.contains(&note) {
                dropped.push(note);
            }
        }
    }
    out
}

/// The flag body field `name` needs, if it needs one.
pub(super) fn flag_of_field(name: &str) -> Option<&'static str> {
    BETA_FIELDS
        .iter()
        .find(|(field, _)| *field == name)
        .map(|(_, flag)| *flag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Vec<String> {
        BEDROCK_BETAS.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_allowed_flags_go_on_each_once() {
        let mut dropped = Vec::new();
        // What Claude Code sends (observed), plus a body list.
        let header = "claude-code-20250219,interleaved-thinking-2025-05-14, \
                      context-management-2025-06-27,mid-conversation-tool-changes-2026-07-01,\
                      effort-2025-11-24,claude-code-20250219";
        let out = forwarded(
            Some(header),
            &[
                "effort-2025-11-24".into(),
                "prompt-caching-2024-07-31".into(),
            ],
            &defaults(),
            &mut dropped,
        );
        assert_eq!(
            out,
            [
                "interleaved-thinking-2025-05-14",
                "context-management-2025-06-27",
                "effort-2025-11-24"
            ]
        );
        assert_eq!(
            dropped,
            [
                "beta:claude-code-20250219",
                "beta:mid-conversation-tool-changes-2026-07-01",
                "beta:prompt-caching-2024-07-31"
            ]
        );
        assert!(forwarded(None, &[], &defaults(), &mut Vec::new()).is_empty());
        assert!(forwarded(Some(" , "), &[], &defaults(), &mut Vec::new()).is_empty());
    }

    #[test]
    fn paired_fields() {
        assert_eq!(
            flag_of_field("context_management"),
            Some("context-management-2025-06-27")
        );
        assert_eq!(flag_of_field("output_config"), Some("effort-2025-11-24"));
        assert_eq!(flag_of_field("messages"), None);
        for (_, flag) in BETA_FIELDS {
            assert!(BEDROCK_BETAS.contains(flag), "{flag}");
        }
    }
}
