//! Routing and model IDs (`route::route`, `model_id::*`), as admission chains them.
//!
//! Properties, for any method and path:
//! * a model route's label is one path segment;
//! * a model that passes admission's checks has one spelling: `canonical` of it is itself (a
//!   spelling that canonicalises to something that canonicalises further would be a second
//!   name for a model, escaping its allowlist and per-model limits), lowercase, without
//!   control characters;
//! * the upstream path built from it is one segment of unreserved characters and `%XX`
//!   escapes (no `/`, `..`, `?`, `#`, `@`), and decodes back to the model ID exactly;
//! * `encode_path_label` and `decode_path_label` are inverse for any text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_core::request::model_id;
use tollgate_core::request::route::{self, Route};
use tollgate_fuzz::Input;

const METHODS: [&str; 4] = ["POST", "GET", "PUT", "post"];
const REGIONS: [&str; 2] = ["us-east-1", "eu-west-1"];

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let method = METHODS[usize::from(input.u8()) % METHODS.len()];
    let region = REGIONS[usize::from(input.u8()) % REGIONS.len()];
    let Ok(path) = std::str::from_utf8(input.rest()) else {
        return;
    };

    // Any text survives a round trip through the path encoding.
    let encoded = model_id::encode_path_label(path);
    assert!(encoded
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.~%".contains(&b)));
    if !path.is_empty() && path.len() <= model_id::MAX_LEN && !path.chars().any(char::is_control) {
        assert_eq!(model_id::decode_path_label(&encoded).as_deref(), Some(path));
    }

    let Ok(Route::Model { label, operation }) = route::route(method, path) else {
        return;
    };
    assert_eq!(method, "POST");
    assert!(!label.is_empty() && !label.contains('/') && !label.contains('?'));
    assert!(path.contains(operation.path_segment()));
    let Some(model) = model_id::decode_path_label(label) else {
        return;
    };
    assert!(!model.chars().any(char::is_control));
    if !model_id::is_model_id(&model) {
        return;
    }
    let Ok(id) = model_id::canonical(&model, region) else {
        return;
    };
    assert_eq!(
        model_id::canonical(&id, region).as_deref(),
        Ok(id.as_str()),
        "`{model}` canonicalises to `{id}`, which is another spelling"
    );
    assert!(
        model_id::is_model_id(&id),
        "`{model}` canonicalises to `{id}`, which is no model ID"
    );
    assert_eq!(id, id.to_ascii_lowercase());
    let upstream = model_id::encode_path_label(&id);
    assert!(upstream
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.~%".contains(&b)));
    assert!(upstream != "." && upstream != "..");
    assert_eq!(
        model_id::decode_path_label(&upstream).as_deref(),
        Some(id.as_str())
    );
});
