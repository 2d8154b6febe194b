//! The state of key versions and entities, and the fold that builds it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tes_proto::event::{Event, RotationReason};
use tes_proto::reply::KeyStatus;
use tes_proto::{Envelope, Fingerprint, KeyVersion, MsgId, Timestamp};

/// Version of the snapshot encoding of [`State`]. Bump it when `State`
/// changes shape: old snapshots are then ignored and the state is rebuilt
/// from the events (snapshots are caches; events are the truth).
pub const STATE_SCHEMA: u16 = 4;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub status: KeyStatus,
    pub fingerprint: Fingerprint,
    /// How many times the material behind this version changed.
    pub material_changes: u32,
    pub activated_at: Option<Timestamp>,
    /// While verifying: until when.
    pub grace_until: Option<Timestamp>,
    /// Fixed at first activation.
    pub expires_at: Option<Timestamp>,
    pub signatures: u64,
    pub verifications: u64,
    pub failed_verifications: u64,
    /// When and why it was revoked (status [`KeyStatus::Revoked`]).
    pub revoked_at: Option<Timestamp>,
    pub revoked_reason: Option<String>,
    /// When it was first provisioned.
    pub provisioned_at: Option<Timestamp>,
    /// When its status last changed (a rollback makes a version active
    /// again after its `activated_at`).
    pub status_since: Option<Timestamp>,
    /// When it last stopped being the active version (a rotation or a
    /// rollback away from it): the start of its verifying window.
    pub deactivated_at: Option<Timestamp>,
    pub retired_at: Option<Timestamp>,
}

/// How far the archive of one version's bundles has come.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveRecord {
    /// Batches planned so far (the last one may still be open).
    pub batches: u64,
    pub objects: u64,
    pub bytes: u64,
    /// The planned batch not yet finished: its number and keys. A pass
    /// that finds one finishes it before planning another.
    pub open: Option<(u64, Vec<String>)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub keys: BTreeMap<KeyVersion, KeyRecord>,
    /// The one version that signs.
    pub active: Option<KeyVersion>,
    /// The version a rollback returns to (the active one before the last rotation).
    pub previous: Option<KeyVersion>,
    pub rotation_timestamp: Option<Timestamp>,
    /// Why the active version last changed (none after a rollback), and who asked.
    pub rotation_reason: Option<RotationReason>,
    pub rotated_by: Option<String>,
    /// The version that served the last signing request (its primary
    /// signature; a dual signature beside it is not a request).
    pub last_sig_version: Option<KeyVersion>,
    /// The command behind the last signature: the signatures of one request
    /// are adjacent in the ledger and share it, the first is the primary.
    pub last_sign_cause: Option<MsgId>,
    /// The expired active version a rotation failure was already reported
    /// for, so a tick does not report it again every second.
    pub expiry_failure_reported: Option<KeyVersion>,
    /// Entity name → semver.
    pub entities: BTreeMap<String, String>,
    pub fallbacks: u64,
    /// Archive progress per version (only versions an archive pass touched).
    pub archives: BTreeMap<KeyVersion, ArchiveRecord>,
    /// Number of events folded in (the ledger seq this state is at).
    pub seq: u64,
}

impl State {
    /// Folds one event in, without its causation (every signature counts as
    /// a request of its own). See [`State::apply_caused`].
    pub fn apply(&mut self, at: Timestamp, event: &Event) {
        self.apply_caused(at, None, event)
    }

    /// Folds a ledger event with its envelope's time and causation.
    pub fn apply_envelope(&mut self, event: &Envelope<Event>) {
        self.apply_caused(event.time, event.causation_id, &event.body)
    }

