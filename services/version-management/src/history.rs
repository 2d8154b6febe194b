//! `tes.cmd.0x6001.history`: the newest ledger events, for the admin
//! page's feed on load. Read on a reader connection of its own, so the
//! engine never waits for it and nothing is written; walked backwards from
//! the head in chunks, so a filter that matches rarely costs a bounded scan
//! ([`HISTORY_SCAN`] rows), never the whole ledger.

use std::path::Path;

use tes_ledger::Ledger;
use tes_proto::command::{History, HISTORY_SCAN, MAX_HISTORY};
use tes_proto::event::kind;
use tes_proto::reply::{HistoryReply, StoredEvent};
use tes_proto::{ErrorCode, ErrorReply};

/// Rows read per step backwards.
const CHUNK: u64 = 1024;

/// Checks a request before anything is read: a limit out of range or an
/// unknown kind is a mistake to say, not to guess around.
pub fn check(request: &History) -> Result<(), ErrorReply> {
    if request.limit == 0 || request.limit > MAX_HISTORY {
        return Err(ErrorReply::new(
            ErrorCode::Malformed,
            format!(
                "history limit {} is out of range (1 to {MAX_HISTORY})",
                request.limit
            ),
        ));
    }
    if let Some(unknown) = request
        .kinds
        .iter()
        .find(|k| !kind::ALL.contains(&k.as_str()))
    {
        return Err(ErrorReply::new(
            ErrorCode::Malformed,
            format!(
                "unknown event kind {unknown:?} (kinds: {})",
                kind::ALL.join(", ")
            ),
        ));
    }
    Ok(())
}

/// The events `request` asks for, oldest first. Blocking: run it off the
/// async workers.
pub fn read(path: &Path, request: &History) -> Result<HistoryReply, ErrorReply> {
    check(request)?;
    let unavailable = |e: tes_ledger::LedgerError| {
        ErrorReply::new(
            ErrorCode::Unavailable,
            format!("the ledger could not be read: {e}"),
        )
    };
    let ledger = Ledger::open_reader(path).map_err(unavailable)?;
    let head_seq = ledger.head().seq;
    let limit = request.limit as usize;
    let matches = |row: &tes_ledger::Row| {
        (request.kinds.is_empty() || request.kinds.contains(&row.kind))
            && request.thread.is_none_or(|t| row.thread == t.token())
    };
    // Newest first while collecting; reversed at the end.
    let mut found: Vec<StoredEvent> = Vec::with_capacity(limit.min(256));
    let mut upto = request
        .before
        .map_or(head_seq, |b| b.saturating_sub(1).min(head_seq));
    let floor = upto.saturating_sub(HISTORY_SCAN);
    while upto > floor && found.len() < limit {
        let from = upto.saturating_sub(CHUNK - 1).max(floor + 1).max(1);
        let mut chunk = Vec::new();
        ledger
            .for_each_row(from, upto, |row| {
                if matches(&row) {
                    chunk.push(row);
                }
                Ok::<_, tes_ledger::LedgerError>(true)
            })
            .map_err(unavailable)?;
        for row in chunk.into_iter().rev() {
            if found.len() == limit {
                // Stopped inside this chunk: older ones start below it.
                upto = found.last().map_or(upto, |e| e.seq);
                return Ok(reply(found, head_seq, Some(upto)));
            }
            let event = row.decode().map_err(|e| {
                ErrorReply::new(
                    ErrorCode::Unavailable,
                    format!("ledger row {} could not be decoded: {e}", row.seq),
                )
            })?;
            found.push(StoredEvent {
                seq: row.seq,
                event,
            });
        }
        upto = from - 1;
    }
    let next = (upto > 0).then_some(upto + 1);
    Ok(reply(found, head_seq, next))
}

fn reply(mut found: Vec<StoredEvent>, head_seq: u64, next_before: Option<u64>) -> HistoryReply {
    found.reverse();
    HistoryReply {
        events: found,
        head_seq,
        next_before,
    }
}
