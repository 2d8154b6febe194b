//! The SQLite file: schema, append-only triggers, the writer lock, group
//! append, reading, and snapshots.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};
use tes_proto::{Envelope, Event};

use crate::chain::{self, Hash, RowFields, GENESIS};
use crate::codec::{self, Draft};
use crate::merkle::Frontier;
use crate::{DecodeError, LedgerError};

/// How much of the file readers map into memory (address space, not RAM).
const MMAP_SIZE: i64 = 1 << 34;

/// The on-disk format this build writes and reads (the `meta` table).
pub const FORMAT_VERSION: u32 = 1;

/// The ledger's tables, indexes and triggers, as a new file gets them
/// (public so the benchmark's raw-SQLite baseline inserts into the same
/// shape of table that we do).
pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq            INTEGER PRIMARY KEY,
    id             TEXT    NOT NULL UNIQUE,
    ts             INTEGER NOT NULL,
    thread         TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    key_version    INTEGER,
    causation_id   TEXT,
    correlation_id TEXT,
    schema         INTEGER NOT NULL,
    payload        BLOB    NOT NULL,
    prev_hash      TEXT    NOT NULL,
    hash           TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS events_causation ON events (causation_id) WHERE causation_id IS NOT NULL;
CREATE TRIGGER IF NOT EXISTS events_append_only_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events is append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS events_append_only_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'events is append-only: DELETE refused'); END;
-- How far each publisher got (e.g. the JetStream outbox): a cursor, not a
-- fact; it may be updated, and it is not part of the chain.
CREATE TABLE IF NOT EXISTS outbox (
    name TEXT PRIMARY KEY,
    seq  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    seq          INTEGER PRIMARY KEY,
    hash         TEXT    NOT NULL,
    schema       INTEGER NOT NULL,
    state        BLOB    NOT NULL,
    state_sha256 TEXT    NOT NULL
);
"#;

/// Bytes of write-ahead log kept on disk after a checkpoint (64 MiB).
const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// The last row: what the next append chains onto.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: Hash,
}

impl Head {
    pub const EMPTY: Head = Head {
        seq: 0,
        hash: GENESIS,
    };

    pub fn hash_hex(&self) -> String {
        chain::to_hex(&self.hash)
    }
}

/// The outcome of appending one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    /// The same event (same id, same content) was already there.
    pub duplicate: bool,
}

/// A stored row, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub seq: u64,
    pub id: String,
    pub ts: u64,
    pub thread: String,
    pub kind: String,
    pub key_version: Option<u32>,
    pub causation_id: Option<String>,
    pub correlation_id: Option<String>,
    pub schema: u16,
    pub payload: Vec<u8>,
    pub prev_hash: String,
    pub hash: String,
}

impl Row {
    pub fn decode(&self) -> Result<Envelope<Event>, LedgerError> {
        codec::decode_row(
            &self.id,
            self.ts,
            &self.thread,
            &self.kind,
            self.causation_id.as_deref(),
            self.correlation_id.as_deref(),
            self.schema,
            &self.payload,
        )
        .map_err(|error| LedgerError::Decode {
            seq: self.seq,
            error,
        })
    }
}

/// A stored row borrowed from SQLite's buffers: what verification reads,
/// without an allocation per column.
#[derive(Debug, Clone, Copy)]
pub struct RawRow<'a> {
    pub seq: u64,
    pub id: &'a str,
    pub ts: u64,
    pub thread: &'a str,
    pub kind: &'a str,
    pub key_version: Option<u32>,
    pub causation_id: Option<&'a str>,
    pub correlation_id: Option<&'a str>,
    pub schema: u16,
    pub payload: &'a [u8],
    pub prev_hash: &'a str,
    pub hash: &'a str,
}

impl RawRow<'_> {
    pub fn decode(&self) -> Result<Envelope<Event>, LedgerError> {
        codec::decode_row(
            self.id,
            self.ts,
            self.thread,
            self.kind,
            self.causation_id,
            self.correlation_id,
            self.schema,
            self.payload,
        )
        .map_err(|error| LedgerError::Decode {
            seq: self.seq,
            error,
        })
    }
}

/// A saved fold of the events up to `seq`, opaque to the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub seq: u64,
    /// The hash of event `seq` when the snapshot was taken.
    pub hash: String,
    pub schema: u16,
    pub state: Vec<u8>,
}