    /// Folds one event in. Events are facts: this never fails, and an event
    /// that names an unknown version is recorded as well as it can be.
    /// `cause` (the command behind the event) tells a dual signature from
    /// the primary one it follows.
    pub fn apply_caused(&mut self, at: Timestamp, cause: Option<MsgId>, event: &Event) {
        if !event.is_ledgered() {
            return;
        }
        self.seq += 1;
        match event {
            Event::KeyProvisioned(e) => match self.keys.get_mut(&e.version) {
                Some(k) => {
                    if k.fingerprint != e.fingerprint {
                        k.fingerprint = e.fingerprint.clone();
                        k.material_changes += 1;
                    }
                }
                None => {
                    self.keys.insert(
                        e.version,
                        KeyRecord {
                            status: KeyStatus::Provisioned,
                            fingerprint: e.fingerprint.clone(),
                            material_changes: 0,
                            activated_at: None,
                            grace_until: None,
                            expires_at: None,
                            signatures: 0,
                            verifications: 0,
                            failed_verifications: 0,
                            revoked_at: None,
                            revoked_reason: None,
                            provisioned_at: Some(at),
                            status_since: Some(at),
                            deactivated_at: None,
                            retired_at: None,
                        },
                    );
                }
            },
            Event::KeyRotate(e) => {
                if let Some(from) = e.from.and_then(|f| self.keys.get_mut(&f)) {
                    from.status = KeyStatus::Verifying;
                    from.status_since = Some(at);
                    from.deactivated_at = Some(at);
                    from.grace_until = e.grace_until;
                }
                if let Some(to) = self.keys.get_mut(&e.to) {
                    to.status = KeyStatus::Active;
                    to.status_since = Some(at);
                    to.grace_until = None;
                    to.activated_at = Some(at);
                    if to.expires_at.is_none() {
                        to.expires_at = e.expires_at;
                    }
                }
                self.active = Some(e.to);
                self.previous = e.from;
                self.rotation_timestamp = Some(at);
                self.rotation_reason = Some(e.reason);
                self.rotated_by = Some(e.requested_by.clone());
                self.expiry_failure_reported = None;
            }
            Event::KeyRollback(e) => {
                if let Some(from) = self.keys.get_mut(&e.from) {
                    from.status = KeyStatus::Verifying;
                    from.status_since = Some(at);
                    from.deactivated_at = Some(at);
                    from.grace_until = Some(e.grace_until);
                }
                if let Some(to) = self.keys.get_mut(&e.to) {
                    to.status = KeyStatus::Active;
                    to.status_since = Some(at);
                    to.grace_until = None;
                }
                self.active = Some(e.to);
                // One step back only: a second rollback would need a second
                // rotation to undo first.
                self.previous = None;
                self.rotation_timestamp = Some(at);
                self.rotation_reason = None;
                self.rotated_by = Some(e.requested_by.clone());
                self.expiry_failure_reported = None;
            }
            Event::KeyRetired(e) => {
                if let Some(k) = self.keys.get_mut(&e.version) {
                    k.status = KeyStatus::Retired;
                    k.status_since = Some(at);
                    k.retired_at = Some(at);
                    k.grace_until = None;
                }
                if self.previous == Some(e.version) {
                    self.previous = None;
                }
            }
            Event::KeyFallback(_) => self.fallbacks += 1,
            Event::RotationFailed(e) => self.expiry_failure_reported = e.from,
            Event::SignatureGenerated(e) => {
                if let Some(k) = self.keys.get_mut(&e.key_version) {
                    k.signatures += 1;
                }
                if cause.is_none() || cause != self.last_sign_cause {
                    self.last_sig_version = Some(e.key_version);
                }
                self.last_sign_cause = cause;
            }
            Event::SignatureVerified(e) => {
                if let Some(k) = self.keys.get_mut(&e.key_version) {
                    k.verifications += 1;
                    if !e.valid {
                        k.failed_verifications += 1;
                    }
                }
            }
            Event::VersionBump(e) => {
                self.entities.insert(e.entity.clone(), e.to.clone());
            }
            // Alerts are in the ledger for the audit trail; they change no key.
            Event::Alert(_) | Event::Resolved(_) => {}
            Event::ArchiveBatch(e) => {
                let a = self.archives.entry(e.version).or_default();
                a.batches = a.batches.max(e.batch);
                a.open = Some((e.batch, e.keys.clone()));
            }
            Event::BundleArchived(e) => {
                let a = self.archives.entry(e.version).or_default();
                a.objects += e.objects;
                a.bytes += e.bytes;
                if a.open.as_ref().is_some_and(|(b, _)| *b == e.batch) {
                    a.open = None;
                }
            }
            Event::KeyRevoked(e) => {
                if let Some(k) = self.keys.get_mut(&e.version) {
                    k.status = KeyStatus::Revoked;
                    k.status_since = Some(at);
                    k.grace_until = None;
                    k.revoked_at = Some(at);
                    k.revoked_reason = Some(e.reason.clone());
                }
                if self.previous == Some(e.version) {
                    self.previous = None;
                }
                if self.active == Some(e.version) {
                    // Forced: nothing signs until a rotation to a new version.
                    self.active = None;
                    self.rotation_timestamp = Some(at);
                    self.rotation_reason = Some(RotationReason::Revoked);
                    self.rotated_by = Some(e.requested_by.clone());
                }
            }
            Event::GraceChanged(e) => {
                if let Some(k) = self.keys.get_mut(&e.version) {
                    if k.status == KeyStatus::Verifying {
                        k.grace_until = Some(e.grace_until);
                    }
                }
            }
            Event::KeyExpirySet(e) => {
                if let Some(k) = self.keys.get_mut(&e.version) {
                    k.expires_at = Some(e.expires_at);
                }
                if self.expiry_failure_reported == Some(e.version) {
                    self.expiry_failure_reported = None;
                }
            }
            Event::Rejected(_)
            | Event::Checkpoint(_)
            | Event::SignerHeartbeat(_)
            | Event::Metrics(_) => {
                unreachable!("not ledgered")
            }
        }
    }

