//! Alerts from history: a ledger's events through Monitoring's fold and the
//! rules, judged after every event at that event's time. What `tes alerts
//! --replay` prints, and how the rules are tested against simulated days.

use std::path::Path;
use std::time::Duration;

use tes_ledger::{walk, Head, Ledger, VerifyError};
use tes_monitoring::Metrics;
use tes_proto::{Envelope, Event};

use crate::core::Evaluator;
use crate::rules::Rules;

/// An alert or resolution and the ledger event that brought it about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The seq of the event after which the rule started or stopped holding.
    pub seq: u64,
    pub event: Envelope<Event>,
}

/// Monitoring's fold and the rules, fed one ledger event at a time.
#[derive(Debug, Clone)]
pub struct Replayer {
    metrics: Metrics,
    pub evaluator: Evaluator,
}

impl Replayer {
    pub fn new(window: Duration, rules: Rules) -> Replayer {
        Replayer {
            metrics: Metrics::new(window),
            evaluator: Evaluator::new(rules),
        }
    }

    /// Counts ledger event `seq` and judges the snapshot at its time.
    /// Alerts already in the ledger (recorded by an earlier run) are
    /// outputs, not inputs: they are skipped.
    pub fn push(&mut self, seq: u64, event: &Envelope<Event>) -> Vec<Transition> {
        if matches!(event.body, Event::Alert(_) | Event::Resolved(_))
            || !self.metrics.observe(seq, event)
        {
            return Vec::new();
        }
        let snapshot = self.metrics.snapshot(event.time);
        self.evaluator
            .evaluate(&snapshot)
            .into_iter()
            .map(|event| Transition { seq, event })
            .collect()
    }
}

/// Judges `events` (ledger seq, event) in order.
pub fn replay_events(
    events: impl IntoIterator<Item = (u64, Envelope<Event>)>,
    window: Duration,
    rules: Rules,
) -> (Vec<Transition>, Evaluator) {
    let mut replayer = Replayer::new(window, rules);
    let mut out = Vec::new();
    for (seq, event) in events {
        out.extend(replayer.push(seq, &event));
    }
    (out, replayer.evaluator)
}

/// [`replay_events`] over a ledger file, every row verified.
pub fn replay_ledger(
    path: &Path,
    window: Duration,
    rules: Rules,
) -> Result<(Vec<Transition>, Evaluator), VerifyError> {
    let ledger = Ledger::open_reader(path)?;
    let mut replayer = Replayer::new(window, rules);
    let mut out = Vec::new();
    walk(&ledger, Head::EMPTY, u64::MAX, None, |seq, event| {
        out.extend(replayer.push(seq, &event));
        true
    })?;
    Ok((out, replayer.evaluator))
}
