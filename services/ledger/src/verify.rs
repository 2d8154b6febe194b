//! Chain verification: walks every row and names the first one that is wrong.

use std::fmt;

use crate::chain::{self, Hash, RowFields};
use crate::store::{Head, Ledger, RawRow};
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
    let mut check = |row: RawRow<'_>| -> Result<bool, VerifyError> {
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
    };
    let rows = ledger.head().seq.min(to).saturating_sub(start.seq);
    let walked = if rows >= PIPELINE_FROM {
        pipelined(ledger, start.seq + 1, to, &mut check)
    } else {
        ledger.for_each_raw(start.seq + 1, to, check)
    };
    walked.map_err(|e| match e {
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

/// From this many rows on, a walk reads on other threads and checks on the
/// calling one (SQLite's row stepping is more than half the work).
const PIPELINE_FROM: u64 = 20_000;
/// Rows per hand-over between the two.
const BATCH_ROWS: usize = 2048;

/// Rows read by the reader thread: one arena for texts and one for
/// payloads per batch, so a row costs no allocation of its own (and its
/// texts are not checked for UTF-8 a second time).
#[derive(Default)]
struct Batch {
    text: String,
    blobs: Vec<u8>,
    rows: Vec<Stored>,
}

/// A row's numbers, and where its texts and payload are in the arena.
struct Stored {
    seq: u64,
    ts: u64,
    key_version: Option<u32>,
    schema: u16,
    /// id, thread, kind, causation, correlation, payload, prev_hash, hash.
    spans: [(u32, u32); 8],
    has_causation: bool,
    has_correlation: bool,
}

impl Batch {
    fn push(&mut self, r: &RawRow<'_>) {
        let text = &mut self.text;
        let mut span = |t: &str| {
            let start = text.len() as u32;
            text.push_str(t);
            (start, t.len() as u32)
        };
        let mut spans = [
            span(r.id),
            span(r.thread),
            span(r.kind),
            span(r.causation_id.unwrap_or("")),
            span(r.correlation_id.unwrap_or("")),
            (0, 0),
            span(r.prev_hash),
            span(r.hash),
        ];
        spans[5] = (self.blobs.len() as u32, r.payload.len() as u32);
        self.blobs.extend_from_slice(r.payload);
        self.rows.push(Stored {
            seq: r.seq,
            ts: r.ts,
            key_version: r.key_version,
            schema: r.schema,
            spans,
            has_causation: r.causation_id.is_some(),
            has_correlation: r.correlation_id.is_some(),
        });
    }

    fn row(&self, i: usize) -> RawRow<'_> {
        let s = &self.rows[i];
        let range = |k: usize| {
            let (start, len) = s.spans[k];
            start as usize..(start + len) as usize
        };
        let text = |k: usize| &self.text[range(k)];
        RawRow {
            seq: s.seq,
            id: text(0),
            ts: s.ts,
            thread: text(1),
            kind: text(2),
            key_version: s.key_version,
            causation_id: s.has_causation.then(|| text(3)),
            correlation_id: s.has_correlation.then(|| text(4)),
            schema: s.schema,
            payload: &self.blobs[range(5)],
            prev_hash: text(6),
            hash: text(7),
        }
    }
}

/// How many threads read, each on its own connection: chunks of
/// [`BATCH_ROWS`] seqs go to them in turn, and the checker takes them back
/// in seq order.
const READERS: u64 = 2;

/// Reads rows `from..=to` (up to the ledger's head as it is now) on
/// [`READERS`] connections in threads of their own, chunk by chunk in turn,
/// and hands them to `check` on this thread in seq order.
fn pipelined(
    ledger: &Ledger,
    from: u64,
    to: u64,
    check: &mut impl FnMut(RawRow<'_>) -> Result<bool, VerifyError>,
) -> Result<(), VerifyError> {
    let last = ledger.head().seq.min(to);
    if last < from {
        return Ok(());
    }
    let chunk = BATCH_ROWS as u64;
    let chunks = (last - from) / chunk + 1;
    std::thread::scope(|scope| {
        let mut receivers = Vec::new();
        for reader_no in 0..READERS {
            // A chunk, and the error that cut it short (checked after its rows).
            let (tx, rx) = std::sync::mpsc::sync_channel::<(Batch, Option<LedgerError>)>(2);
            receivers.push(rx);
            let path = ledger.path().to_path_buf();
            let reading = std::thread::Builder::new().name(format!("tes-ledger-read-{reader_no}"));
            let spawned = reading.spawn_scoped(scope, move || {
                let reader = match Ledger::open_reader(&path) {
                    Ok(r) => r,
                    Err(e) => return drop(tx.send((Batch::default(), Some(e)))),
                };
                let mut c = reader_no;
                while c < chunks {
                    let lo = from + c * chunk;
                    let hi = (lo + chunk - 1).min(last);
                    let mut batch = Batch::default();
                    let read = reader.for_each_raw(lo, hi, |row| {
                        batch.push(&row);
                        Ok::<_, LedgerError>(true)
                    });
                    // What was read before a row that cannot be read is
                    // checked first; the checker stopping stops the reading.
                    let failed = read.is_err();
                    if tx.send((batch, read.err())).is_err() || failed {
                        return;
                    }
                    c += READERS;
                }
            });
            if let Err(error) = spawned {
                return Err(VerifyError::Ledger(LedgerError::Io {
                    path: ledger.path().to_path_buf(),
                    error,
                }));
            }
        }
        // The receivers are moved in: an early return drops them, which
        // ends the readers.
        let receivers = receivers;
        for c in 0..chunks {
            let rx = &receivers[(c % READERS) as usize];
            let Ok((batch, error)) = rx.recv() else {
                // A reader ends early only after a chunk with its error.
                break;
            };
            for i in 0..batch.rows.len() {
                if !check(batch.row(i))? {
                    return Ok(());
                }
            }
            if let Some(e) = error {
                return Err(e.into());
            }
        }
        Ok(())
    })
}
