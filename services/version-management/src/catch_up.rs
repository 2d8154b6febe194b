//! A writer that starts behind `TES_EVENTS` takes back what it published.
//!
//! The ledger file is the truth, but on NATS every committed event was also
//! stored in `TES_EVENTS` (the outbox publishes after commit). When the file
//! is older than the stream — restored from a backup (RUNBOOK §9), or copied
//! from a host that was lost — starting to write at once would give new
//! events the seqs the stream already holds with other content: a fork, seen
//! by every witness, and skipped by every follower (they drop a seq they
//! have seen). So before anything is decided, the events the stream holds
//! past the ledger's head are appended again, byte for byte the same rows
//! (same ids, times and payloads, so the same hashes), and the chain goes on
//! from where it really was.
//!
//! Refused, with the seq named and nothing appended, when the two disagree
//! (the stream's event at the ledger's head is another one, or one of the
//! stream's events is already in the file under another seq: this file went
//! its own way after the backup), when the stream's seqs do not follow on
//! from the head, or when the file does not verify.

use tes_bus::jetstream::EventStream;
use tes_ledger::{Ledger, LedgerError, Outbox};

/// How many events are appended per transaction.
const BATCH: usize = 1024;
/// How far the clocks of the writer and the NATS server may disagree.
const CLOCK_MARGIN_SECS: i64 = 600;

/// Why a writer did not catch up. `Stream` and `Broken` carry their cause
/// as their source (printed after them, as `{:#}` prints a chain).
#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    #[error("reading TES_EVENTS to bring the ledger up to date")]
    Stream(#[from] tes_bus::BusError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(
        "the restored ledger does not verify, so nothing was taken back from TES_EVENTS onto it"
    )]
    Broken(#[from] tes_ledger::VerifyError),
    #[error("the ledger and TES_EVENTS disagree at seq {seq}: the ledger holds event {ours}, the stream {theirs} — this file went its own way after the stream recorded that seq (a restored backup that was written to without NATS?); `tes audit verify` shows where, and a newer backup or the stream's writer is the one to keep")]
    Forked {
        seq: u64,
        ours: String,
        theirs: String,
    },
    #[error("TES_EVENTS does not follow on from the ledger's head: after seq {head} it holds seq {found} first; not writing on a ledger with a hole")]
    Gap { head: u64, found: u64 },
}

/// Appends the events `stream` holds past `ledger`'s head and moves the
/// outbox `cursor` past them (they are published already). Returns how many
/// were taken back.
pub async fn from_stream(
    ledger: &mut Ledger,
    stream: &EventStream,
    cursor: &str,
) -> Result<u64, CatchUpError> {
    let Some(identity) = ledger.identity()? else {
        return Ok(0); // a new ledger has nothing published yet
    };
    let head = ledger.head().seq;
    let ours = ledger
        .events_from(head)?
        .into_iter()
        .next()
        .map(|(_, e)| e)
        .expect("a ledger with an identity has a head row");
    // Nothing published after the head is older than the head's event; the
    // margin covers clocks that disagree (the writer's, the NATS server's).
    let not_before = (ours.time.as_millis() / 1000) as i64 - CLOCK_MARGIN_SECS;
    let tail = stream
        .ledger_tail(&tes_ledger::chain::to_hex(&identity), head, not_before)
        .await?;
    if let Some(theirs) = tail.at.filter(|theirs| *theirs != ours.id) {
        return Err(CatchUpError::Forked {
            seq: head,
            ours: ours.id.to_string(),
            theirs: theirs.to_string(),
        });
    }
    if tail.after.is_empty() {
        return Ok(0);
    }
    // Everything is checked before anything is appended, so a refusal
    // leaves the file as it was: the stream's seqs follow on from the head,
    // none of its events is already here under another seq (this file wrote
    // it after the backup: the same fork, seen from the other side), and the
    // file itself verifies (appending to a broken chain would bury the
    // break under good rows).
    for (expected, (seq, event)) in (head + 1..).zip(&tail.after) {
        if *seq != expected {
            return Err(CatchUpError::Gap {
                head: expected - 1,
                found: *seq,
            });
        }
        if let Some(at) = ledger.seq_of(&event.id)? {
            return Err(CatchUpError::Forked {
                seq: *seq,
                ours: format!("{} (at seq {at})", event.id),
                theirs: event.id.to_string(),
            });
        }
    }
    tes_ledger::verify(ledger, None)?;
    for chunk in tail.after.chunks(BATCH) {
        let events: Vec<_> = chunk.iter().map(|(_, e)| e.clone()).collect();
        ledger.append(&events)?;
    }
    Outbox::open(ledger.path(), cursor)?.advance(ledger.head().seq)?;
    Ok(tail.after.len() as u64)
}
