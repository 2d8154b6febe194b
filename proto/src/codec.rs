//! The two wire forms: JSON (described by `schemas/`) and the compact binary
//! form (postcard). The `Content-Type` header says which one a payload is;
//! a message without the header is taken as JSON, so `nats pub` works.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::envelope::Envelope;

/// Payloads larger than this are refused before decoding.
pub const MAX_PAYLOAD: usize = 1 << 20;

pub const JSON_MIME: &str = "application/json";
pub const BINARY_MIME: &str = "application/x-tes-postcard";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContentType {
    #[default]
    Binary,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("unsupported Content-Type {0:?} (expected {JSON_MIME} or {BINARY_MIME})")]
    UnsupportedContentType(String),
    #[error("payload of {0} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    TooLarge(usize),
    #[error("malformed JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("malformed binary message: {0}")]
    Binary(#[from] postcard::Error),
}

impl ContentType {
    pub fn mime(self) -> &'static str {
        match self {
            ContentType::Json => JSON_MIME,
            ContentType::Binary => BINARY_MIME,
        }
    }

    /// Reads the header value; a missing header means JSON (outside clients).
    pub fn from_header(value: Option<&str>) -> Result<ContentType, CodecError> {
        match value.map(|v| v.split(';').next().unwrap_or("").trim()) {
            None | Some("") => Ok(ContentType::Json),
            Some(v) if v.eq_ignore_ascii_case(JSON_MIME) => Ok(ContentType::Json),
            Some(v) if v.eq_ignore_ascii_case(BINARY_MIME) => Ok(ContentType::Binary),
            Some(v) => Err(CodecError::UnsupportedContentType(v.to_string())),
        }
    }

    pub fn encode<T: Serialize>(self, value: &T) -> Result<Vec<u8>, CodecError> {
        Ok(match self {
            ContentType::Json => serde_json::to_vec(value)?,
            ContentType::Binary => postcard::to_stdvec(value)?,
        })
    }

    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, CodecError> {
        if bytes.len() > MAX_PAYLOAD {
            return Err(CodecError::TooLarge(bytes.len()));
        }
        Ok(match self {
            ContentType::Json => serde_json::from_slice(bytes)?,
            ContentType::Binary => postcard::from_bytes(bytes)?,
        })
    }
}

/// A command as it arrived: a full envelope, or (JSON only) just the body,
/// as a client in another language or `nats pub` sends it. The receiver
/// wraps a bare body in an envelope of its own.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming<T> {
    Envelope(Envelope<T>),
    Bare(T),
}

pub fn decode_incoming<T: DeserializeOwned>(
    content_type: ContentType,
    bytes: &[u8],
) -> Result<Incoming<T>, CodecError> {
    if bytes.len() > MAX_PAYLOAD {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    match content_type {
        ContentType::Binary => content_type.decode(bytes).map(Incoming::Envelope),
        ContentType::Json => {
            // An empty body is the empty object: `nats pub tes.cmd.0x1001.rotate ""`.
            let value: serde_json::Value = if bytes.iter().all(u8::is_ascii_whitespace) {
                serde_json::Value::Object(Default::default())
            } else {
                serde_json::from_slice(bytes)?
            };
            let is_envelope = value
                .as_object()
                .is_some_and(|o| o.contains_key("body") && o.contains_key("id"));
            if is_envelope {
                Ok(Incoming::Envelope(serde_json::from_value(value)?))
            } else {
                Ok(Incoming::Bare(serde_json::from_value(value)?))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Rotate, Sign};
    use crate::envelope::{Channel, MsgId, Timestamp};
    use crate::event::{Event, KeyRotate, RotationReason};
    use crate::key_version::KeyVersion;
    use crate::thread::ThreadId;
    use proptest::prelude::*;

    fn envelope(event: Event, ms: u64) -> Envelope<Event> {
        Envelope::new(
            MsgId(uuid::Uuid::from_u128(ms as u128 * 7919)),
            Timestamp(ms),
            ThreadId::VersionManagement,
            Channel::Event,
            event,
        )
    }

    #[test]
    fn a_bare_json_body_from_another_client_is_accepted() {
        let got: Incoming<Rotate> =
            decode_incoming(ContentType::Json, br#"{"requested_by":"ops"}"#).unwrap();
        assert_eq!(
            got,
            Incoming::Bare(Rotate {
                requested_by: "ops".into(),
                ..Rotate::default()
            })
        );
        let empty: Incoming<Rotate> = decode_incoming(ContentType::Json, b"").unwrap();
        assert_eq!(empty, Incoming::Bare(Rotate::default()));
    }

    #[test]
    fn malformed_and_oversized_payloads_are_errors_not_panics() {
        assert!(decode_incoming::<Sign>(ContentType::Json, b"{").is_err());
        assert!(decode_incoming::<Sign>(ContentType::Json, br#"{"payload":1}"#).is_err());
        assert!(
            decode_incoming::<Sign>(ContentType::Json, br#"{"payload":"x","bogus":1}"#).is_err()
        );
        assert!(decode_incoming::<Sign>(ContentType::Binary, &[0xff, 0xff, 0xff]).is_err());
        let big = vec![b' '; MAX_PAYLOAD + 1];
        assert!(matches!(
            decode_incoming::<Sign>(ContentType::Json, &big),
            Err(CodecError::TooLarge(_))
        ));
        assert!(ContentType::from_header(Some("text/plain")).is_err());
        assert_eq!(ContentType::from_header(None).unwrap(), ContentType::Json);
    }

    fn arb_version() -> impl Strategy<Value = KeyVersion> {
        (1u32..50).prop_map(|n| KeyVersion::new(n).unwrap())
    }

    proptest! {
        #[test]
        fn events_round_trip_through_both_codecs(
            from in proptest::option::of(arb_version()),
            to in arb_version(),
            who in ".{0,40}",
            forced in any::<bool>(),
            ms in 0u64..4_000_000_000_000,
        ) {
            let event = Event::KeyRotate(KeyRotate {
                from, to, reason: RotationReason::Requested, requested_by: who,
                forced, grace_until: Some(Timestamp(ms + 1)), expires_at: None,
            });
            let env = envelope(event, ms);
            for ct in [ContentType::Json, ContentType::Binary] {
                let bytes = ct.encode(&env).unwrap();
                let back: Envelope<Event> = ct.decode(&bytes).unwrap();
                prop_assert_eq!(&back, &env);
            }
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = ContentType::Binary.decode::<Envelope<Event>>(&bytes);
            let _ = decode_incoming::<Sign>(ContentType::Json, &bytes);
        }
    }
}
