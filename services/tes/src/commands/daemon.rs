//! `tes daemon`: the actors in one process on the embedded bus until Ctrl-C
//! or SIGTERM. Watches the key store, so `tes secret put` reaches a running
//! daemon without a restart.

use std::time::{Duration, SystemTime};

use tokio::signal::unix::{signal, SignalKind};

use crate::cli::{Global, RunOptions};
use crate::failure::Result;
use crate::runtime::Embedded;

const KEY_STORE_POLL: Duration = Duration::from_secs(2);

pub async fn run(global: &Global, run: &RunOptions) -> Result<()> {
    let rt = Embedded::start(global, run).await?;
    let status = rt.status().await?;
    tracing::info!(
        ledger = %rt.ledger_path.display(),
        key_version = status.key_version.map(|v| v.to_string()).unwrap_or_default(),
        head_seq = status.head_seq,
        "tes daemon ready: Supervisor (0x1001) and Version Management (0x6001) on the embedded bus"
    );
    let mut term = signal(SignalKind::terminate())?;
    let mut poll = tokio::time::interval(KEY_STORE_POLL);
    let mut seen = modified(&rt);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = poll.tick() => {
                let now = modified(&rt);
                if now != seen {
                    seen = now;
                    match rt.rekey().await {
                        Ok(()) => tracing::info!("key store changed: keyring reloaded"),
                        Err(e) => tracing::error!(error = %e, "key store changed but could not be loaded; keeping the old keyring"),
                    }
                }
            }
        }
    }
    tracing::info!("stopping: finishing requests in flight");
    rt.stop().await;
    tracing::info!("stopped");
    Ok(())
}

fn modified(rt: &Embedded) -> Option<SystemTime> {
    std::fs::metadata(rt.key_store().path())
        .and_then(|m| m.modified())
        .ok()
}
