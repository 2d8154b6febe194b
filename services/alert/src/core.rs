//! The pure core of Alert: judges each snapshot against the rules and says
//! which alerts start and which end. No clock (a snapshot carries its time),
//! no randomness (an alert's id is derived from the rule and the snapshot
//! that raised it), so a replayed ledger raises the same alerts, with the
//! same ids, at the same events.

use std::collections::{BTreeMap, VecDeque};

use tes_proto::alert::{AlertRaised, AlertResolved, Rule};
use tes_proto::event::MetricsSnapshot;
use tes_proto::metrics::{percent, Migration};
use tes_proto::reply::{AlertsReply, OpenAlert, UsageThreshold, UsageThresholds};
use tes_proto::{Channel, Envelope, Event, KeyVersion, MsgId, ThreadId, Timestamp};

use crate::rules::Rules;

/// Fixed namespace of alert ids. Part of the format: changing it would make
/// a replay's alerts look new.
const ALERT_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x3f0b_8c52_9e41_4d7a_a6e2_0c5d_71b9_e824);

/// Stall samples kept per window (older ones are thinned to this).
const SAMPLES_PER_WINDOW: u64 = 256;

#[derive(Debug, Clone)]
pub struct Evaluator {
    rules: Rules,
    open: BTreeMap<Rule, (MsgId, AlertRaised)>,
    /// The old version's share over time, for "migration stalled".
    samples: VecDeque<(u64, Option<u32>)>,
    sampled_migration: Option<Migration>,
    last: Option<(Timestamp, u64)>,
}

fn threshold(rule: crate::rules::UsageAfter) -> UsageThreshold {
    UsageThreshold {
        after_ms: u64::try_from(rule.after.as_millis()).unwrap_or(u64::MAX),
        threshold_bp: rule.threshold_bp,
    }
}

/// A rule holds, with what it saw.
struct Finding {
    message: String,
    observed_bp: Option<u32>,
    threshold_bp: Option<u32>,
    migration: Option<(KeyVersion, KeyVersion)>,
}

impl Evaluator {
    pub fn new(rules: Rules) -> Evaluator {
        Evaluator {
            rules,
            open: BTreeMap::new(),
            samples: VecDeque::new(),
            sampled_migration: None,
            last: None,
        }
    }

    /// The alerts raised and not resolved, by rule.
    pub fn open(&self) -> impl Iterator<Item = (MsgId, &AlertRaised)> {
        self.open.values().map(|(id, a)| (*id, a))
    }

    /// The time and ledger seq of the last snapshot judged.
    pub fn last_judged(&self) -> Option<(Timestamp, u64)> {
        self.last
    }

    /// The open alerts, as `tes.cmd.0x5003.alerts` answers.
    pub fn report(&self) -> AlertsReply {
        let (at, seq) = self.last.unwrap_or_default();
        AlertsReply {
            open: self
                .open()
                .map(|(id, alert)| OpenAlert {
                    id,
                    alert: alert.clone(),
                })
                .collect(),
            at,
            seq,
            thresholds: UsageThresholds {
                new_version_usage_below: self.rules.new_version_usage_below.map(threshold),
                old_version_usage_above: self.rules.old_version_usage_above.map(threshold),
            },
        }
    }

    /// Takes in an alert or resolution the ledger already holds (from an
    /// earlier run), so it is not raised again.
    pub fn restore(&mut self, event: &Envelope<Event>) {
        match &event.body {
            Event::Alert(a) => {
                self.open.insert(a.rule, (event.id, a.clone()));
            }
            Event::Resolved(r)
                if self
                    .open
                    .get(&r.rule)
                    .is_some_and(|(id, _)| *id == r.raised) =>
            {
                self.open.remove(&r.rule);
            }
            _ => {}
        }
    }

