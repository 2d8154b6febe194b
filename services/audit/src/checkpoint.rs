//! A checkpoint: the C2SP `tlog-checkpoint` body
//!
//! ```text
//! <origin>
//! <tree size>
//! <base64 root hash>
//! ```
//!
//! signed as a C2SP `signed-note` by the audit key (`— <name> base64(keyhash ‖ sig)`).
//! The origin is the audit key's name; the tree is `tes_ledger::merkle`'s,
//! so the size is the ledger's head seq.

use base64::Engine as _;
use tes_ledger::Hash;

use crate::key::{AuditKey, Vkey};

/// A tree head: what a checkpoint says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

/// A checkpoint and the note that carries it (the bytes witnesses keep).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("not a signed note (text, a blank line, then `— name signature` lines)")]
    NotANote,
    #[error("the note is not signed by {0} (the key it was checked with)")]
    NotSignedBy(String),
    #[error("the signature by {0} does not verify: the checkpoint was altered or forged")]
    BadSignature(String),
    #[error("the note's text is not a tlog-checkpoint (origin, size, base64 root)")]
    NotACheckpoint,
    #[error("the checkpoint's origin {origin:?} is not the key's name {key:?}")]
    WrongOrigin { origin: String, key: String },
}

impl Checkpoint {
    /// The checkpoint body, exactly as signed.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            base64::engine::general_purpose::STANDARD.encode(self.root)
        )
    }

    pub fn root_hex(&self) -> String {
        hex::encode(self.root)
    }
}

impl signed_note::Signer for AuditKey {
    fn name(&self) -> &str {
        AuditKey::name(self)
    }
    fn key_id(&self) -> u32 {
        self.id()
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, ed25519_dalek::SignatureError> {
        Ok(self.sign_bytes(msg))
    }
}

impl SignedCheckpoint {
    /// Signs the tree head (`size`, `root`) with `key`.
    pub fn sign(key: &AuditKey, size: u64, root: Hash) -> SignedCheckpoint {
        let checkpoint = Checkpoint {
            origin: key.name().to_string(),
            size,
            root,
        };
        let mut note = signed_note::Note::new(checkpoint.body().as_bytes(), &[])
            .expect("a checkpoint body is a valid note text");
        note.add_sigs(&[key]).expect("a valid key name signs");
        let note = String::from_utf8(note.to_bytes()).expect("notes are UTF-8");
        SignedCheckpoint { checkpoint, note }
    }

    /// Checks `note` against `vkey` and reads the checkpoint in it.
    pub fn open(note: &str, vkey: &Vkey) -> Result<SignedCheckpoint, CheckpointError> {
        let parsed = signed_note::Note::from_bytes(note.as_bytes())
            .map_err(|_| CheckpointError::NotANote)?;
        let list = signed_note::VerifierList::new(vec![Box::new(vkey.inner.clone())]);
        match parsed.verify(&list) {
            Ok(_) => {}
            Err(signed_note::NoteError::InvalidSignature { .. }) => {
                return Err(CheckpointError::BadSignature(vkey.name().to_string()))
            }
            Err(_) => return Err(CheckpointError::NotSignedBy(vkey.as_str().to_string())),
        }
        let body = tlog_tiles::Checkpoint::from_bytes(parsed.text())
            .map_err(|_| CheckpointError::NotACheckpoint)?;
        if body.origin() != vkey.name() {
            return Err(CheckpointError::WrongOrigin {
                origin: body.origin().to_string(),
                key: vkey.name().to_string(),
            });
        }
        Ok(SignedCheckpoint {
            checkpoint: Checkpoint {
                origin: body.origin().to_string(),
                size: body.size(),
                root: body.hash().0,
            },
            note: note.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> AuditKey {
        AuditKey::generate("tes-ledger/0123456789abcdef").unwrap()
    }

    #[test]
    fn signs_the_c2sp_layout() {
        let k = key();
        let signed = SignedCheckpoint::sign(&k, 3, [7u8; 32]);
        let (body, sig) = signed.note.split_once("\n\n").unwrap();
        assert_eq!(
            body,
            "tes-ledger/0123456789abcdef\n3\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="
        );
        assert!(sig.starts_with("— tes-ledger/0123456789abcdef "));
        assert!(sig.ends_with('\n'));
        let opened = SignedCheckpoint::open(&signed.note, &k.verifier()).unwrap();
        assert_eq!(opened, signed);
    }

    #[test]
    fn another_key_or_origin_is_refused() {
        let (a, b) = (key(), AuditKey::generate("other").unwrap());
        let signed = SignedCheckpoint::sign(&a, 1, [0u8; 32]);
        assert!(matches!(
            SignedCheckpoint::open(&signed.note, &b.verifier()),
            Err(CheckpointError::NotSignedBy(_))
        ));
        // Same name, other key material: a forgery.
        let c = AuditKey::generate(a.name()).unwrap();
        assert!(SignedCheckpoint::open(&signed.note, &c.verifier()).is_err());
    }

    proptest! {
        /// Any changed byte of a signed checkpoint is refused (or, in the
        /// signature's base64 padding, still says the same thing).
        #[test]
        fn any_edit_is_caught(size in 0u64..1_000_000, at in any::<prop::sample::Index>(), bit in 0u8..7) {
            let k = key();
            let signed = SignedCheckpoint::sign(&k, size, [size as u8; 32]);
            let mut bytes = signed.note.clone().into_bytes();
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            if let Ok(text) = String::from_utf8(bytes) {
                if let Ok(opened) = SignedCheckpoint::open(&text, &k.verifier()) {
                    prop_assert_eq!(opened.checkpoint, signed.checkpoint);
                }
            }
        }
    }
}
