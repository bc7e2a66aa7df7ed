//! Bedrock's refusals in a client's dialect: a non-2xx answer (restJson1 `{"message"}`, its
//! class in `x-amzn-errortype`) or a stream's exception frame, rewritten into the dialect's
//! error envelope with the status its SDKs map to their exception classes.

use serde::Deserialize;

use super::ResponseHead;
use crate::response::eventstream::Message;

/// Largest Bedrock error body kept to take its message from.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// What a Bedrock error class says, whatever dialect it is told in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    Validation,
    AccessDenied,
    NotFound,
    /// Throttled, or a service quota reached.
    Throttling,
    /// Overloaded, or the model not ready.
    Unavailable,
    Timeout,
    /// The model or Bedrock failed.
    Failed,
    /// Unknown or absent: the HTTP status decides.
    Other,
}

impl Class {
    /// The class of `kind` (`x-amzn-errortype`, or a stream's `:exception-type`), any case,
    /// with or without its namespace suffix.
    pub(crate) fn of(kind: &str) -> Self {
        let kind = kind.split(':').next().unwrap_or("").trim();
        let is = |name: &str| kind.eq_ignore_ascii_case(name);
        if is("ValidationException") {
            Self::Validation
        } else if is("AccessDeniedException") {
            Self::AccessDenied
        } else if is("ResourceNotFoundException") {
            Self::NotFound
        } else if is("ThrottlingException") || is("ServiceQuotaExceededException") {
            Self::Throttling
        } else if is("ServiceUnavailableException") || is("ModelNotReadyException") {
            Self::Unavailable
        } else if is("ModelTimeoutException") {
            Self::Timeout
        } else if is("ModelErrorException")
            || is("ModelStreamErrorException")
            || is("InternalServerException")
        {
            Self::Failed
        } else {
            Self::Other
        }
    }
}

/// Bedrock's error class in a response head (`x-amzn-errortype`, its namespace suffix
/// dropped), empty if it names none.
pub(crate) fn error_type<'h>(headers: &[(&str, &'h str)]) -> &'h str {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("x-amzn-errortype"))
        .map_or("", |(_, v)| v.split(':').next().unwrap_or("").trim())
}

/// How a dialect tells Bedrock's errors.
pub(crate) struct Envelope {
    /// A Bedrock error class and HTTP status → the client's status and error type.
    pub from_bedrock: fn(&str, u16) -> (u16, &'static str),
    /// The error body for an error type, Bedrock's error class (empty if it named none) and
    /// a message.
    pub body: fn(&str, &str, &str) -> Vec<u8>,
}

/// An exception's payload (`{"message"}`; some services spell it `Message`).
#[derive(Deserialize)]
struct Body {
    #[serde(alias = "Message")]
    message: String,
}

/// The class of a stream's frame that is not an event (an exception, or an error): how a
/// Bedrock stream fails.
pub(crate) fn exception_kind<'m>(m: &Message<'m>) -> Option<&'m str> {
    if m.message_type() == Some("event") {
        return None;
    }
    Some(m.exception_type().or(m.error_code()).unwrap_or(""))
}

/// The message of a stream's exception frame of class `kind`.
pub(crate) fn exception_message(kind: &str, payload: &[u8]) -> String {
    serde_json::from_slice::<Body>(payload)
        .map(|b| b.message)
        .unwrap_or_else(|_| format!("the model's stream failed: {kind}"))
}