    /// Judges `snap`: an `alert` event for each rule that starts to hold, a
    /// `resolved` event for each that stops.
    pub fn evaluate(&mut self, snap: &MetricsSnapshot) -> Vec<Envelope<Event>> {
        self.sample(snap);
        self.last = Some((snap.at, snap.seq));
        let mut out = Vec::new();
        for rule in Rule::ALL {
            let finding = self.check(rule, snap);
            match (finding, self.open.contains_key(&rule)) {
                (Some(f), false) => {
                    let raised = AlertRaised {
                        rule,
                        message: f.message,
                        observed_bp: f.observed_bp,
                        threshold_bp: f.threshold_bp,
                        from: f.migration.map(|m| m.0),
                        to: f.migration.map(|m| m.1),
                        at: snap.at,
                        seq: snap.seq,
                    };
                    let id = derived_id(&format!(
                        "alert/{rule}/{}/{}",
                        snap.seq,
                        snap.at.as_millis()
                    ));
                    self.open.insert(rule, (id, raised.clone()));
                    out.push(envelope(id, snap.at, Event::Alert(raised)));
                }
                (None, true) => {
                    let (raised, alert) = self.open.remove(&rule).expect("open");
                    let resolved = AlertResolved {
                        rule,
                        raised,
                        message: format!("no longer holds: {}", alert.message),
                        at: snap.at,
                        seq: snap.seq,
                    };
                    let id = derived_id(&format!("resolved/{raised}"));
                    out.push(envelope(id, snap.at, Event::Resolved(resolved)));
                }
                _ => {}
            }
        }
        out
    }

