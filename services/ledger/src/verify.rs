//! Chain verification: walks every row and names the first one that is wrong.

use std::fmt;

use crate::chain::{self, Hash, RowFields};
use crate::store::{Head, Ledger};
use crate::LedgerError;
use tes_proto::{Envelope, Event};

/// A sound chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub events: u64,
    pub head: Head,
}

/// The first bad row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chain broken at seq {seq}: {reason}")]
pub struct ChainBreak {
    pub seq: u64,
    pub reason: BreakReason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakReason {
    /// A seq is missing or out of order (rows deleted or inserted).
    Gap { expected: u64 },
    /// `prev_hash` is not the previous row's hash.
    Link,
    /// The stored hash does not match the row's content.
    Hash,
    /// The row's content does not decode.
    Decode(String),
    /// The ledger ends before (or differs at) a head seen elsewhere.
    HeadMismatch { expected_hash: String },
}

impl fmt::Display for BreakReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BreakReason::Gap { expected } => {
                write!(f, "expected seq {expected} here (rows were removed or inserted)")
            }
            BreakReason::Link => f.write_str("prev_hash does not match the previous row's hash"),
            BreakReason::Hash => f.write_str("the row's content does not match its hash (it was changed)"),
            BreakReason::Decode(e) => write!(f, "the row does not decode: {e}"),
            BreakReason::HeadMismatch { expected_hash } => write!(
                f,
                "a checkpoint says this seq has hash {expected_hash}, but the ledger differs or ends before it (truncated or replaced)"
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Broken(#[from] ChainBreak),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Walks the whole chain. `checkpoint` is a head (seq, hash) seen elsewhere,
/// e.g. on the bus: the ledger must contain it, which catches a truncated or
/// wholly replaced file that is otherwise self-consistent.
pub fn verify(ledger: &Ledger, checkpoint: Option<(u64, String)>) -> Result<Verified, VerifyError> {
    walk(ledger, Head::EMPTY, u64::MAX, checkpoint, |_, _| true)
}

/// Walks the chain from just after `start` (a head already trusted, e.g. a
/// snapshot's) up to seq `to`, checking every row as [`verify`] does and
/// handing each decoded event to `visit`, which may stop the walk early by
/// returning `false`. Replay and verification share this one loop, so a
/// replay never folds a row that verification would reject.
pub fn walk(
    ledger: &Ledger,
    start: Head,
    to: u64,
    checkpoint: Option<(u64, String)>,
    mut visit: impl FnMut(u64, Envelope<Event>) -> bool,
) -> Result<Verified, VerifyError> {
    walk_hashed(ledger, start, to, checkpoint, |seq, _, event| {
        visit(seq, event)
    })
}

/// [`walk`], also handing each row's (verified) hash to `visit`: what a
/// Merkle tree over the ledger is built from.
pub fn walk_hashed(
    ledger: &Ledger,
    start: Head,
    to: u64,
    checkpoint: Option<(u64, String)>,
    mut visit: impl FnMut(u64, &Hash, Envelope<Event>) -> bool,
) -> Result<Verified, VerifyError> {
    let mut prev = start.hash;
    let mut expected = start.seq + 1;
    let mut checkpoint_ok = checkpoint.as_ref().is_none_or(|(seq, _)| *seq <= start.seq);
    ledger
        .for_each_raw(start.seq + 1, to, |row| {
            let brk = |reason| {
                Err(VerifyError::Broken(ChainBreak {
                    seq: row.seq,
                    reason,
                }))
            };
            if row.seq != expected {
                return brk(BreakReason::Gap { expected });
            }
            if chain::from_hex(row.prev_hash) != Some(prev) {
                return brk(BreakReason::Link);
            }
            let envelope = match row.decode() {
                Ok(e) => e,
                Err(LedgerError::Decode { error, .. }) => {
                    return brk(BreakReason::Decode(error.to_string()))
                }
                Err(other) => return Err(other.into()),
            };
            // Hash the stored columns as they are (not a re-encoding), so a change
            // to any column, the key_version column included, is caught.
            let id = *envelope.id.0.as_bytes();
            let causation = envelope.causation_id.map(|m| *m.0.as_bytes());
            let correlation = envelope.correlation_id.map(|m| *m.0.as_bytes());
            let hash = chain::row_hash(
                &prev,
                &RowFields {
                    seq: row.seq,
                    id: &id,
                    ts: row.ts,
                    thread: envelope.thread.as_u16(),
                    kind: row.kind,
                    key_version: row.key_version,
                    causation_id: causation.as_ref(),
                    correlation_id: correlation.as_ref(),
                    schema: row.schema,
                    payload: row.payload,
                },
            );
            if chain::from_hex(row.hash) != Some(hash) {
                return brk(BreakReason::Hash);
            }
            if let Some((seq, ref expected_hash)) = checkpoint {
                if row.seq == seq {
                    if row.hash != expected_hash.as_str() {
                        return brk(BreakReason::HeadMismatch {
                            expected_hash: expected_hash.clone(),
                        });
                    }
                    checkpoint_ok = true;
                }
            }
            prev = hash;
            expected += 1;
            Ok(visit(row.seq, &hash, envelope))
        })
        .map_err(|e| match e {
            // A row that cannot even be read is a break at that row.
            VerifyError::Ledger(LedgerError::Decode { seq, error }) => {
                VerifyError::Broken(ChainBreak {
                    seq,
                    reason: BreakReason::Decode(error.to_string()),
                })
            }
            other => other,
        })?;
    if !checkpoint_ok {
        let (seq, expected_hash) = checkpoint.expect("checked above");
        return Err(ChainBreak {
            seq,
            reason: BreakReason::HeadMismatch { expected_hash },
        }
        .into());
    }
    Ok(Verified {
        events: expected - 1 - start.seq,
        head: Head {
            seq: expected - 1,
            hash: prev,
        },
    })
}
