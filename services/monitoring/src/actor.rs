//! Monitoring's shell (0x5000): folds the ledger feed into [`Metrics`],
//! publishes a snapshot on `tes.evt.0x5000.metrics` at a set interval once
//! it has caught up with the ledger (a snapshot of half the history would
//! raise false alerts), and answers `tes.cmd.0x5000.metrics`.

use std::sync::Arc;
use std::time::Duration;

use tes_bus::typed::{accept, decode_event, publish_event, respond};
use tes_bus::{Bus, BusError, Message, Subscription};
use tes_proto::command::MetricsQuery;
use tes_proto::envelope::Clock;
use tes_proto::event::{kind, MetricsSnapshot};
use tes_proto::subject;
use tes_proto::{
    Channel, ContentType, Envelope, ErrorCode, ErrorReply, Event, MsgId, Reply, ThreadId,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::core::{Metrics, DEFAULT_WINDOW};
use crate::feed::Item;

const THREAD: ThreadId = ThreadId::Monitoring;

#[derive(Clone)]
pub struct MonitoringConfig {
    pub wire: ContentType,
    /// The recent-traffic window for shares and rates.
    pub window: Duration,
    /// How often a snapshot is published.
    pub publish_every: Duration,
    pub clock: Clock,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        MonitoringConfig {
            wire: ContentType::Json,
            window: DEFAULT_WINDOW,
            publish_every: Duration::from_secs(1),
            clock: tes_proto::envelope::system_clock(),
        }
    }
}

/// Which events Monitoring counts (the ledger's, of both writers of it).
pub const FOLLOWS: [ThreadId; 2] = [ThreadId::VersionManagement, ThreadId::Alert];

/// Runs Monitoring on `feed` (see [`crate::feed`]) until the task is aborted.
pub async fn start(
    bus: Arc<dyn Bus>,
    mut feed: mpsc::Receiver<Item>,
    config: MonitoringConfig,
) -> Result<JoinHandle<()>, BusError> {
    let mut queries = bus.subscribe(&subject::commands_of(THREAD), None).await?;
    Ok(tokio::spawn(async move {
        let mut metrics = Metrics::new(config.window);
        let mut caught_up = false;
        let mut tick = tokio::time::interval(config.publish_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut feed_open = true;
        loop {
            tokio::select! {
                item = feed.recv(), if feed_open => match item {
                    Some(Item::Event(seq, event)) => {
                        metrics.observe(seq, &event);
                    }
                    Some(Item::CaughtUp) => {
                        caught_up = true;
                        tracing::info!(seq = metrics.seq(), "Monitoring caught up with the ledger");
                    }
                    None => {
                        tracing::warn!("the ledger feed ended; Monitoring keeps its last counts");
                        feed_open = false;
                    }
                },
                _ = tick.tick(), if caught_up => {
                    let snapshot = metrics.snapshot((config.clock)());
                    let event = Envelope::new(
                        MsgId::generate(),
                        snapshot.at,
                        THREAD,
                        Channel::Event,
                        Event::Metrics(Box::new(snapshot)),
                    );
                    if let Err(error) = publish_event(&*bus, config.wire, &event).await {
                        tracing::debug!(%error, "snapshot not published");
                    }
                }
                Some(message) = queries.next() => {
                    let snapshot = metrics.snapshot((config.clock)());
                    answer(&*bus, &message, snapshot, caught_up).await;
                }
                else => break,
            }
        }
    }))
}

/// Monitoring's snapshots as a subscriber reads them (Telemetry, Alert).
pub struct Snapshots(Subscription);

impl Snapshots {
    pub async fn subscribe(bus: &dyn Bus) -> Result<Snapshots, BusError> {
        bus.subscribe(&subject::event(THREAD, kind::METRICS), None)
            .await
            .map(Snapshots)
    }

    /// The next snapshot this build can read. One from a newer schema
    /// version, or anything else on the subject, is skipped with a warning,
    /// never a crash. `None` once the bus is gone.
    pub async fn next(&mut self) -> Option<MetricsSnapshot> {
        loop {
            let message = self.0.next().await?;
            match decode_event(&message) {
                Ok(e) if e.schema > tes_proto::SCHEMA_VERSION => tracing::warn!(
                    schema = e.schema,
                    supported = tes_proto::SCHEMA_VERSION,
                    "a snapshot from a newer schema version; skipped"
                ),
                Ok(Envelope {
                    body: Event::Metrics(snapshot),
                    ..
                }) => return Some(*snapshot),
                Ok(other) => tracing::warn!(
                    kind = other.body.kind(),
                    "not a snapshot on the snapshot subject; skipped"
                ),
                Err(error) => {
                    tracing::warn!(%error, "a snapshot that does not decode (a newer schema?); skipped")
                }
            }
        }
    }
}

async fn answer(bus: &dyn Bus, message: &Message, snapshot: MetricsSnapshot, caught_up: bool) {
    let Some((ct, _)) = accept::<MetricsQuery>(bus, THREAD, message).await else {
        return;
    };
    let reply = if caught_up {
        Reply::Ok(snapshot)
    } else {
        Reply::Err(ErrorReply::new(
            ErrorCode::Unavailable,
            format!(
                "Monitoring is still reading the ledger (at seq {}); ask again in a moment",
                snapshot.seq
            ),
        ))
    };
    if let Err(error) = respond(bus, message, ct, &reply).await {
        tracing::warn!(%error, "could not answer a metrics query");
    }
}
