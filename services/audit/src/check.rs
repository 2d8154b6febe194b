//! A ledger against signed checkpoints: one walk of the chain (every row
//! checked, as `tes_ledger::walk` does) building the Merkle tree, comparing
//! its root at each checkpoint's size.

use tes_ledger::merkle::Frontier;
use tes_ledger::{walk_hashed, Head, Ledger, Verified, VerifyError};
use tes_proto::{Envelope, Event};

use crate::checkpoint::Checkpoint;

/// Where the ledger parts from what was signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disagreement {
    /// A checkpoint covers more events than the ledger has: the tail was
    /// cut off, or the file was replaced by an older or another one.
    Shorter { ledger: u64, checkpoint: u64 },
    /// The ledger's tree at `size` has another root: some event at or before
    /// seq `size` (and after `agrees_up_to`, the largest checkpoint that
    /// still matches) is not the one that was signed.
    Differs {
        size: u64,
        agrees_up_to: u64,
        root: String,
        signed_root: String,
    },
}

impl Disagreement {
    /// The first seq known to be wrong or missing.
    pub fn first_bad_seq(&self) -> u64 {
        match self {
            Disagreement::Shorter { ledger, .. } => ledger + 1,
            Disagreement::Differs { agrees_up_to, .. } => agrees_up_to + 1,
        }
    }
}

impl std::fmt::Display for Disagreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Disagreement::Shorter { ledger, checkpoint } => write!(
                f,
                "the ledger ends at seq {ledger} but a signed checkpoint covers seq {checkpoint}: seqs {}..={checkpoint} are missing (truncated, or the file was replaced)",
                ledger + 1
            ),
            Disagreement::Differs {
                size,
                agrees_up_to,
                root,
                signed_root,
            } => {
                let range = if agrees_up_to + 1 == *size {
                    format!("seq {size}")
                } else {
                    format!("a seq in {}..={size}", agrees_up_to + 1)
                };
                write!(
                    f,
                    "the ledger's Merkle root at seq {size} is {root}, the signed checkpoint says {signed_root}: {range} was rewritten or the history re-chained{}",
                    if *agrees_up_to > 0 {
                        format!(" (it still agrees with the checkpoint at seq {agrees_up_to})")
                    } else {
                        String::new()
                    }
                )
            }
        }
    }
}

/// What one walk found.
#[derive(Debug, Clone)]
pub struct LedgerReport {
    pub verified: Verified,
    /// The ledger's tree at its head.
    pub root: tes_ledger::Hash,
    /// Checkpoint sizes whose root the ledger matches.
    pub agreed: Vec<u64>,
    pub disagreement: Option<Disagreement>,
}

/// Walks the whole ledger (every row verified) and compares it with
/// `checkpoints` (already checked for their signature), handing each event
/// to `visit` on the way.
pub fn check_ledger(
    ledger: &Ledger,
    checkpoints: &[Checkpoint],
    mut visit: impl FnMut(u64, Envelope<Event>),
) -> Result<LedgerReport, VerifyError> {
    let mut wanted: Vec<&Checkpoint> = checkpoints.iter().collect();
    wanted.sort_by_key(|c| c.size);
    let mut next = 0;
    let mut frontier = Frontier::default();
    let mut agreed = Vec::new();
    let mut disagreement = None;
    let mut compare = |frontier: &Frontier, next: &mut usize, agreed: &mut Vec<u64>| {
        while let Some(c) = wanted.get(*next).filter(|c| c.size == frontier.size()) {
            *next += 1;
            let root = frontier.root();
            if root == c.root {
                if agreed.last() != Some(&c.size) {
                    agreed.push(c.size);
                }
            } else if disagreement.is_none() {
                disagreement = Some(Disagreement::Differs {
                    size: c.size,
                    agrees_up_to: agreed.last().copied().unwrap_or(0),
                    root: hex::encode(root),
                    signed_root: c.root_hex(),
                });
            }
        }
    };
    // A checkpoint of the empty tree.
    compare(&frontier, &mut next, &mut agreed);
    let verified = walk_hashed(ledger, Head::EMPTY, u64::MAX, None, |seq, hash, event| {
        frontier.push(hash);
        compare(&frontier, &mut next, &mut agreed);
        visit(seq, event);
        true
    })?;
    if disagreement.is_none() {
        if let Some(c) = wanted.get(next) {
            disagreement = Some(Disagreement::Shorter {
                ledger: verified.head.seq,
                checkpoint: c.size,
            });
        }
    }
    Ok(LedgerReport {
        verified,
        root: frontier.root(),
        agreed,
        disagreement,
    })
}