    /// The revoked version that was active when it was revoked with nothing
    /// to take over (the reason signing refuses now).
    pub fn revoked_active(&self) -> Option<(KeyVersion, &KeyRecord)> {
        if self.active.is_some() || self.rotation_reason != Some(RotationReason::Revoked) {
            return None;
        }
        self.keys
            .iter()
            .filter(|(_, k)| k.status == KeyStatus::Revoked)
            .max_by_key(|(_, k)| k.revoked_at)
            .map(|(v, k)| (*v, k))
    }

    pub fn status_of(&self, v: KeyVersion) -> Option<KeyStatus> {
        self.keys.get(&v).map(|k| k.status)
    }

    /// Versions that verify at `now`: the active one and those still in grace.
    pub fn verifying_set(&self, now: Timestamp) -> impl Iterator<Item = KeyVersion> + '_ {
        self.keys.iter().filter_map(move |(v, k)| match k.status {
            KeyStatus::Active => Some(*v),
            KeyStatus::Verifying if k.grace_until.is_none_or(|g| now < g) => Some(*v),
            _ => None,
        })
    }

    /// The version a plain rotation moves to: the lowest version above the
    /// active one that is provisioned or still verifying (not retired, not
    /// revoked). With none active (the active one was revoked with nothing
    /// to take over), the lowest such version above the revoked one.
    pub fn next_version(&self) -> Option<KeyVersion> {
        let after = match self.active {
            Some(active) => active,
            None => self.revoked_active()?.0,
        };
        self.keys
            .range(after.next()..)
            .find(|(_, k)| matches!(k.status, KeyStatus::Provisioned | KeyStatus::Verifying))
            .map(|(v, _)| *v)
    }
}

/// A snapshot's bytes (postcard; [`STATE_SCHEMA`] is stored beside them).
pub fn encode_snapshot(state: &State) -> Vec<u8> {
    postcard::to_stdvec(state).expect("state serializes")
}

/// `None` for bytes that are not a state of [`STATE_SCHEMA`].
pub fn decode_snapshot(bytes: &[u8]) -> Option<State> {
    postcard::from_bytes(bytes).ok()
}

/// The fold as a function: `evolve(state, event) -> state`.
pub fn evolve(mut state: State, event: &Envelope<Event>) -> State {
    state.apply_envelope(event);
    state
}
