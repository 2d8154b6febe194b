//! `tes health`: is the daemon of this container (or data directory) ready?
//!
//! A running daemon writes its own readiness every few seconds into
//! `DIR/health.<actors>.json` (the bus connected; for the ledger writer, the
//! ledger readable at its head); `tes health` reads that file, so a
//! healthcheck needs no NATS right and no port of its own. A file older
//! than three reports, or a daemon that said it is not ready, is exit 1.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::anyhow;
use serde::{Deserialize, Serialize};
use tes_proto::Timestamp;

use crate::cli::{ActorSet, Global};
use crate::failure::{Failure, Result};
use crate::output::Printer;

/// How often a daemon reports.
pub const EVERY: Duration = Duration::from_secs(5);

/// What a daemon reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub pid: u32,
    pub actors: String,
    pub at: Timestamp,
    pub ready: bool,
    /// Each check and what it found ("ok", or why not).
    pub checks: Vec<(String, String)>,
}

/// The report file of a daemon running `actors` on the data directory.
pub fn report_path(data_dir: &Path, actors: ActorSet) -> PathBuf {
    data_dir.join(format!("health.{}.json", actors.slug()))
}

/// Writes a report atomically (a reader never sees half of one).
pub fn write(path: &Path, report: &Report) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec(report).expect("a report serializes"),
    )?;
    std::fs::rename(&tmp, path)
}

/// The report at `path`, if there is a readable one.
pub fn read(path: &Path) -> Option<Report> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

pub fn run(global: &Global, actors: ActorSet) -> Result<()> {
    let path = report_path(&global.data_dir, actors);
    let text = std::fs::read(&path).map_err(|e| {
        Failure::check(anyhow!(
            "no health report at {} ({e}): is a `tes daemon --actors {}` running on this data directory?",
            path.display(),
            actors.slug()
        ))
    })?;
    let report: Report = serde_json::from_slice(&text)
        .map_err(|e| Failure::check(anyhow!("{} is not a health report: {e}", path.display())))?;
    let age = Timestamp::now()
        .as_millis()
        .saturating_sub(report.at.as_millis());
    let stale = age > 3 * EVERY.as_millis() as u64;
    let checks: Vec<String> = report
        .checks
        .iter()
        .map(|(what, found)| format!("{what}: {found}"))
        .collect();
    Printer { json: global.json }.emit(
        format!(
            "{} ({}; pid {}, reported {} ms ago): {}",
            if report.ready && !stale {
                "ready"
            } else {
                "NOT READY"
            },
            report.actors,
            report.pid,
            age,
            checks.join(", ")
        ),
        &report,
    );
    if stale {
        return Err(Failure::check(anyhow!(
            "the daemon's last report is {age} ms old: it is stuck or gone"
        )));
    }
    if !report.ready {
        return Err(Failure::check(anyhow!("not ready: {}", checks.join(", "))));
    }
    Ok(())
}