pub struct Ledger {
    conn: Connection,
    path: PathBuf,
    head: Head,
    /// The Merkle tree's right edge up to `head` (a writer's; empty on a
    /// reader): what a checkpoint signs.
    frontier: Frontier,
    /// Held for the life of a writer; the OS releases it if we die.
    _lock: Option<File>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("path", &self.path)
            .field("head_seq", &self.head.seq)
            .finish()
    }
}

impl Ledger {
    /// Opens (creating if needed) the ledger for writing. Takes an exclusive
    /// lock on `<path>.lock`, so a second writer gets [`LedgerError::Locked`]
    /// instead of interleaving its appends.
    pub fn open_writer(path: &Path) -> Result<Ledger, LedgerError> {
        if path.exists() {
            // Look before touching: a file that is not a ledger must stay
            // byte for byte as it was (no WAL switch, no lock file beside it).
            probe(path)?;
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|error| LedgerError::Io {
                path: dir.to_path_buf(),
                error,
            })?;
        }
        let lock = take_lock(path)?;
        let conn = Connection::open(path).map_err(|e| classify(path, e))?;
        let sql = |e| classify(path, e);
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        // A write-ahead log that grew under load (readers holding it back
        // from a reset) is cut back to this after each checkpoint instead of
        // keeping its largest size on disk for good.
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
            .map_err(sql)?;
        let existing: bool = conn
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_master WHERE name = 'events'",
                [],
                |r| r.get(0),
            )
            .map_err(sql)?;
        let non_empty: bool = conn
            .query_row("SELECT count(*) > 0 FROM sqlite_master", [], |r| r.get(0))
            .map_err(sql)?;
        if !existing && non_empty {
            return Err(LedgerError::NotALedger {
                path: path.to_path_buf(),
                reason: "an SQLite database without an `events` table".into(),
            });
        }
        conn.execute_batch(SCHEMA).map_err(sql)?;
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('format', ?1)",
            [FORMAT_VERSION.to_string()],
        )
        .map_err(sql)?;
        let mut ledger = Ledger {
            conn,
            path: path.to_path_buf(),
            head: Head::EMPTY,
            frontier: Frontier::default(),
            _lock: Some(lock),
        };
        ledger.check_format()?;
        ledger.head = ledger.read_head()?;
        ledger.frontier = ledger.read_frontier()?;
        Ok(ledger)
    }

    /// Opens an existing ledger read-only, without the writer lock, so
    /// `tes replay` and `tes audit verify` work beside a running daemon.
    pub fn open_reader(path: &Path) -> Result<Ledger, LedgerError> {
        if !path.exists() {
            return Err(LedgerError::Missing(path.to_path_buf()));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| classify(path, e))?;
        // Reads through a memory map instead of a read() per page: a full
        // verification walks every page once (a third of its time was
        // syscalls before). Address space only; nothing is written.
        conn.pragma_update(None, "mmap_size", MMAP_SIZE)
            .map_err(|e| classify(path, e))?;
        let has_events: bool = conn
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'events'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| classify(path, e))?;
        if !has_events {
            return Err(LedgerError::NotALedger {
                path: path.to_path_buf(),
                reason: "it has no `events` table".into(),
            });
        }
        let mut ledger = Ledger {
            conn,
            path: path.to_path_buf(),
            head: Head::EMPTY,
            frontier: Frontier::default(),
            _lock: None,
        };
        ledger.check_format()?;
        ledger.head = ledger.read_head()?;
        Ok(ledger)
    }

    /// Moves this (writer's) file out of the way, whole, to
    /// `<path>.set-aside-<tag>`, and returns that name; the next
    /// [`Ledger::open_writer`] of `path` starts an empty ledger. For a
    /// cluster writer whose tail never reached the replicated stream (see
    /// ARCHITECTURE.md): the rows are kept for an auditor, never deleted.
    /// The write-ahead log is folded in first, so the one file is all.
    pub fn set_aside(self, tag: &str) -> Result<PathBuf, LedgerError> {
        let Ledger {
            conn, path, _lock, ..
        } = self;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(|e| classify(&path, e))?;
        conn.close().map_err(|(_, e)| classify(&path, e))?;
        let mut aside = path.as_os_str().to_owned();
        aside.push(format!(".set-aside-{tag}"));
        let aside = PathBuf::from(aside);
        std::fs::rename(&path, &aside).map_err(|error| LedgerError::Io {
            path: aside.clone(),
            error,
        })?;
        // The lock is let go only now: nobody opens the old name meanwhile.
        drop(_lock);
        Ok(aside)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn head(&self) -> Head {
        self.head
    }

    /// The ledger's identity: the hash of its first row (its genesis), which
    /// commits to everything in it. `None` for an empty ledger.
    pub fn identity(&self) -> Result<Option<Hash>, LedgerError> {
        let hash: Option<String> = self
            .conn
            .query_row("SELECT hash FROM events WHERE seq = 1", [], |r| r.get(0))
            .optional()
            .map_err(|e| self.sql(e))?;
        Ok(hash.and_then(|h| chain::from_hex(&h)))
    }

    /// A writer's Merkle tree at its head: (size, root).
    pub fn tree_head(&self) -> (u64, Hash) {
        (self.frontier.size(), self.frontier.root())
    }

    /// A writer's Merkle frontier at its head (its root is computed only
    /// when a checkpoint is signed, not per append).
    pub fn frontier(&self) -> &Frontier {
        &self.frontier
    }

    /// The Merkle frontier from every stored row hash, in seq order. The
    /// hashes are taken as stored: the chain itself is checked by the walk
    /// that every start-up does (`walk`), not here.
    fn read_frontier(&self) -> Result<Frontier, LedgerError> {
        let mut frontier = Frontier::default();
        let mut stmt = self
            .conn
            .prepare("SELECT seq, hash FROM events ORDER BY seq")
            .map_err(|e| self.sql(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.sql(e))?;
        while let Some(r) = rows.next().map_err(|e| self.sql(e))? {
            let seq: u64 = r.get(0).map_err(|e| self.sql(e))?;
            let hash: String = r.get(1).map_err(|e| self.sql(e))?;
            frontier.push(&stored_hash(seq, &hash)?);
        }
        Ok(frontier)
    }

    fn sql(&self, e: rusqlite::Error) -> LedgerError {
        classify(&self.path, e)
    }

    fn check_format(&self) -> Result<(), LedgerError> {
        let found: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'format'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.sql(e))?;
        let found =
            found
                .and_then(|v| v.parse::<u32>().ok())
                .ok_or_else(|| LedgerError::NotALedger {
                    path: self.path.clone(),
                    reason: "its meta table has no format version".into(),
                })?;
        if found > FORMAT_VERSION {
            return Err(LedgerError::NewerFormat {
                path: self.path.clone(),
                found,
                supported: FORMAT_VERSION,
            });
        }
        Ok(())
    }

    fn read_head(&self) -> Result<Head, LedgerError> {
        let row: Option<(u64, String)> = self
            .conn
            .query_row(
                "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.sql(e))?;
        match row {
            None => Ok(Head::EMPTY),
            Some((seq, hash)) => Ok(Head {
                seq,
                hash: stored_hash(seq, &hash)?,
            }),
        }
    }

    /// Appends a batch in one `BEGIN IMMEDIATE` transaction (group commit):
    /// all of it becomes durable together or none of it does. An event whose
    /// id is already stored with the same content is reported as a duplicate
    /// and not stored again; with other content, the whole batch is refused.
    pub fn append(&mut self, events: &[Envelope<Event>]) -> Result<Vec<Appended>, LedgerError> {
        self.append_in(events, None)
    }

    /// [`Ledger::append`] for events taken from a stream that already
    /// holds them: in the same transaction the outbox cursor `outbox`
    /// moves up to `published` (never back), so a crash can never leave
    /// rows that came from the stream looking unsent (a writer that took
    /// over would send them again, and look each one up first).
    pub fn append_published(
        &mut self,
        events: &[Envelope<Event>],
        outbox: &str,
        published: u64,
    ) -> Result<Vec<Appended>, LedgerError> {
        self.append_in(events, Some((outbox, published)))
    }

    fn append_in(
        &mut self,
        events: &[Envelope<Event>],
        published: Option<(&str, u64)>,
    ) -> Result<Vec<Appended>, LedgerError> {
        self.end_reads()?;
        let path = self.path.clone();
        let sql = |e| classify(&path, e);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let mut head = self.head;
        // Row hashes of what this batch adds: into the Merkle frontier once
        // it has committed (a failed batch leaves the frontier as it was).
        let mut added = Vec::with_capacity(events.len());
        let mut out = Vec::with_capacity(events.len());
        {
            let mut find = tx
                .prepare_cached(
                    "SELECT seq, ts, thread, kind, key_version, causation_id, correlation_id, schema, payload
                     FROM events WHERE id = ?1",
                )
                .map_err(sql)?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO events (seq, id, ts, thread, kind, key_version, causation_id,
                                         correlation_id, schema, payload, prev_hash, hash)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                     ON CONFLICT (id) DO NOTHING",
                )
                .map_err(sql)?;
            for event in events {
                let draft = codec::encode(event);
                // Ids and hashes are bound as text from the stack: a String
                // each was five allocations per row.
                let (mut id_buf, mut causation_buf, mut correlation_buf) =
                    ([0u8; 36], [0u8; 36], [0u8; 36]);
                let (mut prev_buf, mut hash_buf) = ([0u8; 64], [0u8; 64]);
                let id = id_text(&event.id, &mut id_buf);
                let causation = event
                    .causation_id
                    .as_ref()
                    .map(|m| id_text(m, &mut causation_buf));
                let correlation = event
                    .correlation_id
                    .as_ref()
                    .map(|m| id_text(m, &mut correlation_buf));
                let seq = head.seq + 1;
                let hash = chain::row_hash(&head.hash, &fields(seq, &draft));
                // Insert first and look only on a clash: the common case
                // (a new id) costs one statement.
                let inserted = insert
                    .execute(params![
                        seq,
                        id,
                        draft.ts,
                        draft.thread.token(),
                        draft.kind,
                        draft.key_version,
                        causation,
                        correlation,
                        draft.schema,
                        draft.payload,
                        chain::hex_in(&head.hash, &mut prev_buf),
                        chain::hex_in(&hash, &mut hash_buf),
                    ])
                    .map_err(sql)?;
                if inserted == 1 {
                    head = Head { seq, hash };
                    added.push(hash);
                    out.push(Appended {
                        seq,
                        duplicate: false,
                    });
                    continue;
                }
                let stored = find
                    .query_row([id], |r| {
                        Ok(Row {
                            seq: r.get(0)?,
                            id: id.to_string(),
                            ts: r.get(1)?,
                            thread: r.get(2)?,
                            kind: r.get(3)?,
                            key_version: r.get(4)?,
                            causation_id: r.get(5)?,
                            correlation_id: r.get(6)?,
                            schema: r.get(7)?,
                            payload: r.get(8)?,
                            prev_hash: String::new(),
                            hash: String::new(),
                        })
                    })
                    .map_err(sql)?;
                if !same_content(&stored, &draft, causation, correlation) {
                    return Err(LedgerError::Conflict {
                        id: id.to_string(),
                        seq: stored.seq,
                    });
                }
                out.push(Appended {
                    seq: stored.seq,
                    duplicate: true,
                });
            }
        }
        if let Some((outbox, seq)) = published {
            tx.prepare_cached(
                "INSERT INTO outbox (name, seq) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET seq = max(seq, excluded.seq)",
            )
            .and_then(|mut advance| advance.execute(params![outbox, seq.min(head.seq)]))
            .map_err(sql)?;
        }
        tx.commit().map_err(sql)?;
        self.head = head;
        for hash in &added {
            self.frontier.push(hash);
        }
        Ok(out)
    }

    /// Starts one read transaction for the lookups a batch makes before it
    /// appends ([`Ledger::caused_by`] per command): in WAL mode every read
    /// outside a transaction takes and drops the shared-memory read lock
    /// (`fcntl` system calls), which cost more than the lookups themselves.
    /// Only this connection writes `events`, so the snapshot cannot go stale
    /// before the append; [`Ledger::append`] ends it, or
    /// [`Ledger::end_reads`] does. Idempotent.
    pub fn begin_reads(&mut self) -> Result<(), LedgerError> {
        if self.conn.is_autocommit() {
            self.conn
                .execute_batch("BEGIN DEFERRED")
                .map_err(|e| self.sql(e))?;
        }
        Ok(())
    }

    /// Ends the read transaction [`Ledger::begin_reads`] started, if any.
    pub fn end_reads(&mut self) -> Result<(), LedgerError> {
        if !self.conn.is_autocommit() {
            self.conn.execute_batch("COMMIT").map_err(|e| self.sql(e))?;
        }
        Ok(())
    }

    /// The seq of event `id`, if it is in the ledger.
    pub fn seq_of(&self, id: &tes_proto::MsgId) -> Result<Option<u64>, LedgerError> {
        self.conn
            .prepare_cached("SELECT seq FROM events WHERE id = ?1")
            .and_then(|mut s| s.query_row([id.to_string()], |r| r.get(0)).optional())
            .map_err(|e| self.sql(e))
    }

    /// The seq of the first event caused by command `id`, if any: how an actor
    /// acts on a command id at most once.
    pub fn caused_by(&self, id: &tes_proto::MsgId) -> Result<Option<u64>, LedgerError> {
        let mut buf = [0u8; 36];
        let text = id_text(id, &mut buf);
        self.conn
            .prepare_cached("SELECT min(seq) FROM events WHERE causation_id = ?1")
            .and_then(|mut s| s.query_row([text], |r| r.get(0)))
            .map_err(|e| self.sql(e))
    }

    /// The events caused by command `id`, with their seqs, in order: what a
    /// retried command's original outcome is rebuilt from.
    pub fn events_caused_by(
        &self,
        id: &tes_proto::MsgId,
    ) -> Result<Vec<(u64, Envelope<Event>)>, LedgerError> {
        let key = id.to_string();
        let range: (Option<u64>, Option<u64>) = self
            .conn
            .prepare_cached("SELECT min(seq), max(seq) FROM events WHERE causation_id = ?1")
            .and_then(|mut s| s.query_row([&key], |r| Ok((r.get(0)?, r.get(1)?))))
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        if let (Some(first), Some(last)) = range {
            self.for_each_row(first, last, |row| {
                if row.causation_id.as_deref() == Some(key.as_str()) {
                    out.push((row.seq, row.decode()?));
                }
                Ok::<_, LedgerError>(true)
            })?;
        }
        Ok(out)
    }

    /// Rows with `from <= seq <= to`, in order, passed to `f` one at a time
    /// (a ledger may be far larger than memory). `f` may stop early with
    /// `Ok(false)`.
    pub fn for_each_row<E>(
        &self,
        from: u64,
        to: u64,
        mut f: impl FnMut(Row) -> Result<bool, E>,
    ) -> Result<(), E>
    where
        E: From<LedgerError>,
    {
        self.for_each_raw(from, to, |r| {
            f(Row {
                seq: r.seq,
                id: r.id.to_string(),
                ts: r.ts,
                thread: r.thread.to_string(),
                kind: r.kind.to_string(),
                key_version: r.key_version,
                causation_id: r.causation_id.map(str::to_string),
                correlation_id: r.correlation_id.map(str::to_string),
                schema: r.schema,
                payload: r.payload.to_vec(),
                prev_hash: r.prev_hash.to_string(),
                hash: r.hash.to_string(),
            })
        })
    }

    /// [`Ledger::for_each_row`] with the columns borrowed: nothing is copied
    /// (verification reads a million rows a second this way).
    pub fn for_each_raw<E>(
        &self,
        from: u64,
        to: u64,
        mut f: impl FnMut(RawRow<'_>) -> Result<bool, E>,
    ) -> Result<(), E>
    where
        E: From<LedgerError>,
    {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, id, ts, thread, kind, key_version, causation_id, correlation_id,
                        schema, payload, prev_hash, hash
                 FROM events WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq",
            )
            .map_err(|e| self.sql(e))?;
        let to = to.min(i64::MAX as u64);
        let mut rows = stmt.query(params![from, to]).map_err(|e| self.sql(e))?;
        while let Some(r) = rows.next().map_err(|e| self.sql(e))? {
            let row = read_raw(r).map_err(|e| match e {
                RowError::Sql(e) => self.sql(e),
                RowError::Type { seq, field, detail } => LedgerError::Decode {
                    seq,
                    error: DecodeError::BadField { field, detail },
                },
            })?;
            if !f(row)? {
                break;
            }
        }
        Ok(())
    }

    /// The decoded events with `from <= seq`, in order.
    pub fn events_from(&self, from: u64) -> Result<Vec<(u64, Envelope<Event>)>, LedgerError> {
        let mut out = Vec::new();
        self.for_each_row(from, u64::MAX, |row| {
            out.push((row.seq, row.decode()?));
            Ok::<_, LedgerError>(true)
        })?;
        Ok(out)
    }

    /// Saves a snapshot of a fold up to the current head.
    pub fn put_snapshot(&mut self, schema: u16, state: &[u8]) -> Result<(), LedgerError> {
        use sha2::Digest;
        let head = self.head;
        self.conn
            .execute(
                "INSERT OR REPLACE INTO snapshots (seq, hash, schema, state, state_sha256)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    head.seq,
                    head.hash_hex(),
                    schema,
                    state,
                    hex::encode(sha2::Sha256::digest(state))
                ],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Every stored snapshot's seq whose bytes no longer match their recorded
    /// digest (a damaged or edited cache): `tes audit verify` reports them.
    pub fn damaged_snapshots(&self) -> Result<Vec<u64>, LedgerError> {
        use sha2::Digest;
        let mut stmt = self
            .conn
            .prepare("SELECT seq, CAST(state AS BLOB), state_sha256 FROM snapshots ORDER BY seq")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, u64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, state, digest) = row.map_err(|e| self.sql(e))?;
            if hex::encode(sha2::Sha256::digest(&state)) != digest {
                out.push(seq);
            }
        }
        Ok(out)
    }

    /// Snapshots, newest first, that are consistent with the chain: the
    /// event at their seq exists and has the hash they recorded, and their
    /// bytes match their digest. Others are skipped (they are caches).
    pub fn snapshots(&self) -> Result<Vec<Snapshot>, LedgerError> {
        use sha2::Digest;
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT s.seq, s.hash, s.schema, CAST(s.state AS BLOB), s.state_sha256
                 FROM snapshots s JOIN events e ON e.seq = s.seq AND e.hash = s.hash
                 ORDER BY s.seq DESC",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    Snapshot {
                        seq: r.get(0)?,
                        hash: r.get(1)?,
                        schema: r.get(2)?,
                        state: r.get(3)?,
                    },
                    r.get::<_, String>(4)?,
                ))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (snap, digest) = row.map_err(|e| self.sql(e))?;
            if hex::encode(sha2::Sha256::digest(&snap.state)) == digest {
                out.push(snap);
            }
        }
        Ok(out)
    }

    /// The number of events (equals the head seq on a sound ledger).
    pub fn count(&self) -> Result<u64, LedgerError> {
        self.conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .map_err(|e| self.sql(e))
    }

    /// Gives direct access for tests that must prove the database itself
    /// refuses tampering.
    #[doc(hidden)]
    pub fn raw_connection(&self) -> &Connection {
        &self.conn
    }
}