    fn check(&self, rule: Rule, snap: &MetricsSnapshot) -> Option<Finding> {
        let elapsed = |m: &Migration| snap.at.as_millis().saturating_sub(m.started_at.as_millis());
        let window =
            humantime::format_duration(std::time::Duration::from_millis(snap.window.span_ms));
        match rule {
            Rule::NewVersionUsageBelow => {
                let r = self.rules.new_version_usage_below?;
                let m = snap.migration.as_ref()?;
                if u128::from(elapsed(m)) < r.after.as_millis() {
                    return None;
                }
                let share = snap.window.usage_bp(m.to)?;
                (share < r.threshold_bp).then(|| Finding {
                    message: format!(
                        "{} served {} of the signing requests in the last {window}, {} after the rotation from {} (threshold {}): investigate the migration",
                        m.to,
                        percent(share),
                        humantime::format_duration(r.after),
                        m.from,
                        percent(r.threshold_bp)
                    ),
                    observed_bp: Some(share),
                    threshold_bp: Some(r.threshold_bp),
                    migration: Some((m.from, m.to)),
                })
            }
            Rule::OldVersionUsageAbove => {
                let r = self.rules.old_version_usage_above?;
                let m = snap.migration.as_ref()?;
                if u128::from(elapsed(m)) < r.after.as_millis() {
                    return None;
                }
                let share = snap.window.usage_bp(m.from)?;
                (share > r.threshold_bp).then(|| Finding {
                    message: format!(
                        "{} still served {} of the signing requests in the last {window}, {} after the rotation to {} (threshold {}): complete the migration",
                        m.from,
                        percent(share),
                        humantime::format_duration(r.after),
                        m.to,
                        percent(r.threshold_bp)
                    ),
                    observed_bp: Some(share),
                    threshold_bp: Some(r.threshold_bp),
                    migration: Some((m.from, m.to)),
                })
            }
            Rule::FallbackRateAbove => {
                let r = self.rules.fallback_rate_above?;
                if snap.window.sign_requests < r.min_requests {
                    return None;
                }
                let rate = snap.window.fallback_rate_bp()?;
                (rate > r.above_bp).then(|| Finding {
                    message: format!(
                        "{} of {} signing requests in the last {window} fell back to an older key (threshold {}): check that {} is on every signer",
                        percent(rate),
                        snap.window.sign_requests,
                        percent(r.above_bp),
                        snap.active.map_or("the active version".to_string(), |v| v.to_string())
                    ),
                    observed_bp: Some(rate),
                    threshold_bp: Some(r.above_bp),
                    migration: snap.migration.as_ref().map(|m| (m.from, m.to)),
                })
            }
            Rule::RotationFailed => {
                if !self.rules.rotation_failed || snap.failures_since_rotation == 0 {
                    return None;
                }
                Some(Finding {
                    message: format!(
                        "{} rotation failure(s) since the active version last changed: provision the next version and rotate (Supervisor 0x1001)",
                        snap.failures_since_rotation
                    ),
                    observed_bp: None,
                    threshold_bp: None,
                    migration: None,
                })
            }
            Rule::KeyRevoked => {
                let hold = self.rules.key_revoked?;
                let hold_ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX);
                let recent: Vec<_> = snap
                    .revocations
                    .iter()
                    .filter(|r| snap.at.as_millis().saturating_sub(r.at.as_millis()) < hold_ms)
                    .collect();
                let last = recent.last()?;
                let named: Vec<String> = recent
                    .iter()
                    .map(|r| format!("{} at {} ({})", r.version, r.at, r.reason))
                    .collect();
                Some(Finding {
                    message: format!(
                        "key version(s) revoked: {}. Their signatures no longer verify anywhere: \
                         re-sign what they covered under {} and check how the key leaked",
                        named.join("; "),
                        snap.active
                            .map_or("a new version".to_string(), |v| v.to_string())
                    ),
                    observed_bp: None,
                    threshold_bp: None,
                    migration: Some((last.version, snap.active.unwrap_or(last.version))),
                })
            }
            Rule::MigrationStalled => {
                let r = self.rules.migration_stalled?;
                let m = snap.migration.as_ref()?;
                let window_ms = u64::try_from(r.window.as_millis()).unwrap_or(u64::MAX);
                if elapsed(m) < window_ms {
                    return None;
                }
                let now = snap.window.usage_bp(m.from)?;
                let cutoff = snap.at.as_millis().saturating_sub(window_ms);
                let then = self
                    .samples
                    .iter()
                    .rev()
                    .find(|(t, _)| *t <= cutoff)
                    .and_then(|(_, s)| *s)?;
                let fallen = then.saturating_sub(now);
                (now > r.above_bp && fallen < r.min_drop_bp).then(|| Finding {
                    message: format!(
                        "{}'s share has fallen by less than {} in {} ({} then, {} now) since the rotation to {}: find the clients still on {}",
                        m.from,
                        percent(r.min_drop_bp),
                        humantime::format_duration(r.window),
                        percent(then),
                        percent(now),
                        m.to,
                        m.from
                    ),
                    observed_bp: Some(now),
                    threshold_bp: Some(then),
                    migration: Some((m.from, m.to)),
                })
            }
        }
    }

    /// Keeps the old version's share over the stall window (thinned, so a
    /// snapshot per event or per second costs the same memory).
    fn sample(&mut self, snap: &MetricsSnapshot) {
        let Some(stall) = self.rules.migration_stalled else {
            return;
        };
        let key = |m: &Option<Migration>| m.as_ref().map(|m| (m.from, m.to, m.started_at));
        if key(&snap.migration) != key(&self.sampled_migration) {
            self.samples.clear();
            self.sampled_migration = snap.migration.clone();
        }
        let Some(m) = &snap.migration else { return };
        let window_ms = u64::try_from(stall.window.as_millis()).unwrap_or(u64::MAX);
        let at = snap.at.as_millis();
        let spacing = (window_ms / SAMPLES_PER_WINDOW).max(1);
        if self.samples.back().is_none_or(|(t, _)| at >= t + spacing) {
            self.samples.push_back((at, snap.window.usage_bp(m.from)));
        }
        // Keep one sample at or before the cutoff: it is what "then" means.
        let cutoff = at.saturating_sub(window_ms);
        while self.samples.len() > 1 && self.samples[1].0 <= cutoff {
            self.samples.pop_front();
        }
    }
}

fn derived_id(name: &str) -> MsgId {
    MsgId(uuid::Uuid::new_v5(&ALERT_NAMESPACE, name.as_bytes()))
}

fn envelope(id: MsgId, at: Timestamp, body: Event) -> Envelope<Event> {
    Envelope::new(id, at, ThreadId::Alert, Channel::Event, body)
}
