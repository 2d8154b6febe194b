//! `tes daemon`: actors until Ctrl-C or SIGTERM — all of them on the
//! embedded bus, or any subset (`--actors`) on a NATS server, where several
//! daemons form the system. Re-reads the key store every few seconds, so
//! `tes secret put` reaches a running daemon without a restart.

use std::time::Duration;

use anyhow::anyhow;
use tes_bus::nats::redact;
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::{ActorSet, Global, HttpOptions, ObserveOptions, Role, RunOptions};
use crate::commands::health;
use crate::failure::{Failure, Result};
use crate::runtime::{self, Actors, Transport};

const KEY_STORE_POLL: Duration = Duration::from_secs(2);
/// How long a starting daemon waits for NATS to answer (documented in
/// docs/operations.md).
const NATS_WAIT: Duration = Duration::from_secs(60);

pub async fn run(
    global: &Global,
    run: &RunOptions,
    observe: &ObserveOptions,
    http: &HttpOptions,
    which: ActorSet,
    role: Role,
) -> Result<()> {
    // Stop requests are taken from the first moment: a SIGTERM that arrives
    // while the daemon connects, opens its ledger or stands by for the
    // lease ends the start cleanly instead of killing the process on the
    // signal's default action (a stop issued right after the ledger lock
    // appeared used to exit by signal, with no "stopped").
    let mut stop = Stop::listen()?;
    let waited = tokio::select! {
        waited = runtime::nats_waiting(global, "tes-daemon", NATS_WAIT) => waited?,
        _ = stop.requested() => {
            tracing::info!("stopped while starting");
            return Ok(());
        }
    };
    let (transport, on) = match waited {
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
    // Reporting starts before the actors: a standby writer waits inside
    // Actors::start for the lease, and reports itself ready meanwhile.
    let started = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let nats = match &transport {
        Transport::Nats(n) => Some(n.client().clone()),
        Transport::Embedded => None,
    };
    let reporter = report_health(global, which, role, nats, started.clone());
    let rt = tokio::select! {
        rt = Actors::start(global, run, Some(observe), transport, which, role) => Some(rt),
        _ = stop.requested() => None,
    };
    let mut rt = match rt {
        Some(Ok(rt)) => rt,
        None => {
            // Dropping the start closes what it had opened (the ledger and
            // its lock are released with their handles).
            reporter.abort();
            let path = health::report_path(&global.data_dir, which);
            if health::read(&path).is_some_and(|r| r.pid == std::process::id()) {
                let _ = std::fs::remove_file(path);
            }
            tracing::info!("stopped while starting");
            return Ok(());
        }
        Some(Err(e)) => {
            reporter.abort();
            // Only a report of this process's own (a standby that then
            // failed): a daemon refused at a ledger another one holds must
            // not take that one's report away.
            let path = health::report_path(&global.data_dir, which);
            if health::read(&path).is_some_and(|r| r.pid == std::process::id()) {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
    };
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
    started.store(true, std::sync::atomic::Ordering::Release);
    tracing::info!(
        actors = %which.names().join(", "),
        ledger = %if which.version { rt.ledger_path.display().to_string() } else { "-".into() },
        "tes daemon ready on {on}"
    );
    let mut poll = tokio::time::interval(KEY_STORE_POLL);
    loop {
        tokio::select! {
            _ = stop.requested() => break,
            _ = poll.tick() => match rt.rekey().await {
                Ok(true) => tracing::info!("key material changed: keyring reloaded"),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "the key store could not be read; keeping the keyring as it was"),
            },
        }
    }
    tracing::info!("stopping: finishing requests in flight");
    reporter.abort();
    let _ = std::fs::remove_file(health::report_path(&global.data_dir, which));
    if let Some(control) = control {
        control.stop();
    }
    rt.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM and SIGINT (Ctrl-C), listened for from the daemon's first
/// moment: once registered, neither kills the process by default any more.
struct Stop {
    term: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Stop {
    fn listen() -> std::io::Result<Self> {
        Ok(Stop {
            term: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn requested(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

/// Writes this daemon's readiness every [`health::EVERY`] for `tes health`:
/// the bus connected (on NATS); the actors started (`started`), or this a
/// standby writer following the writer; and for the ledger writer its
/// ledger readable at the head. A report that cannot be written is logged
/// once.
fn report_health(
    global: &Global,
    which: ActorSet,
    role: Role,
    nats: Option<async_nats::Client>,
    started: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let path = health::report_path(&global.data_dir, which);
    let ledger = (which.version && role == Role::Writer).then(|| global.ledger_path());
    tokio::spawn(async move {
        let mut warned = false;
        let mut every = tokio::time::interval(health::EVERY);
        loop {
            every.tick().await;
            let mut checks = Vec::new();
            if let Some(client) = &nats {
                let state = client.connection_state();
                let ok = matches!(state, async_nats::connection::State::Connected);
                checks.push((
                    "nats".to_string(),
                    if ok {
                        "ok".to_string()
                    } else {
                        format!("{state:?}")
                    },
                ));
            } else {
                checks.push(("bus".to_string(), "ok (embedded)".to_string()));
            }
            if !started.load(std::sync::atomic::Ordering::Acquire) {
                // Starting: no report (as before the actors ran), unless
                // this is a standby writer, which holds its ledger and
                // follows: ready.
                let Some(seq) = runtime::standing_by() else {
                    continue;
                };
                checks.push((
                    "actors".to_string(),
                    format!("ok (a standby writer, following at seq {seq})"),
                ));
            }
            if let Some(path) = &ledger {
                let path = path.clone();
                let found = tokio::task::spawn_blocking(move || {
                    tes_ledger::Ledger::open_reader(&path)
                        .map(|l| format!("ok (head seq {})", l.head().seq))
                        .unwrap_or_else(|e| e.to_string())
                })
                .await
                .unwrap_or_else(|e| e.to_string());
                checks.push(("ledger".to_string(), found));
            }
            let report = health::Report {
                pid: std::process::id(),
                actors: which.slug(),
                at: tes_proto::Timestamp::now(),
                ready: checks.iter().all(|(_, found)| found.starts_with("ok")),
                checks,
            };
            if let Err(error) = health::write(&path, &report) {
                if !warned {
                    tracing::warn!(path = %path.display(), %error, "cannot write the health report");
                    warned = true;
                }
            }
        }
    })
}