pub(crate) fn fields(seq: u64, d: &Draft) -> RowFields<'_> {
    RowFields {
        seq,
        id: &d.id,
        ts: d.ts,
        thread: d.thread.as_u16(),
        kind: d.kind,
        key_version: d.key_version,
        causation_id: d.causation_id.as_ref(),
        correlation_id: d.correlation_id.as_ref(),
        schema: d.schema,
        payload: &d.payload,
    }
}

/// An id's text form (hyphenated, lowercase: what `Display` writes and
/// the columns hold) in a buffer the caller holds.
fn id_text<'a>(id: &tes_proto::MsgId, buf: &'a mut [u8; 36]) -> &'a str {
    id.0.hyphenated().encode_lower(buf)
}

fn same_content(row: &Row, d: &Draft, causation: Option<&str>, correlation: Option<&str>) -> bool {
    row.ts == d.ts
        && row.thread == d.thread.token()
        && row.kind == d.kind
        && row.key_version == d.key_version
        && row.causation_id.as_deref() == causation
        && row.correlation_id.as_deref() == correlation
        && row.schema == d.schema
        && row.payload == d.payload
}

/// Reads a row, strictly: a column stored with another SQLite type than the
/// schema's (a tampered file can hold anything), or text that is not UTF-8,
/// is a decode error at that row's seq, never a silent conversion.
pub(crate) fn read_raw<'r>(r: &'r rusqlite::Row<'_>) -> Result<RawRow<'r>, RowError> {
    use rusqlite::types::ValueRef;
    let seq: u64 = r.get(0)?;
    let bad = |field: &'static str, v: ValueRef<'_>, expected: &str| RowError::Type {
        seq,
        field,
        detail: format!("stored as {:?}, expected {expected}", v.data_type()),
    };
    let utf8 = |field: &'static str, t: &'r [u8]| {
        std::str::from_utf8(t).map_err(|_| RowError::Type {
            seq,
            field,
            detail: "not UTF-8 text".into(),
        })
    };
    let text = |i: usize, field: &'static str| -> Result<&'r str, RowError> {
        match r.get_ref(i)? {
            ValueRef::Text(t) => utf8(field, t),
            v => Err(bad(field, v, "TEXT")),
        }
    };
    let opt_text = |i: usize, field: &'static str| -> Result<Option<&'r str>, RowError> {
        match r.get_ref(i)? {
            ValueRef::Null => Ok(None),
            ValueRef::Text(t) => utf8(field, t).map(Some),
            v => Err(bad(field, v, "TEXT or NULL")),
        }
    };
    let int = |i: usize, field: &'static str| -> Result<i64, RowError> {
        match r.get_ref(i)? {
            ValueRef::Integer(n) => Ok(n),
            v => Err(bad(field, v, "INTEGER")),
        }
    };
    let ranged = |field: &'static str, n: i64, max: i64| {
        (0..=max).contains(&n).then_some(n).ok_or(RowError::Type {
            seq,
            field,
            detail: format!("{n} is out of range"),
        })
    };
    Ok(RawRow {
        seq,
        id: text(1, "id")?,
        ts: ranged("ts", int(2, "ts")?, i64::MAX)? as u64,
        thread: text(3, "thread")?,
        kind: text(4, "kind")?,
        key_version: match r.get_ref(5)? {
            ValueRef::Null => None,
            ValueRef::Integer(n) => Some(ranged("key_version", n, u32::MAX.into())? as u32),
            v => return Err(bad("key_version", v, "INTEGER or NULL")),
        },
        causation_id: opt_text(6, "causation_id")?,
        correlation_id: opt_text(7, "correlation_id")?,
        schema: ranged("schema", int(8, "schema")?, u16::MAX.into())? as u16,
        payload: match r.get_ref(9)? {
            ValueRef::Blob(b) => b,
            v => return Err(bad("payload", v, "BLOB")),
        },
        prev_hash: text(10, "prev_hash")?,
        hash: text(11, "hash")?,
    })
}

