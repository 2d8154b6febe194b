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
}

/// Folds the ledger from seq 1, verifying every row on the way: a row
/// edited, dropped or swapped anywhere — before a snapshot too — stops the
/// replay at its seq. (Snapshots are no longer a starting point: trusting
/// one would leave everything before it unchecked. `tes audit verify`
/// checks them against this fold.)
pub fn replay(ledger: &Ledger, until: Until) -> Result<Replayed, VerifyError> {
    let (mut state, start) = (State::default(), Head::EMPTY);
    let to = match until {
        Until::Seq(s) => s,
        _ => u64::MAX,
    };
    let mut head = start;
    let mut last_hash_seq = start.seq;
    let verified = tes_ledger::walk(ledger, start, to, None, |seq, event| {
        if let Until::Time(t) = until {
            if event.time > t {
                return false;
            }
        }
        state.apply_envelope(&event);
        last_hash_seq = seq;
        true
    })?;
    if last_hash_seq == verified.head.seq {
        head = verified.head;
    } else if last_hash_seq > 0 {
        // Stopped early (a time bound): report the last folded row's hash.
        head = ledger_head_at(ledger, last_hash_seq)?;
    }
    Ok(Replayed { state, head })
}

/// The state at the head for a quick look (`tes status`): from the newest
/// snapshot that matches the chain and its digest, folding and verifying
/// only the rows after it; from seq 1 when there is none. Returns the seq
/// the verified fold started after (0: all of it). The rows before a
/// snapshot are verified by `tes audit verify` and every writer's start,
/// not by this.
pub fn latest(ledger: &Ledger) -> Result<(Replayed, u64), VerifyError> {
    let snapshot = ledger
        .snapshots()?
        .into_iter()
        .filter(|s| s.schema == STATE_SCHEMA)
        .find_map(|s| {
            let state = decode_snapshot(&s.state)?;
            let hash = tes_ledger::chain::from_hex(&s.hash)?;
            Some((state, Head { seq: s.seq, hash }))
        });
    let Some((mut state, start)) = snapshot else {
        return replay(ledger, Until::Head).map(|r| (r, 0));
    };
    let verified = tes_ledger::walk(ledger, start, u64::MAX, None, |_, event| {
        state.apply_envelope(&event);
        true
    })?;
    Ok((
        Replayed {
            state,
            head: verified.head,
        },
        start.seq,
    ))
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
