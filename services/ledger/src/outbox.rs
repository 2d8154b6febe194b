//! The outbox: SQLite is the truth and the bus the transport, so events are
//! published after they commit, in ledger order, from a cursor kept in the
//! ledger file (table `outbox`). A publisher that restarts or reconnects
//! resumes after the last seq it had confirmed, and sends what it missed.
//!
//! The outbox has a connection of its own (WAL lets it read beside the
//! writer) and never touches `events`; it belongs to the ledger's writer
//! (Version Management), which opens it after the ledger.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use tes_proto::{Envelope, Event};

use crate::store::classify;
use crate::{Ledger, LedgerError};

pub struct Outbox {
    /// Reads and writes the cursor.
    conn: Connection,
    /// Reads the events.
    reader: Ledger,
    path: PathBuf,
    name: String,
}

impl Outbox {
    /// Opens the outbox called `name` of an existing ledger.
    pub fn open(path: &Path, name: &str) -> Result<Outbox, LedgerError> {
        let conn = Connection::open(path).map_err(|e| classify(path, e))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| classify(path, e))?;
        // The cursor is only a hint of progress: a crash that loses its last
        // advances makes the publisher send those events again, which the
        // stream (Nats-Msg-Id) and every follower (Tes-Seq) drop as
        // duplicates. So advancing it costs no fsync of its own (WAL with
        // NORMAL: durable at the next checkpoint) — it was half an fsync per
        // signature at one request in flight.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| classify(path, e))?;
        let reader = Ledger::open_reader(path)?;
        Ok(Outbox {
            conn,
            reader,
            path: path.to_path_buf(),
            name: name.to_string(),
        })
    }

    /// The last seq confirmed published (0: nothing yet).
    pub fn cursor(&self) -> Result<u64, LedgerError> {
        self.conn
            .query_row(
                "SELECT seq FROM outbox WHERE name = ?1",
                [&self.name],
                |r| r.get(0),
            )
            .optional()
            .map(|s| s.unwrap_or(0))
            .map_err(|e| classify(&self.path, e))
    }

    /// Records that everything up to `seq` is published.
    pub fn advance(&self, seq: u64) -> Result<(), LedgerError> {
        self.conn
            .execute(
                "INSERT INTO outbox (name, seq) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET seq = max(seq, excluded.seq)",
                params![self.name, seq],
            )
            .map(|_| ())
            .map_err(|e| classify(&self.path, e))
    }

    /// Up to `limit` committed events after `seq`, in order.
    pub fn after(
        &self,
        seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Envelope<Event>)>, LedgerError> {
        let mut out = Vec::new();
        self.reader.for_each_row(seq + 1, u64::MAX, |row| {
            out.push((row.seq, row.decode()?));
            Ok::<_, LedgerError>(out.len() < limit)
        })?;
        Ok(out)
    }
}
