//! Trust beyond the process: what lets a third party prove that the ledger
//! only ever grew.
//!
//! - [`key`]: the audit key (Ed25519, never an HMAC key): its signed-note
//!   forms (`PRIVATE+KEY+…` and the `vkey` a verifier holds), where it comes
//!   from (`TES_AUDIT_KEY[_FILE]` or the key store).
//! - [`checkpoint`]: a C2SP `tlog-checkpoint` body (origin, tree size, root)
//!   signed as a C2SP `signed-note`; parsing and checking one with a vkey.
//! - [`witness`]: copies of signed checkpoints outside the ledger file (a
//!   directory: `latest` and an append-only history); the bundle store and
//!   NATS keep theirs through the same note bytes.
//! - [`check`]: a ledger against checkpoints: same root at each size, or the
//!   seq where they part.
//!
//! The tree itself is `tes_ledger::merkle`.

pub mod check;
pub mod checkpoint;
pub mod key;
pub mod witness;

pub use check::{check_ledger, Disagreement, LedgerReport};
pub use checkpoint::{Checkpoint, CheckpointError, SignedCheckpoint};
pub use key::{AuditKey, KeyError, Vkey};
pub use witness::{DirWitness, Witness};
