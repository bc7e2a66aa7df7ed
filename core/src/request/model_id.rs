//! Bedrock model identifiers: model IDs, inference-profile IDs and ARNs, and how they travel
//! in a request path.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Longest identifier accepted; Bedrock's own limit for `modelId` is 2048.
pub const MAX_LEN: usize = 2048;

/// Everything but RFC 3986 unreserved characters: what the AWS SDKs encode in a path label,
/// so `:` becomes `%3A` and an ARN's `/` becomes `%2F`.
const PATH_LABEL: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Does `s` look like a Bedrock model ID (`anthropic.claude-…-v1:0`, `us.amazon.nova-lite-v1:0`)
/// or a Bedrock ARN (`arn:aws:bedrock:…`)? Aliases are checked before this, so it only decides
/// whether an unknown name is passed through or rejected as an unknown alias.
pub fn is_model_id(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_LEN {
        return false;
    }
    // Case-insensitively, as `canonical` lowercases.
    if let Some(rest) = s
        .get(..4)
        .filter(|p| p.eq_ignore_ascii_case("arn:"))
        .and(s.get(4..))
    {
        // arn:<partition>:bedrock:<region>:<account>:<resource>
        let mut parts = rest.splitn(5, ':');
        let partition = parts.next().unwrap_or("");
        let service = parts.next().unwrap_or("");
        let resource = parts.nth(2).unwrap_or("");
        return partition
            .get(..3)
            .is_some_and(|p| p.eq_ignore_ascii_case("aws"))
            && service.eq_ignore_ascii_case("bedrock")
            && !resource.is_empty()
            && s.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/')
            });
    }
    // provider.model[-version][:n], optionally behind a geography prefix (`us.`, `global.`).
    s.contains('.')
        && !s.starts_with('.')
        && !s.ends_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The one spelling of a model that allowlists, per-model limits and prices are looked up by,
/// and that Tollgate sends to Bedrock. Without it a client could name a limited model another
/// way and escape its limits.
///
/// * Lowercase: Bedrock's model, inference-profile and resource IDs are lowercase, so
///   `US.Anthropic.…` is the same model as `us.anthropic.…`.
/// * `arn:…:bedrock:<region>::foundation-model/<id>` is `<id>`, and
///   `arn:…:bedrock:<region>:<account>:inference-profile/<profile-id>` is `<profile-id>`, whatever
///   the account: both name a model (or a system-defined profile) that the profile ID names
///   too, and sent as the ID it runs in the gateway's own account, the only one whose
///   credentials Tollgate holds.
/// * Any other Bedrock ARN (an application inference profile, a provisioned, custom or imported
///   model) names an opaque resource of one account: it is its own model, the whole ARN,
///   allowed only where listed (or `*`) and priced as an unknown model.
/// * An ARN of another region is refused: this gateway's endpoint serves one region.
pub fn canonical(id: &str, region: &str) -> Result<String, String> {
    let id = id.trim().to_ascii_lowercase();
    let Some(rest) = id.strip_prefix("arn:") else {
        return Ok(id);
    };
    // <partition>:bedrock:<region>:<account>:<type>/<resource>
    let mut parts = rest.splitn(5, ':');
    let (_partition, service, arn_region, _account, resource) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    if service != "bedrock" {
        return Err(format!("`{id}` is not a Bedrock ARN"));
    }
    if arn_region != region {
        return Err(format!(
            "`{id}` is in region `{arn_region}`; this gateway serves `{region}`"
        ));
    }
    match resource.split_once('/') {
        // The model inside must be a plain model ID: another ARN (or a `/`) would be a second
        // spelling of a model, past its allowlist and per-model limits.
        Some(("foundation-model" | "inference-profile", model))
            if is_model_id(model) && !model.starts_with("arn:") =>
        {
            Ok(model.to_string())
        }
        Some(("foundation-model" | "inference-profile", _)) => {
            Err(format!("`{id}` does not name a Bedrock model ID"))
        }
        Some((_, name)) if !name.is_empty() => Ok(id),
        _ => Err(format!("`{id}` names no Bedrock resource")),
    }
}

/// Decodes the `{modelId}` label of a request path once, as Bedrock does. `None` for labels
/// that are not valid UTF-8, too long, or contain control characters.
pub fn decode_path_label(label: &str) -> Option<String> {
    if label.is_empty() || label.len() > MAX_LEN * 3 {
        return None;
    }
    let decoded = percent_decode_str(label).decode_utf8().ok()?;
    if decoded.is_empty() || decoded.len() > MAX_LEN || decoded.chars().any(char::is_control) {
        return None;
    }
    Some(decoded.into_owned())
}

