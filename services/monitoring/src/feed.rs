//! The ledger's events, each exactly once and in ledger order, for the
//! observers (Monitoring, Alert, Telemetry's event log): first what is
//! already there, then what is appended, with a mark between the two.
//!
//! Two sources give the same feed:
//! - the ledger file itself, read-only (a process that can see the data
//!   directory: the embedded daemon), each row checked against the chain;
//! - `TES_EVENTS` on NATS (an observer anywhere), where each ledger event
//!   carries its seq (`Tes-Seq`) and `EventStream::follow` drops a repeat
//!   of a seq already yielded.

use std::path::PathBuf;
use std::time::Duration;

use tes_bus::jetstream::{EventStream, Followed};
use tes_bus::BusError;
use tes_ledger::Tail;
use tes_proto::{Envelope, Event, ThreadId};
use tokio::sync::mpsc;

/// How often the ledger file is looked at for new rows.
pub const POLL_EVERY: Duration = Duration::from_millis(100);
/// Rows read per look.
const BATCH: usize = 1024;

#[derive(Debug, Clone)]
pub enum Source {
    /// The ledger file (read-only).
    Ledger(PathBuf),
    /// `TES_EVENTS` on a NATS server.
    Stream(Box<EventStream>),
}

impl Source {
    /// Whether the ledger holds event `id` at `seq`, when that can be told:
    /// how a follower that keeps its place in a file (the event log) finds
    /// that the ledger was restored from an older copy and its place is gone.
    /// Only the ledger file can go back; `TES_EVENTS` cannot (a writer whose
    /// ledger was restored takes back from it what it had published), so for
    /// the stream, and for a ledger that cannot be read, the answer is `None`.
    pub fn holds(&self, seq: u64, id: &str) -> Option<bool> {
        match self {
            Source::Ledger(path) => {
                let ledger = tes_ledger::Ledger::open_reader(path).ok()?;
                let mut found = None;
                ledger
                    .for_each_raw(seq, seq, |row| {
                        found = Some(row.id.to_string());
                        Ok::<_, tes_ledger::LedgerError>(false)
                    })
                    .ok()?;
                Some(found.as_deref() == Some(id))
            }
            Source::Stream(_) => None,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Item {
    /// A ledger event and its seq.
    Event(u64, Box<Envelope<Event>>),
    /// Everything that was in the ledger when the feed started has been
    /// fed; what follows is new. Sent once.
    CaughtUp,
}

/// Starts feeding the ledger events after seq `after` whose thread is one
/// of `threads`. The feed stops when the receiver is dropped.
pub async fn start(
    source: Source,
    threads: &[ThreadId],
    after: u64,
) -> Result<mpsc::Receiver<Item>, BusError> {
    let (tx, rx) = mpsc::channel(BATCH * 4);
    let threads = threads.to_vec();
    match source {
        Source::Ledger(path) => {
            std::thread::Builder::new()
                .name("tes-ledger-feed".into())
                .spawn(move || from_ledger(path, threads, after, tx))
                .expect("spawn the ledger feed thread");
        }
        Source::Stream(stream) => {
            // `follow` yields each ledger seq once, in order.
            let mut followed = stream.follow(&threads).await?;
            tokio::spawn(async move {
                while let Some(f) = followed.recv().await {
                    let item = match f {
                        Followed::Event {
                            ledger_seq: Some(seq),
                            event,
                        } if seq > after => Item::Event(seq, event),
                        Followed::CaughtUp => Item::CaughtUp,
                        // Bus-only events, and what the caller already has.
                        Followed::Event { .. } => continue,
                    };
                    if tx.send(item).await.is_err() {
                        return;
                    }
                }
            });
        }
    }
    Ok(rx)
}

fn from_ledger(path: PathBuf, threads: Vec<ThreadId>, after: u64, tx: mpsc::Sender<Item>) {
    let mut tail = None;
    let mut caught_up = false;
    let mut complained = false;
    loop {
        if tx.is_closed() {
            return;
        }
        let tail = match &mut tail {
            Some(t) => t,
            None => match Tail::open(&path) {
                Ok(t) => tail.insert(t),
                Err(error) => {
                    if !complained {
                        tracing::warn!(%error, path = %path.display(), "cannot read the ledger yet; retrying");
                        complained = true;
                    }
                    std::thread::sleep(POLL_EVERY * 10);
                    continue;
                }
            },
        };
        match tail.next_batch(BATCH) {
            Ok(rows) if rows.is_empty() => {
                if !caught_up {
                    caught_up = true;
                    if tx.blocking_send(Item::CaughtUp).is_err() {
                        return;
                    }
                }
                std::thread::sleep(POLL_EVERY);
            }
            Ok(rows) => {
                for (seq, event) in rows {
                    if seq > after
                        && threads.contains(&event.thread)
                        && tx.blocking_send(Item::Event(seq, Box::new(event))).is_err()
                    {
                        return;
                    }
                }
            }
            Err(error) => {
                // A broken chain is not counted past; `tes audit verify`
                // names the row. Look again later in case it was a torn read.
                tracing::error!(%error, path = %path.display(), "the ledger does not verify; not following past the last sound row");
                std::thread::sleep(POLL_EVERY * 50);
            }
        }
    }
}
