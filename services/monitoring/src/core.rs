//! The pure core of Monitoring: a fold of ledger events into counts, and a
//! snapshot of them at a given moment. No I/O, no clock: each event brings
//! its own time and a snapshot is given its time, so replaying a ledger
//! through [`Metrics`] gives exactly the numbers the live actor had.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tes_proto::event::MetricsSnapshot;
use tes_proto::metrics::{
    FallbackCount, Migration, Revocation, UsageBucket, UsageSeries, VersionCounts, VersionUsage,
    WindowCounts, SERIES_BUCKETS,
};
use tes_proto::{Envelope, Event, KeyVersion, MsgId, Timestamp};

/// The recent-traffic window when none is configured.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);

/// Counts since the ledger began, plus the traffic of the last window.
#[derive(Debug, Clone)]
pub struct Metrics {
    window_ms: u64,
    /// The last ledger seq counted: an event at or below it is not counted again.
    seq: u64,
    last_event_at: Timestamp,
    active: Option<KeyVersion>,
    versions: BTreeMap<KeyVersion, VersionCounts>,
    fallbacks: BTreeMap<(KeyVersion, KeyVersion), u64>,
    sign_requests: u64,
    dual_signatures: u64,
    revocations: Vec<Revocation>,
    /// The command behind the last signature: the signatures of one request
    /// (two during dual signing) are adjacent in the ledger and share it.
    last_sign_cause: Option<MsgId>,
    rotations: u64,
    rollbacks: u64,
    rotation_failures: u64,
    failures_since_rotation: u64,
    retirements: u64,
    bumps: u64,
    alerts: u64,
    migration: Option<Migration>,
    recent: VecDeque<(u64, Recent)>,
    window: WindowTotals,
    /// Requests served per version, per bucket of `bucket_ms` (its start),
    /// in start order: the window over time, kept as it goes (a snapshot
    /// does not walk `recent`).
    series: VecDeque<(u64, BTreeMap<KeyVersion, u64>)>,
    bucket_ms: u64,
}

fn per_version(counts: &BTreeMap<KeyVersion, u64>) -> Vec<VersionUsage> {
    counts
        .iter()
        .map(|(&version, &operations)| VersionUsage {
            version,
            operations,
        })
        .collect()
}

/// One thing that happened within the window.
#[derive(Debug, Clone, Copy)]
enum Recent {
    SignRequest,
    Fallback,
    /// A signing request served by this version (its primary signature).
    Served(KeyVersion),
    /// A dual signature beside the primary.
    Dual,
    Verified(KeyVersion),
}

#[derive(Debug, Clone, Default)]
struct WindowTotals {
    sign_requests: u64,
    fallbacks: u64,
    dual_signatures: u64,
    usage: BTreeMap<KeyVersion, u64>,
    verifications: BTreeMap<KeyVersion, u64>,
}

impl WindowTotals {
    fn add(&mut self, what: Recent, sign: i8) {
        let bump = |n: &mut u64| {
            *n = if sign > 0 {
                *n + 1
            } else {
                n.saturating_sub(1)
            }
        };
        let per_version = |map: &mut BTreeMap<KeyVersion, u64>, v: KeyVersion| {
            let n = map.entry(v).or_default();
            bump(n);
            if *n == 0 {
                map.remove(&v);
            }
        };
        match what {
            Recent::SignRequest => bump(&mut self.sign_requests),
            Recent::Fallback => bump(&mut self.fallbacks),
            Recent::Dual => bump(&mut self.dual_signatures),
            Recent::Served(v) => per_version(&mut self.usage, v),
            Recent::Verified(v) => per_version(&mut self.verifications, v),
        }
    }
}

impl Metrics {
    /// Empty counts with a recent-traffic window of `window`.
    pub fn new(window: Duration) -> Metrics {
        Metrics {
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            seq: 0,
            last_event_at: Timestamp::default(),
            active: None,
            versions: BTreeMap::new(),
            fallbacks: BTreeMap::new(),
            sign_requests: 0,
            dual_signatures: 0,
            revocations: Vec::new(),
            last_sign_cause: None,
            rotations: 0,
            rollbacks: 0,
            rotation_failures: 0,
            failures_since_rotation: 0,
            retirements: 0,
            bumps: 0,
            alerts: 0,
            migration: None,
            recent: VecDeque::new(),
            window: WindowTotals::default(),
            series: VecDeque::new(),
            bucket_ms: u64::try_from(window.as_millis())
                .unwrap_or(u64::MAX)
                .div_ceil(SERIES_BUCKETS)
                .max(1000),
        }
    }

    /// The last ledger seq counted.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The time of the last event counted.
    pub fn last_event_at(&self) -> Timestamp {
        self.last_event_at
    }

