//! A secret's bytes: zeroized on drop, redacted in `Debug`, no `Display`.

use std::fmt;

use zeroize::Zeroizing;

use crate::KeyringError;

pub struct Secret(Zeroizing<Vec<u8>>);

/// The shortest signing secret accepted, in bytes.
pub const MIN_SIGNING_BYTES: usize = 16;
/// The length below which a signing secret is warned about.
pub const GOOD_SIGNING_BYTES: usize = 32;

impl Secret {
    /// A secret from text as an operator supplies it (an environment value,
    /// a secret file, `openssl rand -hex 32 | tes secret put`). One trailing
    /// line break is dropped, because files and pipes add one; everything
    /// else is kept byte for byte, which keeps signatures identical to the
    /// seed's `TextEncoder().encode(secret)` and to `openssl dgst -hmac`.
    pub fn from_text(source_name: &str, text: Vec<u8>) -> Result<Secret, KeyringError> {
        let mut bytes = Zeroizing::new(text);
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        if bytes.is_empty() {
            return Err(KeyringError::EmptySecret {
                source_name: source_name.to_string(),
            });
        }
        if std::str::from_utf8(&bytes).is_err() {
            return Err(KeyringError::NotUtf8 {
                source_name: source_name.to_string(),
            });
        }
        Ok(Secret(bytes))
    }

    /// A signing key's secret as an operator supplies it: [`Secret::from_text`],
    /// refused under [`MIN_SIGNING_BYTES`] (a guessable HMAC key is no key)
    /// and warned about under [`GOOD_SIGNING_BYTES`] (HMAC-SHA256's block
    /// strength; `openssl rand -hex 32` gives 64).
    pub fn signing_key(source_name: &str, text: Vec<u8>) -> Result<Secret, KeyringError> {
        let secret = Secret::from_text(source_name, text)?;
        let len = secret.0.len();
        if len < MIN_SIGNING_BYTES {
            return Err(KeyringError::TooShort {
                source_name: source_name.to_string(),
                len,
            });
        }
        if len < GOOD_SIGNING_BYTES {
            tracing::warn!(
                source = source_name,
                bytes = len,
                "a signing secret under {GOOD_SIGNING_BYTES} bytes is weak: use `openssl rand -hex 32`"
            );
        }
        Ok(secret)
    }

    /// 32 random bytes, as 64 hex characters (what `openssl rand -hex 32` gives).
    pub fn generate() -> Result<Secret, KeyringError> {
        let mut raw = Zeroizing::new([0u8; 32]);
        getrandom::fill(raw.as_mut()).map_err(|e| KeyringError::Random(e.to_string()))?;
        let mut text = Zeroizing::new(vec![0u8; 64]);
        hex::encode_to_slice(raw.as_ref(), text.as_mut()).expect("64 bytes hold 32 in hex");
        Ok(Secret(text))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The secret as text.
    pub fn expose_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("checked at construction")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_one_line_break_and_refuses_empty() {
        let s = Secret::from_text("t", b"abc\n".to_vec()).unwrap();
        assert_eq!(s.expose(), b"abc");
        let s = Secret::from_text("t", b"abc\r\n".to_vec()).unwrap();
        assert_eq!(s.expose(), b"abc");
        let s = Secret::from_text("t", b" abc \n\n".to_vec()).unwrap();
        assert_eq!(s.expose(), b" abc \n");
        assert!(matches!(
            Secret::from_text("VERSION_SIGNING_KEY", b"\n".to_vec()),
            Err(KeyringError::EmptySecret { .. })
        ));
        assert!(Secret::from_text("t", vec![0xff, 0xfe]).is_err());
    }

    #[test]
    fn debug_never_shows_the_bytes() {
        let s = Secret::from_text("t", b"hunter2-very-secret".to_vec()).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn generated_secrets_are_64_hex_chars_and_differ() {
        let a = Secret::generate().unwrap();
        let b = Secret::generate().unwrap();
        assert_eq!(a.expose().len(), 64);
        assert!(a.expose().iter().all(u8::is_ascii_hexdigit));
        assert_ne!(a.expose(), b.expose());
    }
}
