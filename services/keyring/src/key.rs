//! One key version, keyed once: the HMAC state is computed from the secret at
//! load time and cloned for each signature (DESIGN.md §4), which is about
//! 1.5× faster than re-keying per message on this hardware (NOTES.md).

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tes_proto::{Fingerprint, KeyVersion};

use crate::Secret;

type HmacSha256 = Hmac<Sha256>;

/// The label a fingerprint is computed over. Changing it changes every
/// fingerprint in every ledger: don't.
const FINGERPRINT_LABEL: &[u8] = b"tes.keyring.fingerprint.v1";

/// Length of an HMAC-SHA256 tag.
pub const SIGNATURE_LEN: usize = 32;

#[derive(Clone)]
pub struct SigningKey {
    version: KeyVersion,
    fingerprint: Fingerprint,
    keyed: HmacSha256,
}

impl SigningKey {
    pub fn new(version: KeyVersion, secret: &Secret) -> SigningKey {
        let keyed =
            HmacSha256::new_from_slice(secret.expose()).expect("HMAC accepts keys of any length");
        let mut fp = keyed.clone();
        fp.update(FINGERPRINT_LABEL);
        let digest = fp.finalize().into_bytes();
        let fingerprint = Fingerprint::parse(&hex::encode(&digest[..Fingerprint::LEN / 2]))
            .expect("hex of 8 bytes is a fingerprint");
        SigningKey {
            version,
            fingerprint,
            keyed,
        }
    }

    pub fn version(&self) -> KeyVersion {
        self.version
    }

    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// HMAC-SHA256 of `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut mac = self.keyed.clone();
        mac.update(message);
        mac.finalize().into_bytes().into()
    }

    /// The signature as lowercase hex (the seed's and openssl's form).
    pub fn sign_hex(&self, message: &[u8]) -> String {
        let mut out = [0u8; 2 * SIGNATURE_LEN];
        hex::encode_to_slice(self.sign(message), &mut out).expect("buffer fits");
        String::from_utf8(out.to_vec()).expect("hex is ASCII")
    }

    /// Checks a hex signature (either case) in constant time. A signature
    /// that is not 64 hex characters is simply invalid.
    pub fn verify_hex(&self, message: &[u8], signature_hex: &str) -> bool {
        let mut given = [0u8; SIGNATURE_LEN];
        if hex::decode_to_slice(signature_hex, &mut given).is_err() {
            return false;
        }
        self.sign(message).ct_eq(&given).into()
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("version", &self.version)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(text: &str) -> SigningKey {
        SigningKey::new(
            KeyVersion::V1,
            &Secret::from_text("t", text.as_bytes().to_vec()).unwrap(),
        )
    }

    #[test]
    fn matches_rfc_4231_test_case_2() {
        // Key "Jefe", data "what do ya want for nothing?"
        assert_eq!(
            key("Jefe").sign_hex(b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn debug_shows_fingerprint_not_key() {
        let k = key("super-secret-key-material");
        let shown = format!("{k:?}");
        assert!(shown.contains(k.fingerprint().as_str()));
        assert!(!shown.contains("super-secret"));
    }

    #[test]
    fn fingerprints_tell_keys_apart_and_are_stable() {
        assert_eq!(key("a").fingerprint(), key("a").fingerprint());
        assert_ne!(key("a").fingerprint(), key("b").fingerprint());
    }

    proptest! {
        #[test]
        fn verify_accepts_exactly_its_own_signatures(
            msg in proptest::collection::vec(any::<u8>(), 0..300),
            flip in 0usize..64,
        ) {
            let k = key("k1");
            let sig = k.sign_hex(&msg);
            prop_assert!(k.verify_hex(&msg, &sig));
            prop_assert!(k.verify_hex(&msg, &sig.to_uppercase()));
            prop_assert!(!key("k2").verify_hex(&msg, &sig));
            let mut bad = sig.into_bytes();
            bad[flip] = if bad[flip] == b'0' { b'1' } else { b'0' };
            prop_assert!(!k.verify_hex(&msg, std::str::from_utf8(&bad).unwrap()));
            prop_assert!(!k.verify_hex(&msg, "abc"));
        }
    }
}
