//! Monitoring (thread 0x5000): the key-migration numbers.
//!
//! - [`core`]: pure: ledger events → counts per key version, fallbacks,
//!   rotations, the rotation duration, and the shares of recent traffic.
//! - [`feed`]: the ledger's events exactly once, in order, from the ledger
//!   file or from `TES_EVENTS` (also used by Alert and Telemetry).
//! - [`actor`]: the shell: feed → core, a snapshot on
//!   `tes.evt.0x5000.metrics` every interval, `tes.cmd.0x5000.metrics`.

pub mod actor;
pub mod core;
pub mod feed;

pub use crate::core::Metrics;

/// Folds a whole ledger (verified row by row): what `tes metrics` shows
/// without a running daemon, and what the live actor must agree with.
pub fn fold_ledger(
    path: &std::path::Path,
    window: std::time::Duration,
) -> Result<Metrics, tes_ledger::VerifyError> {
    let ledger = tes_ledger::Ledger::open_reader(path)?;
    let mut metrics = Metrics::new(window);
    tes_ledger::walk(
        &ledger,
        tes_ledger::Head::EMPTY,
        u64::MAX,
        None,
        |seq, event| {
            metrics.observe(seq, &event);
            true
        },
    )?;
    Ok(metrics)
}
