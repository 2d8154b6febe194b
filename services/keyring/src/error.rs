//! Keyring errors. None of them carries key material: they name variables,
//! paths and versions, never values.

use std::path::PathBuf;

use tes_proto::KeyVersion;

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("{source_name} is empty: a signing key must be at least one byte")]
    EmptySecret { source_name: String },
    #[error("{source_name} is {len} byte(s): a signing secret needs at least 16 (make one with `openssl rand -hex 32`)")]
    TooShort { source_name: String, len: usize },
    #[error("{source_name} is not valid UTF-8 text (key secrets are used as their UTF-8 bytes)")]
    NotUtf8 { source_name: String },
    #[error("{var} points to {path:?}, which cannot be read: {error}")]
    SecretFileUnreadable {
        var: String,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("both {0} and {1} are set for the same key version; set only one")]
    AmbiguousSource(String, String),
    #[error("{var}: {reason}")]
    BadVariable { var: String, reason: String },
    #[error("key store {path:?} cannot be read or written: {error}")]
    KeyStoreIo {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("key store {path:?} is not a TES key store: {reason}")]
    KeyStoreCorrupt { path: PathBuf, reason: String },
    #[error(
        "key store {path:?} is accessible to other users (mode {mode:o}); run `chmod 600 {}`",
        path.display()
    )]
    KeyStorePermissions { path: PathBuf, mode: u32 },
    #[error("key version {0} already has material in the key store; refusing to replace it (pass --replace to overwrite)")]
    AlreadyProvisioned(KeyVersion),
    #[error("{0} already holds an audit key; it is made once (a new one would not match the vkey auditors hold)")]
    AuditKeyExists(String),
    #[error("OS key store: {0}")]
    OsStore(String),
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
}
