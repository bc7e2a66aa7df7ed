//! Compressed request bodies: `content-encoding: gzip` is decompressed before anything reads
//! the body (Claude Code compresses large requests); Bedrock gets it uncompressed. The
//! decompressed size counts against `max_request_body_bytes`: a small body that inflates past
//! it (a "zip bomb") is refused with 413 as soon as the limit is crossed, never inflated whole.

use std::borrow::Cow;
use std::io::Read;

use crate::error::{ErrorKind, GatewayError};

/// How the client encoded its request body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ContentEncoding {
    #[default]
    Identity,
    Gzip,
}

impl ContentEncoding {
    /// The request's `content-encoding` header: none, `identity` or `gzip` (`x-gzip`); any
    /// other coding (or a list of them) is refused with 400.
    pub fn of_header(value: Option<&str>) -> Result<Self, GatewayError> {
        let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(Self::Identity);
        };
        if v.eq_ignore_ascii_case("identity") {
            Ok(Self::Identity)
        } else if v.eq_ignore_ascii_case("gzip") || v.eq_ignore_ascii_case("x-gzip") {
            Ok(Self::Gzip)
        } else {
            Err(GatewayError::new(
                ErrorKind::BadRequest,
                format!("unsupported request content-encoding `{v}`: send gzip or none"),
            ))
        }
    }

    /// The body as sent upstream: `body` itself, or decompressed, at most `limit` bytes.
    pub fn decode<'a>(self, body: &'a [u8], limit: u64) -> Result<Cow<'a, [u8]>, GatewayError> {
        match self {
            Self::Identity => Ok(Cow::Borrowed(body)),
            Self::Gzip => gunzip(body, limit).map(Cow::Owned),
        }
    }
}

fn gunzip(body: &[u8], limit: u64) -> Result<Vec<u8>, GatewayError> {
    // Every gzip member, as HTTP's coding allows; read one byte past the limit to know.
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(1 << 20));
    let read = flate2::read::MultiGzDecoder::new(body)
        .take(limit.saturating_add(1))
        .read_to_end(&mut out);
    if let Err(e) = read {
        return Err(GatewayError::new(
            ErrorKind::BadRequest,
            format!("the gzip request body could not be decompressed: {e}"),
        ));
    }
    if out.len() as u64 > limit {
        return Err(GatewayError::new(
            ErrorKind::BodyTooLarge,
            format!(
                "the request body, decompressed, is larger than this gateway's limit of {limit} bytes"
            ),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn header_values() {
        assert_eq!(
            ContentEncoding::of_header(None).unwrap(),
            ContentEncoding::Identity
        );
        assert_eq!(
            ContentEncoding::of_header(Some(" Identity ")).unwrap(),
            ContentEncoding::Identity
        );
        assert_eq!(
            ContentEncoding::of_header(Some("GZIP")).unwrap(),
            ContentEncoding::Gzip
        );
        for bad in ["br", "deflate", "zstd", "gzip, br"] {
            let e = ContentEncoding::of_header(Some(bad)).unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadRequest, "{bad}");
        }
    }

    #[test]
    fn gzip_is_decompressed_within_the_limit() {
        let body = br#"{"messages":[]}"#;
        let z = gzip(body);
        assert_eq!(&*ContentEncoding::Gzip.decode(&z, 100).unwrap(), body);
        assert_eq!(
            &*ContentEncoding::Gzip.decode(&z, body.len() as u64).unwrap(),
            body
        );
        // Two members, as `cat a.gz b.gz` makes.
        let two = [gzip(b"ab"), gzip(b"cd")].concat();
        assert_eq!(&*ContentEncoding::Gzip.decode(&two, 10).unwrap(), b"abcd");
        assert!(matches!(
            ContentEncoding::Identity.decode(body, 1).unwrap(),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn a_bomb_is_413_and_garbage_is_400() {
        // 64 MiB of zeros compress to about 64 KiB: refused at the limit, not inflated whole.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 100_000);
        let e = ContentEncoding::Gzip.decode(&bomb, 1 << 20).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BodyTooLarge);
        let z = gzip(b"0123456789");
        let e = ContentEncoding::Gzip.decode(&z, 9).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BodyTooLarge);
        for garbage in [&b"not gzip"[..], &z[..z.len() - 4], b""] {
            let e = ContentEncoding::Gzip.decode(garbage, 100).unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadRequest, "{garbage:?}");
        }
    }
}
