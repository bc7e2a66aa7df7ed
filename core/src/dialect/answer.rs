//! Bedrock's answer as a translator takes it in, whatever the client's dialect: refused (its
//! body held for the message), held whole to be translated at once, streamed event by event,
//! or passed as it is.

use std::borrow::Cow;

use serde::Deserialize;

use super::refusal::{Envelope, Refusal};
use super::ResponseHead;
use crate::response::eventstream::{Decoder, Message};

/// Largest answer held to be translated whole (Bedrock's are far smaller).
pub(crate) const MAX_ANSWER: usize = 8 * 1024 * 1024;

/// A streamed answer, translated as its pieces arrive.
pub(crate) trait Stream {
    /// What the client gets for a piece of Bedrock's stream.
    fn push(&mut self, bedrock: &[u8]) -> Vec<u8>;
    /// Bedrock's stream has ended: the client's last bytes.
    fn finish(&mut self) -> Vec<u8>;
}

impl<S: Stream> Stream for Box<S> {
    fn push(&mut self, bedrock: &[u8]) -> Vec<u8> {
        S::push(self, bedrock)
    }
    fn finish(&mut self) -> Vec<u8> {
        S::finish(self)
    }
}

/// A stream translated from Bedrock's EventStream one message at a time.
pub(crate) trait Frames {
    fn decoder(&mut self) -> &mut Decoder;
    /// The client's stream is complete (its last event, or an error, went out).
    fn ended(&self) -> bool;
    /// One message, translated into `out`.
    fn event(&mut self, m: Message<'_>, out: &mut Vec<u8>);
    /// Bedrock's stream cannot be read: the error, saying `why`, that ends the client's.
    fn unreadable(&mut self, out: &mut Vec<u8>, why: &str);
}

/// What the client gets for a piece of Bedrock's EventStream: each whole message translated;
/// an unreadable stream ends in an error. Nothing follows the end of the client's stream.
pub(crate) fn decode(frames: &mut impl Frames, bedrock: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if frames.ended() {
        return out;
    }
    // Taken out for the while: each message is translated by `frames` itself.
    let mut decoder = std::mem::take(frames.decoder());
    let pushed = decoder.push(bedrock, |m| frames.event(m, &mut out));
    *frames.decoder() = decoder;
    if let Err(e) = pushed {
        if !frames.ended() {
            frames.unreadable(
                &mut out,
                &format!("the model's stream could not be read: {e}"),
            );
        }
    }
    out
}

/// What a translator does with Bedrock's body.
pub(crate) enum Answer<S> {
    /// Before the head, or an answer already in the client's dialect: passed unchanged.
    Pass,
    Refused(Refusal),
    /// Held until whole; at most [`MAX_ANSWER`] + 1 bytes, so that more reads as too large.
    Whole(Vec<u8>),
    Stream(S),
}

impl<S: Stream> Answer<S> {
    /// Refuses a response whose `status` is not 2xx, in `envelope`: the client's head for it.
    pub(crate) fn refuse(
        &mut self,
        envelope: &'static Envelope,
        status: u16,
        headers: &[(&str, &str)],
    ) -> Option<ResponseHead> {
        if (200..300).contains(&status) {
            return None;
        }
        let (refusal, head) = Refusal::new(envelope, status, headers);
        *self = Self::Refused(refusal);
        Some(head)
    }

    /// Holds the answer until it is whole: the head of a JSON answer of another length.
    pub(crate) fn hold(&mut self) -> ResponseHead {
        *self = Self::Whole(Vec::new());
        ResponseHead {
            status: None,
            set: vec![("content-type", "application/json".into())],
            remove: vec!["content-length"],
        }
    }

    /// What the client gets for a piece of Bedrock's body.
    pub(crate) fn body<'a>(&mut self, bedrock: &'a [u8]) -> Cow<'a, [u8]> {
        match self {
            Self::Pass => Cow::Borrowed(bedrock),
            Self::Refused(r) => {
                r.push(bedrock);
                Cow::Owned(Vec::new())
            }
            Self::Whole(buf) => {
                let room = (MAX_ANSWER + 1).saturating_sub(buf.len());
                buf.extend_from_slice(bedrock.get(..room.min(bedrock.len())).unwrap_or_default());
                Cow::Owned(Vec::new())
            }
            Self::Stream(s) => Cow::Owned(s.push(bedrock)),
        }
    }

    /// Bedrock's body has ended: the client's last bytes, a whole answer translated by
    /// `whole`.
    pub(crate) fn end(&mut self, whole: impl FnOnce(&[u8]) -> Vec<u8>) -> Vec<u8> {
        match self {
            Self::Pass => Vec::new(),
            Self::Refused(r) => r.finish(),
            Self::Whole(buf) => whole(buf),
            Self::Stream(s) => s.finish(),
        }
    }
}

/// Reads a whole answer, or says why it cannot be translated (its head has gone out as a 2xx).
pub(crate) fn read_whole<'a, T: Deserialize<'a>>(buf: &'a [u8]) -> Result<T, String> {
    if buf.len() > MAX_ANSWER {
        return Err("the model's answer is too large to translate".into());
    }
    serde_json::from_slice(buf).map_err(|e| format!("the model's answer could not be read: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Echoes each piece, uppercased; finishes with `!`.
    struct Shout;

    impl Stream for Shout {
        fn push(&mut self, bedrock: &[u8]) -> Vec<u8> {
            bedrock.to_ascii_uppercase()
        }
        fn finish(&mut self) -> Vec<u8> {
            b"!".to_vec()
        }
    }

    static PLAIN: Envelope = Envelope {
        from_bedrock: |_, status| (status, "t"),
        body: |r#type, kind, message| format!("{type}|{kind}|{message}").into_bytes(),
    };

    #[test]
    fn each_state_takes_the_body_its_way() {
        let mut a = Answer::<Shout>::Pass;
        assert!(a.refuse(&PLAIN, 204, &[]).is_none());
        assert!(matches!(a.body(b"as is"), Cow::Borrowed(b"as is")));
        assert!(a.end(|_| unreachable!()).is_empty());

        let head = a.refuse(&PLAIN, 500, &[]).unwrap();
        assert_eq!(head.status, None);
        assert!(a.body(br#"{"message":"no"}"#).is_empty());
        assert_eq!(a.end(|_| unreachable!()), b"t||no");

        let head = a.hold();
        assert_eq!(head.remove, ["content-length"]);
        assert!(a.body(b"ab").is_empty());
        assert!(a.body(b"c").is_empty());
        assert_eq!(a.end(<[u8]>::to_vec), b"abc");

        let mut a = Answer::Stream(Box::new(Shout));
        assert_eq!(a.body(b"ev").as_ref(), b"EV");
        assert_eq!(a.end(|_| unreachable!()), b"!");
    }

    #[test]
    fn a_whole_answer_is_held_to_one_byte_past_its_limit() {
        let mut a = Answer::<Shout>::Pass;
        a.hold();
        a.body(&vec![b' '; MAX_ANSWER]);
        a.body(b"[1]");
        let held = a.end(<[u8]>::to_vec);
        assert_eq!(held.len(), MAX_ANSWER + 1);
        assert_eq!(
            read_whole::<serde_json::Value>(&held).unwrap_err(),
            "the model's answer is too large to translate"
        );
        assert_eq!(read_whole::<u8>(b" 7 "), Ok(7));
        assert!(read_whole::<u8>(b"x")
            .unwrap_err()
            .starts_with("the model's answer could not be read: "));
    }
}
