//! Request bodies as SDKs send them: decoded into JSON text under the body-level limits, then checked and
//! taken apart at the top level ([`Body`]) without building the JSON as a tree.

use std::borrow::Cow;
use std::io::Read;

use base64::Engine;

use crate::call::CallKind;
use crate::json::{self, BatchText, Items, Members};

/// Why a whole request body was refused. Each maps to an HTTP status and a stable `code`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("Content-Encoding {0:?} is not supported; send identity or gzip")]
    UnsupportedEncoding(String),
    #[error("the gzip body could not be decompressed: {0}")]
    BadGzip(String),
    #[error("the request body is not valid UTF-8 (first bad byte at offset {0})")]
    InvalidUtf8(usize),
    #[error("the request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("the request body is nested deeper than JSON parsing allows")]
    TooDeep,
    #[error("the request body must be a JSON object")]
    NotAnObject,
    #[error("the form-encoded body has no usable `data` field: {0}")]
    BadForm(String),
}

impl BodyError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "payload_too_large",
            Self::UnsupportedEncoding(_) => "unsupported_encoding",
            Self::BadGzip(_) => "invalid_gzip",
            Self::InvalidUtf8(_) => "invalid_utf8",
            Self::InvalidJson(_) => "invalid_json",
            Self::TooDeep => "too_deep",
            Self::NotAnObject => "invalid_body",
            Self::BadForm(_) => "invalid_form",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Self::TooLarge { .. } => 413,
            Self::UnsupportedEncoding(_) => 415,
            _ => 400,
        }
    }
}

/// A decoded request body: its JSON text, and the write key a form-encoded body carried beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded<'a> {
    pub text: Cow<'a, str>,
    pub form_write_key: Option<String>,
}

impl<'a> Decoded<'a> {
    /// JSON text as a body.
    pub fn json(text: impl Into<Cow<'a, str>>) -> Self {
        Self {
            text: text.into(),
            form_write_key: None,
        }
    }

    /// Checks the text as JSON (exactly what parsing it into a `serde_json::Value` accepts) and takes the
    /// top-level object apart, with a batch's events when it came to the batch endpoint.
    pub fn body(&self, kind: CallKind) -> Result<Body<'_>, BodyError> {
        json::check(&self.text).map_err(|e| {
            let msg = e.to_string();
            if msg.contains("recursion limit") {
                BodyError::TooDeep
            } else {
                BodyError::InvalidJson(msg)
            }
        })?;
        let (members, batch) = if kind == CallKind::Batch {
            let b = BatchText::of_text(&self.text).ok_or(BodyError::NotAnObject)?;
            (b.top, b.batch)
        } else {
            let m = Members::of_text(&self.text).ok_or(BodyError::NotAnObject)?;
            (m, None)
        };
        Ok(Body {
            members,
            batch,
            form_write_key: self.form_write_key.as_deref(),
        })
    }
}

/// A body checked as JSON whose top level is an object; its members are read from the text as needed.
#[derive(Debug)]
pub struct Body<'a> {
    members: Members<'a>,
    /// A batch's `batch` member, taken apart.
    batch: Option<Items<'a>>,
    form_write_key: Option<&'a str>,
}

impl<'a> Body<'a> {
    pub(crate) fn members(&self) -> &Members<'a> {
        &self.members
    }

    pub(crate) fn batch(&self) -> Option<&Items<'a>> {
        self.batch.as_ref()
    }

    /// The `writeKey` the body holds (a form's `writeKey=` when its JSON has none).
    pub fn write_key(&self) -> Option<String> {
        match self.members.get("writeKey") {
            Some(v) => json::value(v).as_str().map(str::to_owned),
            None => self.form_write_key.map(str::to_owned),
        }
    }
}

/// Decodes a body: `Content-Encoding` (identity or gzip, never inflated past `max_bytes`), then JSON, or the
/// `application/x-www-form-urlencoded` wrapping (`data=` holding JSON or base64 of JSON, optional `writeKey=`).
pub fn decode_body<'a>(
    raw: &'a [u8],
    content_encoding: Option<&str>,
    content_type: Option<&str>,
    max_bytes: usize,
) -> Result<Decoded<'a>, BodyError> {
    let bytes: Cow<'a, [u8]> = match content_encoding.map(|e| e.trim().to_ascii_lowercase()) {
        None => Cow::Borrowed(raw),
        Some(e) if e.is_empty() || e == "identity" => Cow::Borrowed(raw),
        Some(e) if e == "gzip" || e == "x-gzip" => {
            let mut out = Vec::with_capacity(raw.len() * 4);
            flate2::read::MultiGzDecoder::new(raw)
                .take(max_bytes as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| BodyError::BadGzip(e.to_string()))?;
            Cow::Owned(out)
        }
        Some(other) => return Err(BodyError::UnsupportedEncoding(other)),
    };
    if bytes.len() > max_bytes {
        return Err(BodyError::TooLarge { limit: max_bytes });
    }
    let text: Cow<'a, str> = match bytes {
        Cow::Borrowed(b) => Cow::Borrowed(
            std::str::from_utf8(b).map_err(|e| BodyError::InvalidUtf8(e.valid_up_to()))?,
        ),
        Cow::Owned(b) => Cow::Owned(
            String::from_utf8(b)
                .map_err(|e| BodyError::InvalidUtf8(e.utf8_error().valid_up_to()))?,
        ),
    };
    // A body that is a JSON object is JSON whatever it is labelled (curl labels `-d` bodies form-encoded).
    let looks_like_json = text.trim_start().starts_with('{');
    let labelled_form = content_type
        .map(|c| {
            c.trim()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        })
        .unwrap_or(false);
    let is_form = !looks_like_json && (labelled_form || text.starts_with("data="));
    if is_form {
        decode_form(&text)
    } else {
        Ok(Decoded::json(text))
    }
}