/// Encodes a model ID as one path label, the way the AWS SDKs send it.
pub fn encode_path_label(model_id: &str) -> String {
    utf8_percent_encode(model_id, PATH_LABEL).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_ids_and_arns() {
        for ok in [
            "anthropic.claude-3-haiku-20240307-v1:0",
            "us.anthropic.claude-haiku-4-5-20251001-v1:0",
            "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "amazon.nova-lite-v1:0",
            "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-haiku-20240307-v1:0",
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-haiku-4-5-20251001-v1:0",
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3",
            "ARN:AWS:BEDROCK:US-EAST-1::FOUNDATION-MODEL/AMAZON.NOVA-LITE-V1:0",
        ] {
            assert!(is_model_id(ok), "{ok}");
        }
        for bad in [
            "",
            "claude-fast",
            ".x",
            "x.",
            "a b.c",
            "arn:aws:s3:::bucket",
            "arn:aws:bedrock",
            "a.b/c",
            "a.b\n",
        ] {
            assert!(!is_model_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn path_label_round_trip() {
        let arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-haiku-4-5-20251001-v1:0";
        let enc = encode_path_label(arn);
        assert_eq!(
            enc,
            "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-haiku-4-5-20251001-v1%3A0"
        );
        assert_eq!(decode_path_label(&enc).as_deref(), Some(arn));
        // curl users send the colon raw; that decodes the same.
        assert_eq!(
            decode_path_label("amazon.nova-lite-v1:0").as_deref(),
            Some("amazon.nova-lite-v1:0")
        );
    }

    #[test]
    fn one_spelling_per_model() {
        const HAIKU: &str = "us.anthropic.claude-haiku-4-5-20251001-v1:0";
        let same = [
            HAIKU,
            "US.Anthropic.Claude-Haiku-4-5-20251001-V1:0",
            " us.anthropic.claude-haiku-4-5-20251001-v1:0",
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-haiku-4-5-20251001-v1:0",
            "arn:aws:bedrock:us-east-1:210987654321:inference-profile/us.anthropic.claude-haiku-4-5-20251001-v1:0",
            "ARN:AWS:BEDROCK:US-EAST-1:123456789012:INFERENCE-PROFILE/US.ANTHROPIC.CLAUDE-HAIKU-4-5-20251001-V1:0",
        ];
        for id in same {
            assert_eq!(canonical(id, "us-east-1").as_deref(), Ok(HAIKU), "{id}");
        }
        assert_eq!(
            canonical(
                "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-haiku-20240307-v1:0",
                "us-east-1"
            )
            .as_deref(),
            Ok("anthropic.claude-3-haiku-20240307-v1:0")
        );
        // Opaque resources stay whole: another account's profile is another model.
        let app =
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4e5f6";
        assert_eq!(canonical(app, "us-east-1").as_deref(), Ok(app));
        assert_eq!(
            canonical(&app.to_uppercase(), "us-east-1").as_deref(),
            Ok(app)
        );
        assert_ne!(
            canonical(&app.replace("123456789012", "210987654321"), "us-east-1").unwrap(),
            app
        );
        for bad in [
            "arn:aws:bedrock:eu-west-1::foundation-model/anthropic.claude-3-haiku-20240307-v1:0",
            "arn:aws:bedrock:us-west-2:123456789012:inference-profile/us.anthropic.claude-haiku-4-5-20251001-v1:0",
            "arn:aws:s3:us-east-1::bucket/x",
            "arn:aws:bedrock:us-east-1::foundation-model/",
            "arn:aws:bedrock:us-east-1:1:inference-profile",
        ] {
            assert!(canonical(bad, "us-east-1").is_err(), "{bad}");
        }
    }

    /// Found by the `route` fuzz target: a model inside an ARN that is itself an ARN (or has a
    /// `/`) was another spelling of a model, escaping its allowlist and per-model limits.
    #[test]
    fn an_arn_names_a_model_id_not_another_arn() {
        const HAIKU: &str = "us.anthropic.claude-haiku-4-5-20251001-v1:0";
        let profile = format!("arn:aws:bedrock:us-east-1:1:inference-profile/{HAIKU}");
        for nested in [
            format!("arn:aws:bedrock:us-east-1:1:inference-profile/{profile}"),
            format!("arn:aws:bedrock:us-east-1::foundation-model/{profile}"),
            "arn:aws:bedrock:us-east-1::foundation-model/anthropic/anthropic.claude-3-haiku-20240307-v1:0".to_string(),
            "arn:aws:bedrock:us-east-1::foundation-model/.x".to_string(),
        ] {
            assert!(is_model_id(&nested), "{nested}");
            let got = canonical(&nested, "us-east-1");
            assert!(got.is_err(), "{nested} -> {got:?}");
        }
        // Whatever is accepted is its own one spelling.
        for id in [HAIKU, profile.as_str()] {
            let once = canonical(id, "us-east-1").unwrap();
            assert_eq!(canonical(&once, "us-east-1").as_deref(), Ok(once.as_str()));
            assert!(is_model_id(&once));
        }
    }

    #[test]
    fn rejects_bad_labels() {
        assert_eq!(decode_path_label("%ff%fe"), None);
        assert_eq!(decode_path_label("a%0Ab"), None);
        assert_eq!(decode_path_label(""), None);
        assert_eq!(decode_path_label(&"a".repeat(MAX_LEN + 1)), None);
    }
}
