//! The audit key: Ed25519, in the signed-note key forms.
//!
//! Private: `PRIVATE+KEY+<name>+<keyhash>+base64(0x01 ‖ seed)` (the form Go's
//! `note` package and C2SP tooling use). Public (`vkey`):
//! `<name>+<keyhash>+base64(0x01 ‖ pubkey)`, where keyhash is the first four
//! bytes of SHA-256(name ‖ "\n" ‖ 0x01 ‖ pubkey). The key's name is the
//! checkpoints' origin line.
//!
//! It is not an HMAC key and never signs manifests: a leaked signing key
//! must not let anyone forge the log's checkpoints, and the other way round.

use std::fmt;
use std::path::PathBuf;

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

/// The signed-note algorithm byte for Ed25519.
const ALG_ED25519: u8 = 0x01;

/// The environment variable holding the private key (or `…_FILE`, a path).
pub const ENV: &str = "TES_AUDIT_KEY";
pub const ENV_FILE: &str = "TES_AUDIT_KEY_FILE";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Never quotes the text: it may be a private key.
    #[error("{source_name} is not a signed-note Ed25519 private key (PRIVATE+KEY+<name>+<hash>+<base64>): {reason}")]
    Malformed {
        source_name: String,
        reason: &'static str,
    },
    #[error("cannot read {path:?} ({var}): {error}")]
    File {
        var: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{0} and {1} are both set; set one")]
    Both(&'static str, &'static str),
    #[error("the audit key's name {0:?} is not a valid note key name (no spaces, no '+')")]
    BadName(String),
    #[error("no randomness for a new audit key: {0}")]
    Random(String),
    #[error("{vkey:?} is not a signed-note verifier key: {reason}")]
    BadVkey { vkey: String, reason: String },
}

/// The signer of checkpoints.
#[derive(Clone)]
pub struct AuditKey {
    name: String,
    signing: SigningKey,
    id: u32,
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuditKey({})", self.vkey())
    }
}

impl AuditKey {
    /// A new random key named `name` (the origin of its checkpoints).
    pub fn generate(name: &str) -> Result<AuditKey, KeyError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut *seed).map_err(|e| KeyError::Random(e.to_string()))?;
        AuditKey::from_seed(name, &seed)
    }

    fn from_seed(name: &str, seed: &[u8; 32]) -> Result<AuditKey, KeyError> {
        if !signed_note::is_key_name_valid(name) {
            return Err(KeyError::BadName(name.to_string()));
        }
        let signing = SigningKey::from_bytes(seed);
        let id = signed_note::key_id(name, &public_bytes(&signing.verifying_key()));
        Ok(AuditKey {
            name: name.to_string(),
            signing,
            id,
        })
    }

    /// Parses the private form; `source_name` says where it came from (for
    /// errors, which never quote the text).
    pub fn parse(source_name: &str, text: &str) -> Result<AuditKey, KeyError> {
        let bad = |reason| KeyError::Malformed {
            source_name: source_name.to_string(),
            reason,
        };
        let text = text.trim();
        let rest = text
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| bad("it does not start with PRIVATE+KEY+"))?;
        let (name, rest) = rest.split_once('+').ok_or_else(|| bad("no key hash"))?;
        let (id_hex, b64) = rest.split_once('+').ok_or_else(|| bad("no key"))?;
        let id = u32::from_str_radix(id_hex, 16)
            .ok()
            .filter(|_| id_hex.len() == 8)
            .ok_or_else(|| bad("the key hash is not 8 hex digits"))?;
        let raw = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| bad("the key is not base64"))?,
        );
        if raw.first() != Some(&ALG_ED25519) {
            return Err(bad("not an Ed25519 key (algorithm byte 0x01)"));
        }
        let seed: &[u8; 32] = raw[1..]
            .try_into()
            .map_err(|_| bad("an Ed25519 key is 32 bytes"))?;
        let key = AuditKey::from_seed(name, seed).map_err(|_| bad("the name is not valid"))?;
        if key.id != id {
            return Err(bad("the key hash does not match the key"));
        }
        Ok(key)
    }

    /// The private form, to store (zeroized when dropped).
    pub fn to_private(&self) -> Zeroizing<String> {
        let mut raw = Zeroizing::new(Vec::with_capacity(33));
        raw.push(ALG_ED25519);
        raw.extend_from_slice(self.signing.as_bytes());
        Zeroizing::new(format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.id,
            base64::engine::general_purpose::STANDARD.encode(&*raw)
        ))
    }

    /// The verifier key: all a third party needs.
    pub fn vkey(&self) -> String {
        signed_note::new_ed25519_verifier_key(&self.name, &self.signing.verifying_key())
    }

    /// The key's name: the origin line of its checkpoints.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    pub(crate) fn sign_bytes(&self, msg: &[u8]) -> Vec<u8> {
        self.signing.sign(msg).to_vec()
    }

    /// From `TES_AUDIT_KEY` or the file `TES_AUDIT_KEY_FILE` names, if
    /// either is in `env`.
    pub fn from_env<I>(env: I) -> Result<Option<AuditKey>, KeyError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let (mut direct, mut file) = (None, None);
        for (k, v) in env {
            if k == ENV {
                direct = Some(Zeroizing::new(v));
            } else if k == ENV_FILE {
                file = Some(PathBuf::from(v));
            }
        }
        match (direct, file) {
            (Some(_), Some(_)) => Err(KeyError::Both(ENV, ENV_FILE)),
            (Some(text), None) => AuditKey::parse(ENV, &text).map(Some),
            (None, Some(path)) => {
                let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(|error| {
                    KeyError::File {
                        var: ENV_FILE,
                        path: path.clone(),
                        error,
                    }
                })?);
                AuditKey::parse(&format!("{ENV_FILE} {}", path.display()), &text).map(Some)
            }
            (None, None) => Ok(None),
        }
    }
}