fn decode_form(text: &str) -> Result<Decoded<'static>, BodyError> {
    let mut data = None;
    let mut write_key = None;
    for pair in text.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v =
            percent_decode(v).ok_or_else(|| BodyError::BadForm("bad percent-encoding".into()))?;
        match k {
            "data" => data = Some(v),
            "writeKey" | "write_key" => write_key = Some(v),
            _ => {}
        }
    }
    let data = data.ok_or_else(|| BodyError::BadForm("missing".into()))?;
    let trimmed = data.trim();
    let json = if trimmed.starts_with('{') {
        trimmed.to_owned()
    } else {
        let engine = base64::engine::general_purpose::STANDARD;
        let bytes = engine
            .decode(trimmed)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(trimmed))
            .map_err(|_| BodyError::BadForm("neither JSON nor base64".into()))?;
        String::from_utf8(bytes)
            .map_err(|e| BodyError::InvalidUtf8(e.utf8_error().valid_up_to()))?
    };
    Ok(Decoded {
        text: Cow::Owned(json),
        form_write_key: write_key,
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn gzip_bodies_are_inflated_but_never_past_the_limit() {
        let json = br#"{"userId":"1","event":"x"}"#;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(json).unwrap();
        let gz = enc.finish().unwrap();
        let d = decode_body(&gz, Some("gzip"), None, 1000).unwrap();
        assert_eq!(d.body(CallKind::Track).unwrap().write_key(), None);
        assert_eq!(d.text, std::str::from_utf8(json).unwrap());

        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![b' '; 2_000_000]).unwrap();
        let bomb = enc.finish().unwrap();
        assert_eq!(
            decode_body(&bomb, Some("gzip"), None, 500_000),
            Err(BodyError::TooLarge { limit: 500_000 })
        );
    }

    #[test]
    fn the_form_encoded_wrapping_is_understood() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(r#"{"userId":"7"}"#);
        let body = format!("data={}&writeKey=wk_1", b64.replace('=', "%3D"));
        let d = decode_body(
            body.as_bytes(),
            None,
            Some("application/x-www-form-urlencoded"),
            1000,
        )
        .unwrap();
        assert_eq!(d.text, r#"{"userId":"7"}"#);
        assert_eq!(
            d.body(CallKind::Track).unwrap().write_key().as_deref(),
            Some("wk_1")
        );
        let d = decode_body(b"data=%7B%22userId%22%3A%228%22%7D", None, None, 1000).unwrap();
        assert_eq!(d.text, r#"{"userId":"8"}"#);
        // A writeKey in the JSON is the one that counts.
        let d = decode_body(
            b"data=%7B%22writeKey%22%3A%22wk_2%22%7D&writeKey=wk_1",
            None,
            None,
            1000,
        )
        .unwrap();
        assert_eq!(
            d.body(CallKind::Track).unwrap().write_key().as_deref(),
            Some("wk_2")
        );
    }

    fn body_of(raw: &[u8]) -> Result<(), BodyError> {
        decode_body(raw, None, None, 10_000)?
            .body(CallKind::Batch)
            .map(|_| ())
    }

    #[test]
    fn broken_bodies_name_what_is_wrong() {
        assert_eq!(
            decode_body(b"{\"a\":\"\xff\"}", None, None, 100),
            Err(BodyError::InvalidUtf8(6))
        );
        assert!(matches!(
            body_of(b"{\"a\":"),
            Err(BodyError::InvalidJson(_))
        ));
        assert_eq!(body_of(b"[1]"), Err(BodyError::NotAnObject));
        let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
        assert_eq!(body_of(deep.as_bytes()), Err(BodyError::TooDeep));
        let big = br#"{"n": 1e400}"#;
        match body_of(big) {
            Err(BodyError::InvalidJson(m)) => assert!(m.contains("number out of range"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode_body(b"{}", Some("br"), None, 100),
            Err(BodyError::UnsupportedEncoding(_))
        ));
    }
}