/// A stream's exception frame of class `kind` as an error body in `envelope`.
pub(crate) fn exception_body(envelope: &Envelope, kind: &str, payload: &[u8]) -> Vec<u8> {
    let (_, r#type) = (envelope.from_bedrock)(kind, 0);
    (envelope.body)(r#type, kind, &exception_message(kind, payload))
}

/// Bedrock refused the request: its body is held, then written in the client's envelope at
/// the end.
pub(crate) struct Refusal {
    envelope: &'static Envelope,
    status: u16,
    r#type: &'static str,
    kind: String,
    body: Vec<u8>,
}

impl std::fmt::Debug for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refusal")
            .field("status", &self.status)
            .field("type", &self.r#type)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Refusal {
    /// The refusal of a response with `status` and `headers`, and the client's head for it.
    pub(crate) fn new(
        envelope: &'static Envelope,
        status: u16,
        headers: &[(&str, &str)],
    ) -> (Self, ResponseHead) {
        let kind = error_type(headers).to_string();
        let (to, r#type) = (envelope.from_bedrock)(&kind, status);
        let head = ResponseHead {
            status: (to != status).then_some(to),
            set: vec![("content-type", "application/json".into())],
            remove: vec!["content-length", "x-amzn-errortype"],
        };
        let refusal = Self {
            envelope,
            status,
            r#type,
            kind,
            body: Vec::new(),
        };
        (refusal, head)
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) {
        let room = MAX_ERROR_BODY.saturating_sub(self.body.len());
        self.body
            .extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or_default());
    }

    /// The error body, with Bedrock's message.
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        let message = match serde_json::from_slice::<Body>(&self.body) {
            Ok(b) if !b.message.is_empty() => b.message,
            _ => format!(
                "Bedrock answered {} {}",
                self.status,
                if self.kind.is_empty() {
                    "without an error type"
                } else {
                    &self.kind
                }
            ),
        };
        (self.envelope.body)(self.r#type, &self.kind, &message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo(r#type: &str, kind: &str, message: &str) -> Vec<u8> {
        format!("{type}|{kind}|{message}").into_bytes()
    }

    static ECHO: Envelope = Envelope {
        from_bedrock: |kind, status| match Class::of(kind) {
            Class::Unavailable => (599, "busy"),
            _ => (status, "other"),
        },
        body: echo,
    };

    #[test]
    fn classes_read_any_case_and_namespace() {
        for (kind, class) in [
            ("ValidationException", Class::Validation),
            (
                "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/",
                Class::Throttling,
            ),
            ("serviceQuotaExceededException", Class::Throttling),
            (" modelNotReadyException ", Class::Unavailable),
            ("modelStreamErrorException", Class::Failed),
            ("InternalServerException", Class::Failed),
            ("ModelTimeoutException", Class::Timeout),
            ("ResourceNotFoundException", Class::NotFound),
            ("AccessDeniedException", Class::AccessDenied),
            ("UnrecognizedClientException", Class::Other),
            ("", Class::Other),
        ] {
            assert_eq!(Class::of(kind), class, "{kind}");
        }
    }

    #[test]
    fn a_refusal_holds_a_capped_body_and_falls_back_to_its_class() {
        let (mut r, head) = Refusal::new(
            &ECHO,
            503,
            &[("X-Amzn-ErrorType", "ServiceUnavailableException:ns")],
        );
        assert_eq!(head.status, Some(599));
        r.push(br#"{"Message":"#);
        r.push(br#""slow"}"#);
        assert_eq!(r.finish(), b"busy|ServiceUnavailableException|slow");
        let (mut r, head) = Refusal::new(&ECHO, 400, &[]);
        assert_eq!(head.status, None);
        r.push(&vec![b' '; MAX_ERROR_BODY + 10]);
        assert_eq!(r.body.len(), MAX_ERROR_BODY);
        assert_eq!(
            r.finish(),
            b"other||Bedrock answered 400 without an error type"
        );
        let (mut r, _) = Refusal::new(&ECHO, 418, &[("x-amzn-errortype", "Teapot")]);
        r.push(br#"{"message":""}"#);
        assert_eq!(r.finish(), b"other|Teapot|Bedrock answered 418 Teapot");
    }

    #[test]
    fn an_exception_frame_keeps_its_message() {
        assert_eq!(
            exception_body(&ECHO, "modelNotReadyException", br#"{"message":"wait"}"#),
            b"busy|modelNotReadyException|wait"
        );
        assert_eq!(
            exception_body(&ECHO, "x", b"{}"),
            b"other|x|the model's stream failed: x"
        );
    }
}
