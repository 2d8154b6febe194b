//! `tes daemon`: actors until Ctrl-C or SIGTERM — all of them on the
//! embedded bus, or any subset (`--actors`) on a NATS server, where several
//! daemons form the system. Re-reads the key store every few seconds, so
//! `tes secret put` reaches a running daemon without a restart.

use std::time::Duration;

use anyhow::anyhow;
use tes_bus::nats::redact;
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::{ActorSet, Global, HttpOptions, ObserveOptions, Role, RunOptions};
use crate::failure::{Failure, Result};
use crate::runtime::{self, Actors, Transport};

const KEY_STORE_POLL: Duration = Duration::from_secs(2);

pub async fn run(
    global: &Global,
    run: &RunOptions,
    observe: &ObserveOptions,
    http: &HttpOptions,
    which: ActorSet,
    role: Role,
) -> Result<()> {
    let (transport, on) = match runtime::nats(global, "tes-daemon").await? {
        Some(nats) => (
            Transport::Nats(nats),
            format!(
                "NATS {}",
                redact(global.nats.as_deref().unwrap_or_default())
            ),
        ),
        None if role == Role::Signer => {
            return Err(Failure::input(anyhow!(
                "--role signer needs --nats: a replica follows the ledger writer's events on NATS"
            )))
        }
        None if which != ActorSet::ALL => {
            return Err(Failure::input(anyhow!(
                "--actors needs --nats: on the embedded bus every actor runs in this one process"
            )))
        }
        None => (Transport::Embedded, "the embedded bus".to_string()),
    };
    if which.alert {
        // A mistake in the rules file stops the start, before anything runs.
        runtime::alert_rules(observe)?;
    }
    let admin_token = if which.gateway {
        // A bad credential source stops the start, before anything runs.
        runtime::admin_token()?
    } else {
        None
    };
    let embedded = matches!(transport, Transport::Embedded);
    let mut rt = Actors::start(global, run, Some(observe), transport, which, role).await?;
    if which.gateway {
        rt.start_gateway(global, http, admin_token).await?;
    }
    // Beside an embedded daemon, `tes rotate`, `sign`, … reach it here.
    let control = if embedded {
        let path = tes_bus::control::socket_path(&global.data_dir);
        Some(
            tes_bus::control::ControlServer::start(&path, rt.bus())
                .await
                .map_err(Failure::input)?,
        )
    } else {
        None
    };
    tracing::info!(
        actors = %which.names().join(", "),
        ledger = %if which.version { rt.ledger_path.display().to_string() } else { "-".into() },
        "tes daemon ready on {on}"
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
    if let Some(control) = control {
        control.stop();
    }
    rt.stop().await;
    tracing::info!("stopped");
    Ok(())
}
