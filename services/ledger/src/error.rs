//! Ledger errors, each naming the file or the seq it is about.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("no ledger at {0:?}")]
    Missing(PathBuf),
    #[error("{0:?} is not a TES ledger: it is not an SQLite database")]
    NotADatabase(PathBuf),
    #[error("{path:?} is not a TES ledger: {reason}")]
    NotALedger { path: PathBuf, reason: String },
    #[error("ledger {path:?} is damaged (SQLite: {detail}); run `tes audit verify` on a copy")]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "ledger {path:?} uses format {found}, newer than this build's {supported}; upgrade tes"
    )]
    NewerFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("ledger {path:?} is already open for writing by another tes process{holder}")]
    Locked { path: PathBuf, holder: String },
    #[error("event id {id} is already in the ledger at seq {seq} with different content")]
    Conflict { id: String, seq: u64 },
    #[error("the disk holding ledger {0:?} is full; nothing was written")]
    DiskFull(PathBuf),
    #[error("seq {seq}: {error}")]
    Decode { seq: u64, error: DecodeError },
    #[error("ledger {path:?}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("ledger {path:?}: {error}")]
    Sqlite {
        path: PathBuf,
        error: rusqlite::Error,
    },
}

/// Why a stored row could not be turned back into an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("schema version {0} is unknown to this build (it knows 1..={max}); upgrade tes", max = tes_proto::SCHEMA_VERSION)]
    UnknownSchema(u16),
    #[error("event kind {0:?} is unknown to this build; upgrade tes")]
    UnknownKind(String),
    #[error("thread {0:?} is unknown")]
    UnknownThread(String),
    #[error("payload does not decode as a {kind} event of schema {schema}: {detail}")]
    BadPayload {
        kind: String,
        schema: u16,
        detail: String,
    },
    #[error("the kind column says {column:?} but the payload is a {payload:?} event")]
    KindMismatch { column: String, payload: String },
    #[error("malformed {field}: {detail}")]
    BadField { field: &'static str, detail: String },
}