    /// Counts ledger event `seq`. Returns false (and counts nothing) for an
    /// event that is not a ledger event or whose seq was already counted.
    pub fn observe(&mut self, seq: u64, event: &Envelope<Event>) -> bool {
        if !event.body.is_ledgered() || seq <= self.seq {
            return false;
        }
        self.seq = seq;
        let at = event.time;
        self.last_event_at = self.last_event_at.max(at);
        match &event.body {
            Event::KeyProvisioned(_) => {}
            Event::KeyRotate(e) => {
                self.active = Some(e.to);
                self.failures_since_rotation = 0;
                if let Some(from) = e.from {
                    self.rotations += 1;
                    self.migration = Some(Migration {
                        from,
                        to: e.to,
                        started_at: at,
                        first_signature_at: None,
                    });
                }
            }
            Event::KeyRollback(e) => {
                self.active = Some(e.to);
                self.rollbacks += 1;
                self.failures_since_rotation = 0;
                // Back where it was: no migration is in progress.
                self.migration = None;
            }
            Event::ArchiveBatch(_) | Event::BundleArchived(_) => {}
            Event::KeyRetired(_) => self.retirements += 1,
            Event::KeyFallback(e) => {
                *self.fallbacks.entry((e.from, e.to)).or_default() += 1;
                self.remember(at, Recent::Fallback);
            }
            Event::RotationFailed(_) => {
                self.rotation_failures += 1;
                self.failures_since_rotation += 1;
            }
            Event::SignatureGenerated(e) => {
                // The first signature of a request is the one that served
                // it; the ones after it under the same command are the dual
                // signatures of a grace window, not clients on that version.
                let cause = event.causation_id;
                let primary = cause.is_none() || cause != self.last_sign_cause;
                self.last_sign_cause = cause;
                let counts = self.counts(e.key_version);
                counts.signatures += 1;
                if primary {
                    counts.primary += 1;
                    self.sign_requests += 1;
                    self.remember(at, Recent::SignRequest);
                    self.remember(at, Recent::Served(e.key_version));
                } else {
                    counts.dual += 1;
                    self.dual_signatures += 1;
                    self.remember(at, Recent::Dual);
                }
                if let Some(m) = &mut self.migration {
                    if m.to == e.key_version && m.first_signature_at.is_none() {
                        m.first_signature_at = Some(at);
                    }
                }
            }
            Event::SignatureVerified(e) => {
                let counts = self.counts(e.key_version);
                if e.valid {
                    counts.verified_valid += 1;
                } else {
                    counts.verified_invalid += 1;
                }
                self.remember(at, Recent::Verified(e.key_version));
            }
            Event::KeyRevoked(e) => {
                if self.active == Some(e.version) {
                    self.active = None;
                }
                self.revocations.push(Revocation {
                    version: e.version,
                    at,
                    reason: e.reason.clone(),
                    seq,
                });
            }
            Event::GraceChanged(_) | Event::KeyExpirySet(_) => {}
            Event::VersionBump(_) => self.bumps += 1,
            Event::Alert(_) => self.alerts += 1,
            Event::Resolved(_) => {}
            Event::Rejected(_)
            | Event::Checkpoint(_)
            | Event::SignerHeartbeat(_)
            | Event::Metrics(_) => unreachable!("not ledgered"),
        }
        true
    }

    fn counts(&mut self, version: KeyVersion) -> &mut VersionCounts {
        self.versions.entry(version).or_insert(VersionCounts {
            version,
            signatures: 0,
            primary: 0,
            dual: 0,
            verified_valid: 0,
            verified_invalid: 0,
        })
    }

    fn remember(&mut self, at: Timestamp, what: Recent) {
        self.recent.push_back((at.as_millis(), what));
        self.window.add(what, 1);
        if let Recent::Served(version) = what {
            let start = at.as_millis() - at.as_millis() % self.bucket_ms;
            // Events come in time order but for clock skew between
            // signers: a late one is counted in its own bucket.
            let at = self.series.iter().rposition(|(s, _)| *s <= start);
            let bucket = match at {
                Some(i) if self.series[i].0 == start => &mut self.series[i].1,
                Some(i) => {
                    self.series.insert(i + 1, (start, BTreeMap::new()));
                    &mut self.series[i + 1].1
                }
                None => {
                    self.series.push_front((start, BTreeMap::new()));
                    &mut self.series[0].1
                }
            };
            *bucket.entry(version).or_default() += 1;
        }
    }

    /// Forgets traffic older than the window before `at`.
    fn expire(&mut self, at: Timestamp) {
        let cutoff = at.as_millis().saturating_sub(self.window_ms);
        while let Some(&(t, what)) = self.recent.front() {
            if t >= cutoff {
                break;
            }
            self.window.add(what, -1);
            self.recent.pop_front();
        }
        // A bucket goes once all of it is before the window.
        while self
            .series
            .front()
            .is_some_and(|(start, _)| start + self.bucket_ms <= cutoff)
        {
            self.series.pop_front();
        }
    }

    /// Everything known, as of `at`. Time only moves forward: an `at`
    /// before an event already counted is taken as that event's time.
    pub fn snapshot(&mut self, at: Timestamp) -> MetricsSnapshot {
        let at = at.max(self.last_event_at);
        self.expire(at);
        MetricsSnapshot {
            at,
            seq: self.seq,
            active: self.active,
            versions: self.versions.values().cloned().collect(),
            fallbacks: self
                .fallbacks
                .iter()
                .map(|(&(from, to), &count)| FallbackCount { from, to, count })
                .collect(),
            sign_requests: self.sign_requests,
            dual_signatures: self.dual_signatures,
            rotations: self.rotations,
            rollbacks: self.rollbacks,
            rotation_failures: self.rotation_failures,
            failures_since_rotation: self.failures_since_rotation,
            retirements: self.retirements,
            bumps: self.bumps,
            alerts: self.alerts,
            migration: self.migration.clone(),
            window: WindowCounts {
                span_ms: self.window_ms,
                sign_requests: self.window.sign_requests,
                fallbacks: self.window.fallbacks,
                dual_signatures: self.window.dual_signatures,
                usage: per_version(&self.window.usage),
                verifications: per_version(&self.window.verifications),
            },
            revocations: self.revocations.clone(),
            series: UsageSeries {
                bucket_ms: self.bucket_ms,
                buckets: self
                    .series
                    .iter()
                    .map(|(start, usage)| UsageBucket {
                        start: Timestamp::from_millis(*start),
                        usage: per_version(usage),
                    })
                    .collect(),
            },
        }
    }
}
