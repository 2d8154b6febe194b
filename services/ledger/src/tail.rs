//! Following a ledger from outside its writer (Monitoring, Telemetry,
//! `tes watch`): each call returns the rows appended since the last one,
//! checked link by link exactly as [`crate::verify`] checks them, so a
//! follower never counts a row that verification would reject.

use std::path::Path;

use tes_proto::{Envelope, Event};

use crate::store::{Head, Ledger};
use crate::verify::{walk, VerifyError};
use crate::LedgerError;

pub struct Tail {
    ledger: Ledger,
    /// The last row checked and handed out.
    head: Head,
}

impl Tail {
    /// Opens a ledger read-only; nothing is handed out yet.
    pub fn open(path: &Path) -> Result<Tail, LedgerError> {
        Ok(Tail {
            ledger: Ledger::open_reader(path)?,
            head: Head::EMPTY,
        })
    }

    /// The last row handed out.
    pub fn head(&self) -> Head {
        self.head
    }

    /// Up to `limit` rows after the last one handed out, in order.
    pub fn next_batch(&mut self, limit: usize) -> Result<Vec<(u64, Envelope<Event>)>, VerifyError> {
        let mut out = Vec::new();
        let to = self.head.seq.saturating_add(limit as u64);
        let verified = walk(&self.ledger, self.head, to, None, |seq, event| {
            out.push((seq, event));
            true
        })?;
        self.head = verified.head;
        Ok(out)
    }
}
