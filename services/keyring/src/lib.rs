//! Versioned signing keys.
//!
//! Key material comes from secret sources ([`source`]: `VERSION_SIGNING_KEY`,
//! `VERSION_SIGNING_KEY_V<N>`, their `…_FILE` forms) or from the key store
//! file ([`store`], mode 0600, outside the ledger). It is held as [`Secret`]
//! (zeroized on drop, never printed) only long enough to key an HMAC state;
//! a [`SigningKey`] keeps that state and clones it per signature, so the hot
//! path does no key schedule. The ledger sees only a [`Fingerprint`].
//!
//! Invariant: no type here prints, serializes or returns key bytes; `Debug`
//! shows versions and fingerprints only.

mod error;
pub mod kernel;
mod key;
mod keyring;
mod secret;
pub mod source;
pub mod store;

pub use error::KeyringError;
pub use key::SigningKey;
pub use keyring::{Keyring, LoadedKey};
pub use secret::Secret;
pub use source::Source;
pub use store::KeyStore;
pub use tes_proto::{Fingerprint, KeyVersion};
