//! Rebuilding state from a ledger: to its head, to a seq, or to a time.
//! Every row folded is first checked against the chain ([`tes_ledger::walk`]).

use tes_ledger::{Head, Ledger, LedgerError, VerifyError};
use tes_proto::Timestamp;

use crate::core::state::{decode_snapshot, State, STATE_SCHEMA};

/// How far to replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    Head,
    /// Up to and including this seq.
    Seq(u64),
    /// Every event up to and including this time (stops at the first later one).
    Time(Timestamp),
}

#[derive(Debug, Clone)]
pub struct Replayed {
    pub state: State,
    /// The last event folded in.
    pub head: Head,
    /// Where the fold started (a snapshot's seq, or 0).
    pub from_snapshot: u64,
}

/// The newest snapshot usable for `until`: one of our schema, consistent
/// with the chain (the ledger checks that), whose bytes decode to a state at
/// the snapshot's seq.
fn best_snapshot(ledger: &Ledger, until: Until) -> Result<Option<(State, Head)>, LedgerError> {
    if matches!(until, Until::Time(_)) {
        return Ok(None);
    }
    for snap in ledger.snapshots()? {
        if let Until::Seq(s) = until {
            if snap.seq > s {
                continue;
            }
        }
        if snap.schema != STATE_SCHEMA {
            continue;
        }
        let Some(state) = decode_snapshot(&snap.state) else {
            continue;
        };
        let Some(hash) = tes_ledger::chain::from_hex(&snap.hash) else {
            continue;
        };
        if state.seq == snap.seq {
            return Ok(Some((
                state,
                Head {
                    seq: snap.seq,
                    hash,
                },
            )));
        }
    }
    Ok(None)
}

pub fn replay(ledger: &Ledger, until: Until) -> Result<Replayed, VerifyError> {
    let (mut state, start) =
        best_snapshot(ledger, until)?.unwrap_or_else(|| (State::default(), Head::EMPTY));
    let to = match until {
        Until::Seq(s) => s,
        _ => u64::MAX,
    };
    let from_snapshot = start.seq;
    let mut head = start;
    let mut last_hash_seq = start.seq;
    let verified = tes_ledger::walk(ledger, start, to, None, |seq, event| {
        if let Until::Time(t) = until {
            if event.time > t {
                return false;
            }
        }
        state.apply(event.time, &event.body);
        last_hash_seq = seq;
        true
    })?;
    if last_hash_seq == verified.head.seq {
        head = verified.head;
    } else if last_hash_seq > 0 {
        // Stopped early (a time bound): report the last folded row's hash.
        head = ledger_head_at(ledger, last_hash_seq)?;
    }
    Ok(Replayed {
        state,
        head,
        from_snapshot,
    })
}

fn ledger_head_at(ledger: &Ledger, seq: u64) -> Result<Head, LedgerError> {
    let mut found = Head::EMPTY;
    ledger.for_each_row(seq, seq, |row| {
        found = Head {
            seq: row.seq,
            hash: tes_ledger::chain::from_hex(&row.hash).unwrap_or_default(),
        };
        Ok::<_, LedgerError>(false)
    })?;
    Ok(found)
}
