//! The ledger: one SQLite file, table `events`, append-only, hash-chained.
//!
//! - [`chain`]: what a row's hash covers (pure; no SQLite).
//! - [`codec`]: event bodies to ledger payloads and back, with upcasting of
//!   older schema versions.
//! - [`store`]: the SQLite file: schema and triggers, the writer lock,
//!   group append, reading, snapshots.
//! - [`merkle`]: the RFC 6962 tree over the row hashes (checkpoints, proofs).
//! - [`verify`]: walks the chain and names the first bad seq.
//! - [`outbox`]: what a publisher has sent so far, and what follows.
//! - [`tail`]: what a reader outside the writer follows, verified row by row.
//!
//! Invariants: rows are never updated or deleted (the database's triggers
//! refuse it); `seq` runs 1, 2, 3, … without gaps; each row's `prev_hash` is
//! the previous row's `hash`; an event id appears at most once. Only one
//! process holds the writer lock (in TES, Version Management, 0x6001).

pub mod chain;
pub mod codec;
mod error;
pub mod merkle;
pub mod outbox;
pub mod store;
pub mod tail;
pub mod verify;

pub use chain::{Hash, GENESIS};
pub use error::{DecodeError, LedgerError};
pub use outbox::Outbox;
pub use store::{Appended, Head, Ledger, RawRow, Row, Snapshot};
pub use tail::Tail;
pub use verify::{verify, walk, walk_hashed, BreakReason, ChainBreak, Verified, VerifyError};

/// The ledger's file name inside a data directory (DESIGN.md §6).
pub const LEDGER_FILE: &str = "ledger.db";
