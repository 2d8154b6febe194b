//! The pure core of Version Management: no I/O, no clock, no randomness.
//!
//! - [`state`]: the state every event folds into ([`State::apply`], [`evolve`]).
//! - [`decide`]: commands to events, or a [`Rejection`].
//! - [`signing`]: which version signs (pin, fallback, dual signatures) and
//!   the audit events a signature produces.
//! - [`manifest`]: semver bumps and the RFC 8785 canonical manifest.
//! - [`outcome`]: the original reply of a retried command, from its events.
//!
//! The shell ([`crate::engine`]) passes time and the keys this signer holds
//! in, and appends what comes out. Replaying the ledger through [`evolve`]
//! gives exactly the state the live actor had.

pub mod decide;
pub mod manifest;
pub mod outcome;
pub mod policy;
pub mod signing;
pub mod state;

pub use decide::{decide, Command, GraceChange, Rejection};
pub use policy::Policy;
pub use state::{evolve, KeyRecord, State};

use std::collections::BTreeMap;

use tes_proto::{Fingerprint, KeyVersion, Timestamp};

/// What the shell tells the core about the moment of a decision.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub now: Timestamp,
    pub policy: &'a Policy,
    /// The versions whose material this signer holds, with fingerprints.
    pub held: &'a BTreeMap<KeyVersion, Fingerprint>,
}