fn public_bytes(key: &VerifyingKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(33);
    out.push(ALG_ED25519);
    out.extend_from_slice(key.as_bytes());
    out
}

/// A verifier key, parsed.
#[derive(Clone)]
pub struct Vkey {
    pub(crate) inner: signed_note::StandardVerifier,
    text: String,
}

impl fmt::Debug for Vkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Vkey {
    pub fn parse(text: &str) -> Result<Vkey, KeyError> {
        let text = text.trim();
        signed_note::StandardVerifier::new(text)
            .map(|inner| Vkey {
                inner,
                text: text.to_string(),
            })
            .map_err(|e| KeyError::BadVkey {
                vkey: text.to_string(),
                reason: e.to_string(),
            })
    }

    /// The key's name: the origin it signs for.
    pub fn name(&self) -> &str {
        signed_note::Verifier::name(&self.inner)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl AuditKey {
    pub fn verifier(&self) -> Vkey {
        Vkey::parse(&self.vkey()).expect("our own vkey parses")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_form_round_trips_and_never_prints() {
        let key = AuditKey::generate("tes-ledger/test").unwrap();
        let private = key.to_private();
        let again = AuditKey::parse("test", &private).unwrap();
        assert_eq!(again.vkey(), key.vkey());
        assert!(key.vkey().starts_with("tes-ledger/test+"));
        let shown = format!("{key:?}");
        assert!(!shown.contains(&private[20..]), "{shown}");
        // signed_note's own parser agrees with our private form.
        signed_note::StandardSigner::new(&private).unwrap();
    }

    #[test]
    fn malformed_keys_are_named_not_quoted() {
        for bad in [
            "hello",
            "PRIVATE+KEY+n+0000000+AQ==",
            "PRIVATE+KEY+n+00000000+!!",
            "PRIVATE+KEY+n+00000000+AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            let e = AuditKey::parse("TES_AUDIT_KEY", bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("TES_AUDIT_KEY"), "{e}");
            assert!(!e.contains(bad), "{e}");
        }
        let key = AuditKey::generate("n").unwrap();
        let mut wrong_id = key.to_private().to_string();
        wrong_id.replace_range(14..22, "00000000");
        assert!(AuditKey::parse("x", &wrong_id).is_err());
    }
}
