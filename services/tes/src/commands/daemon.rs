//! `tes daemon`: the actors in one process on the embedded bus until Ctrl-C
//! or SIGTERM. Re-reads the key store every few seconds, so `tes secret put`
//! reaches a running daemon without a restart.

use std::sync::Arc;
use std::time::Duration;

use tes_bus::nats::redact;
use tes_bus::{Bus, InProcessBus};

use tokio::signal::unix::{signal, SignalKind};

use crate::cli::{Global, RunOptions};
use crate::failure::Result;
use crate::runtime::{self, Actors};

const KEY_STORE_POLL: Duration = Duration::from_secs(2);

pub async fn run(global: &Global, run: &RunOptions) -> Result<()> {
    let (bus, on): (Arc<dyn Bus>, String) = match runtime::nats(global, "tes-daemon").await? {
        Some(nats) => (
            Arc::new(nats),
            format!(
                "NATS {}",
                redact(global.nats.as_deref().unwrap_or_default())
            ),
        ),
        None => (
            Arc::new(InProcessBus::new()),
            "the embedded bus".to_string(),
        ),
    };
    let mut rt = Actors::start(global, run, bus).await?;
    let status = rt.status().await?;
    tracing::info!(
        ledger = %rt.ledger_path.display(),
        key_version = status.key_version.map(|v| v.to_string()).unwrap_or_default(),
        head_seq = status.head_seq,
        "tes daemon ready: Supervisor (0x1001) and Version Management (0x6001) on {on}"
    );
    let mut term = signal(SignalKind::terminate())?;
    let mut poll = tokio::time::interval(KEY_STORE_POLL);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = poll.tick() => match rt.rekey().await {
                Ok(true) => tracing::info!("key material changed: keyring reloaded"),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "the key store could not be read; keeping the keyring as it was"),
            },
        }
    }
    tracing::info!("stopping: finishing requests in flight");
    rt.stop().await;
    tracing::info!("stopped");
    Ok(())
}
