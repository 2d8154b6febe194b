//! Alert's shell (0x5003): judges each snapshot from Monitoring
//! (`tes.evt.0x5000.metrics`) with the [`Evaluator`], and hands every alert
//! and resolution to the Supervisor (`tes.cmd.0x1001.alert`), which has it
//! recorded; Version Management then publishes it on
//! `tes.evt.0x5003.alert|resolved`. What the ledger already holds (from an
//! earlier run) comes in through the feed first, so a restart raises
//! nothing twice. Answers `tes.cmd.0x5003.alerts` with the open alerts.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tes_bus::typed::{self, accept, respond, CallError};
use tes_bus::{Bus, BusError, Message};
use tes_monitoring::actor::Snapshots;
use tes_monitoring::feed::Item;
use tes_proto::command::{AlertNotice, AlertsQuery};
use tes_proto::subject;
use tes_proto::{ContentType, Envelope, ErrorCode, Event, Reply, ThreadId};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::core::Evaluator;
use crate::rules::Rules;

const THREAD: ThreadId = ThreadId::Alert;

#[derive(Debug, Clone)]
pub struct AlertConfig {
    pub wire: ContentType,
    pub rules: Rules,
    /// How long to wait for the Supervisor to have an alert recorded.
    pub timeout: Duration,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            wire: ContentType::Json,
            rules: Rules::default(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Which ledger events Alert reads back: its own.
pub const FOLLOWS: [ThreadId; 1] = [ThreadId::Alert];

/// Runs Alert until the task is aborted. `feed` gives the alerts already in
/// the ledger (see [`tes_monitoring::feed`]).
pub async fn start(
    bus: Arc<dyn Bus>,
    mut feed: mpsc::Receiver<Item>,
    config: AlertConfig,
) -> Result<JoinHandle<()>, BusError> {
    let mut snapshots = Snapshots::subscribe(&*bus).await?;
    let mut queries = bus.subscribe(&subject::commands_of(THREAD), None).await?;
    Ok(tokio::spawn(async move {
        let mut evaluator = Evaluator::new(config.rules.clone());
        let mut restored = false;
        let mut feed_open = true;
        // Judged but not yet recorded, oldest first.
        let mut pending: VecDeque<Envelope<Event>> = VecDeque::new();
        let mut failing = false;
        loop {
            tokio::select! {
                item = feed.recv(), if feed_open => match item {
                    Some(Item::Event(_, event)) => evaluator.restore(&event),
                    Some(Item::CaughtUp) => restored = true,
                    None => {
                        feed_open = false;
                        restored = true;
                    }
                },
                Some(snapshot) = snapshots.next() => {
                    if !restored {
                        continue;
                    }
                    pending.extend(evaluator.evaluate(&snapshot));
                    deliver(&*bus, &config, &mut pending, &mut failing).await;
                }
                Some(message) = queries.next() => answer(&*bus, &message, &evaluator).await,
                else => break,
            }
        }
    }))
}

/// Hands pending alerts to the Supervisor in order; stops at the first
/// that does not get through and keeps it (and the rest) for next time.
async fn deliver(
    bus: &dyn Bus,
    config: &AlertConfig,
    pending: &mut VecDeque<Envelope<Event>>,
    failing: &mut bool,
) {
    while let Some(event) = pending.front() {
        let notice = typed::command(
            ThreadId::Supervisor,
            AlertNotice {
                event: event.clone(),
            },
        );
        match typed::call::<AlertNotice>(
            bus,
            ThreadId::Supervisor,
            config.wire,
            &notice,
            config.timeout,
        )
        .await
        {
            Ok(_) => {
                if let Event::Alert(a) = &event.body {
                    tracing::warn!(rule = %a.rule, "{}", a.message);
                }
                pending.pop_front();
                *failing = false;
            }
            Err(CallError::Refused(e)) if e.code == ErrorCode::Duplicate => {
                pending.pop_front();
            }
            Err(error) => {
                if !*failing {
                    tracing::warn!(%error, waiting = pending.len(), "alerts not recorded yet (Supervisor or Version Management away); will retry");
                    *failing = true;
                }
                return;
            }
        }
    }
}

async fn answer(bus: &dyn Bus, message: &Message, evaluator: &Evaluator) {
    let Some((ct, _)) = accept::<AlertsQuery>(bus, THREAD, message).await else {
        return;
    };
    let reply = evaluator.report();
    if let Err(error) = respond(bus, message, ct, &Reply::Ok(reply)).await {
        tracing::warn!(%error, "could not answer an alerts query");
    }
}
