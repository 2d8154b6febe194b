//! A second writer on a deployment whose lease another holds waits as a
//! standby instead of exiting: it follows `TES_EVENTS` into a ledger of its
//! own (the same rows, so the same hash chain, Merkle tree and checkpoints;
//! `tes audit verify` passes on it) and, once the holder's lease lapses,
//! takes the lease and hands its ledger back to become the writer, from
//! the last event the stream stored.
//!
//! On a cluster a writer acknowledges nothing before the stream has it, so
//! rows a lost writer committed but never published were never promised to
//! anyone. A standby whose file holds such rows (it was that writer) finds
//! the stream's history going another way at their seq: [`StandbyError::
//! Forked`], on which the daemon sets the file aside and follows again from
//! an empty one.

use std::future::Future;
use std::time::Duration;

use tes_bus::jetstream::Followed;
use tes_ledger::{Ledger, LedgerError};
use tes_proto::{Envelope, Event};
use tokio::sync::mpsc;

/// How often a caught-up standby tries the lease.
pub const TRY_EVERY: Duration = Duration::from_secs(1);
/// The most followed events one transaction takes.
const MAX_BATCH: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum StandbyError {
    #[error("following TES_EVENTS as a standby writer")]
    Stream(#[from] tes_bus::BusError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("TES_EVENTS ended while this standby followed it")]
    Ended,
    #[error(
        "TES_EVENTS holds ledger seq {found} after seq {head}: not following a ledger with a hole"
    )]
    Gap { head: u64, found: u64 },
    #[error("this standby's ledger holds another event at seq {seq} than TES_EVENTS ({theirs}): it went its own way; give the standby an empty data directory")]
    Forked { seq: u64, theirs: String },
}

/// Where a standby is, each [`TRY_EVERY`]: what its caller announces, and
/// whether it may try the lease yet.
#[derive(Debug, Clone)]
pub struct Progress {
    /// The ledger's identity (hex hash of seq 1), once it has one.
    pub identity: Option<String>,
    /// The last seq followed into the ledger.
    pub head_seq: u64,
    /// Everything the stream held at the start has been followed.
    pub caught_up: bool,
}

/// Follows `events` (the ledger's events from a stream: `TES_LEDGER` on a
/// cluster, else `TES_EVENTS`) into `ledger` until `try_lead` (called
/// every [`TRY_EVERY`] with the [`Progress`]; it should try the lease only
/// once caught up) returns the lease. The outbox `cursor` of that stream
/// moves up with every transaction of followed rows (those rows are in
/// the stream: a restart, or this file's writer, need not send or check
/// them again). Returns the ledger and
/// the lease, and the last seq the stream showed.
pub async fn follow_until_leader<L, F, Fut>(
    mut ledger: Ledger,
    mut events: mpsc::Receiver<Followed>,
    cursor: &str,
    mut try_lead: F,
) -> Result<(Ledger, L, u64), StandbyError>
where
    F: FnMut(Progress) -> Fut,
    Fut: Future<Output = Option<L>>,
{
    let mut tick = tokio::time::interval(TRY_EVERY);
    let mut caught_up = false;
    // The last seq the stream has shown: a file with rows past it (its
    // writer died before publishing them) still has those to publish.
    let mut in_stream = 0;
    let mut batch: Vec<Envelope<Event>> = Vec::with_capacity(MAX_BATCH);
    // The outbox cursor as last written here.
    let mut recorded = 0;
    loop {
        tokio::select! {
            followed = events.recv() => {
                // What queued up behind it goes into the same transaction
                // (a standby keeps up with a writer's group commits).
                let mut next = Some(followed.ok_or(StandbyError::Ended)?);
                while let Some(followed) = next.take() {
                    match followed {
                        Followed::Event { ledger_seq: Some(seq), event } => {
                            in_stream = in_stream.max(seq);
                            let stored = ledger.head().seq;
                            let head = stored + batch.len() as u64;
                            if seq <= head {
                                // Seen already (this file followed it before a
                                // restart, or a re-follow gave it twice).
                                let same = match seq.checked_sub(stored + 1) {
                                    Some(i) => batch.get(i as usize).map(|e| e.id) == Some(event.id),
                                    None => ledger.seq_of(&event.id)? == Some(seq),
                                };
                                if !same {
                                    return Err(StandbyError::Forked { seq, theirs: event.id.to_string() });
                                }
                            } else if seq != head + 1 {
                                return Err(StandbyError::Gap { head, found: seq });
                            } else {
                                batch.push(*event);
                            }
                        }
                        Followed::Event { ledger_seq: None, .. } => {}
                        Followed::CaughtUp => {
                            caught_up = true;
                            tracing::info!(head = ledger.head().seq + batch.len() as u64, "standby writer caught up with the stream; waiting for the writer lease");
                        }
                    }
                    if batch.len() < MAX_BATCH {
                        next = events.try_recv().ok();
                    }
                }
                // The rows and the outbox cursor of the stream they came
                // from, in one transaction.
                if !batch.is_empty() || in_stream > recorded {
                    ledger.append_published(&batch, cursor, in_stream)?;
                    recorded = in_stream.min(ledger.head().seq);
                    batch.clear();
                }
            },
            _ = tick.tick() => {
                let progress = Progress {
                    identity: ledger.identity()?.map(|h| tes_ledger::chain::to_hex(&h)),
                    head_seq: ledger.head().seq,
                    caught_up,
                };
                if let Some(lease) = try_lead(progress).await {
                    return Ok((ledger, lease, in_stream));
                }
            }
        }
    }
}