pub(crate) enum RowError {
    Sql(rusqlite::Error),
    Type {
        seq: u64,
        field: &'static str,
        detail: String,
    },
}

impl From<rusqlite::Error> for RowError {
    fn from(e: rusqlite::Error) -> RowError {
        RowError::Sql(e)
    }
}

/// Turns SQLite's codes into errors that say what is wrong with the file.
pub(crate) fn classify(path: &Path, error: rusqlite::Error) -> LedgerError {
    let path = path.to_path_buf();
    match error.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => LedgerError::NotADatabase(path),
        Some(ErrorCode::DatabaseCorrupt) => LedgerError::Corrupt {
            path,
            detail: error.to_string(),
        },
        Some(ErrorCode::DiskFull) => LedgerError::DiskFull(path),
        _ => LedgerError::Sqlite { path, error },
    }
}

/// The `hash` column of row `seq`, as a hash (a malformed one is a decode
/// error at that seq).
fn stored_hash(seq: u64, hex: &str) -> Result<Hash, LedgerError> {
    chain::from_hex(hex).ok_or(LedgerError::Decode {
        seq,
        error: DecodeError::BadField {
            field: "hash",
            detail: "not 64 hex characters".into(),
        },
    })
}

/// Refuses an existing file that is neither a ledger nor an empty database,
/// reading only.
fn probe(path: &Path) -> Result<(), LedgerError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| classify(path, e))?;
    let (tables, events): (i64, bool) = conn
        .query_row(
            "SELECT count(*), coalesce(sum(name = 'events'), 0) > 0 FROM sqlite_master",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(|e| classify(path, e))?;
    if tables > 0 && !events {
        return Err(LedgerError::NotALedger {
            path: path.to_path_buf(),
            reason: "an SQLite database without an `events` table".into(),
        });
    }
    Ok(())
}

fn take_lock(path: &Path) -> Result<File, LedgerError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let io = |error| LedgerError::Io {
        path: lock_path.clone(),
        error,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(LedgerError::Locked {
                path: path.to_path_buf(),
                holder: if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    write!(file, "{}", std::process::id()).map_err(io)?;
    Ok(file)
}
