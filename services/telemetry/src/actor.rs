//! Telemetry's shell (0x5002): keeps Monitoring's latest snapshot
//! (`tes.evt.0x5000.metrics`) and serves it as Prometheus text on
//! `GET /metrics`; writes every ledger event from the feed to the event log,
//! going on after the last seq the log already holds, so the log lists each
//! ledger event once even across restarts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tes_bus::{Bus, BusError};
use tes_monitoring::actor::Snapshots;
use tes_monitoring::feed::{self, Item, Source};
use tes_proto::event::MetricsSnapshot;
use tes_proto::ThreadId;
use tokio::task::JoinHandle;

use crate::event_log::{EventLog, FILE_NAME};
use crate::prometheus;

#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// Where `/metrics` is served (port 0: any free port).
    pub listen: SocketAddr,
    /// The event log's directory (the file is `worker-events.log` in it).
    pub log_dir: PathBuf,
    /// Rotate the event log when it would pass this size.
    pub log_max_bytes: u64,
    /// Rotated files kept.
    pub log_keep: usize,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            log_dir: PathBuf::from("logs"),
            log_max_bytes: 64 * 1024 * 1024,
            log_keep: 5,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot open the event log {path}: {error}")]
    Log { path: String, error: std::io::Error },
    #[error("cannot serve /metrics on {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Which ledger events go to the event log: all of them.
pub const FOLLOWS: [ThreadId; 2] = [ThreadId::VersionManagement, ThreadId::Alert];

pub struct Telemetry {
    /// Where `/metrics` is served.
    pub addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Telemetry {
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

struct Shared {
    snapshot: Mutex<Option<MetricsSnapshot>>,
    log: EventLog,
}

pub async fn start(
    bus: Arc<dyn Bus>,
    source: Source,
    config: TelemetryConfig,
) -> Result<Telemetry, TelemetryError> {
    let path = config.log_dir.join(FILE_NAME);
    let mut after = EventLog::last_entry(&path);
    // A log that goes on past what the ledger holds, or holds another event
    // at its last seq, belongs to a history the ledger no longer has (it was
    // restored from a backup): set it aside and write the log again from the
    // ledger, rather than skip the new events that take those seqs.
    if let Some((seq, Some(id))) = &after {
        if source.holds(*seq, id) == Some(false) {
            let suffix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .to_string();
            let aside =
                EventLog::set_aside(&path, &suffix).map_err(|error| TelemetryError::Log {
                    path: path.display().to_string(),
                    error,
                })?;
            tracing::warn!(seq, aside = %aside.display(), "the event log went past what the ledger holds (a restored ledger?): set it aside and writing it again from the ledger");
            after = None;
        }
    }
    let after = after.map_or(0, |(seq, _)| seq);
    let log = EventLog::open(&path, config.log_max_bytes, config.log_keep).map_err(|error| {
        TelemetryError::Log {
            path: path.display().to_string(),
            error,
        }
    })?;
    let shared = Arc::new(Shared {
        snapshot: Mutex::new(None),
        log,
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|error| TelemetryError::Listen {
            addr: config.listen,
            error,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|error| TelemetryError::Listen {
            addr: config.listen,
            error,
        })?;
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .with_state(shared.clone());
    let server = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "the /metrics server stopped");
        }
    });
    let mut snapshots = Snapshots::subscribe(&*bus).await?;
    let keeper = {
        let shared = shared.clone();
        tokio::spawn(async move {
            while let Some(s) = snapshots.next().await {
                *shared.snapshot.lock().expect("snapshot lock") = Some(s);
            }
        })
    };
    let mut events = feed::start(source, &FOLLOWS, after).await?;
    let writer = {
        let shared = shared.clone();
        // File writes block: they run on the blocking pool, a batch at a time.
        tokio::spawn(async move {
            while let Some(first) = events.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = events.try_recv() {
                    batch.push(more);
                    if batch.len() >= 1024 {
                        break;
                    }
                }
                let shared = shared.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    for item in batch {
                        if let Item::Event(seq, event) = item {
                            shared.log.write(seq, &event);
                        }
                    }
                })
                .await;
            }
        })
    };
    tracing::info!(%addr, log = %path.display(), after, "Telemetry serving /metrics and writing the event log");
    Ok(Telemetry {
        addr,
        tasks: vec![server, keeper, writer],
    })
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let snapshot = shared.snapshot.lock().expect("snapshot lock").clone();
    let body = prometheus::render(snapshot.as_ref(), Some(shared.log.health()));
    ([(header::CONTENT_TYPE, prometheus::CONTENT_TYPE)], body)
}
