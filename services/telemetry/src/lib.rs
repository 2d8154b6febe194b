//! Telemetry (thread 0x5002): what Monitoring knows, exported.
//!
//! - [`prometheus`]: a snapshot as Prometheus text (`GET /metrics`).
//! - [`event_log`]: the JSON-lines `logs/worker-events.log`, one line per
//!   ledger event, rotated by size, degrading (not failing) on a full disk.
//! - [`actor`]: the shell: snapshots in, `/metrics` out; the ledger feed
//!   into the event log.

pub mod actor;
pub mod event_log;
pub mod prometheus;
