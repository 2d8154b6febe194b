//! Commands to events: `decide(state, command, context) -> Result<Vec<Event>, Rejection>`.
//!
//! Every rule about which transitions are allowed lives here. A rejection
//! changes nothing; accepted events are applied by [`super::evolve`] in the
//! order returned.

use tes_proto::command::Scope;
use tes_proto::event::{
    ArchiveBatch, BundleArchived, Event, GraceChanged, KeyExpirySet, KeyProvisioned, KeyRetired,
    KeyRevoked, KeyRollback, KeyRotate, RetireReason, RotationFailed, RotationReason, VersionBump,
};
use tes_proto::reply::KeyStatus;
use tes_proto::{ErrorCode, ErrorReply, KeyVersion, Timestamp};

use super::manifest;
use super::state::State;
use super::Context;

/// A command the decider understands. Signing and verification are planned
/// in [`super::signing`]; they need key material the core never sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Records the keys this signer holds; on a new ledger, activates the
    /// lowest one. Material that differs from a recorded fingerprint is
    /// refused: a version's key is fixed once the ledger knows it.
    Provision,
    /// Records new material for a version the ledger knows (an operator's
    /// deliberate `tes secret put --replace`).
    Replace {
        version: KeyVersion,
    },
    Rotate {
        to: Option<KeyVersion>,
        requested_by: String,
        forced: bool,
    },
    Rollback {
        requested_by: String,
    },
    /// Stop trusting `version` now (see [`revoke`]).
    Revoke {
        version: KeyVersion,
        reason: String,
        requested_by: String,
        force: bool,
    },
    /// Move a verifying version's verify-until.
    Grace {
        version: KeyVersion,
        change: GraceChange,
        requested_by: String,
    },
    /// Time passed: retire versions whose grace ended, rotate an expired
    /// active version away.
    Tick,
    /// A semver bump, signed with `key_version`.
    Bump {
        entity: String,
        scope: Scope,
        key_version: KeyVersion,
    },
    /// Plans an archive batch of `version`'s bundles. Recorded before any
    /// of them moves (write-ahead), so a pass cut short finishes exactly
    /// these keys.
    BeginArchive {
        version: KeyVersion,
        keys: Vec<String>,
        left: u64,
    },
    /// The open archive batch of `version` is done.
    FinishArchive {
        version: KeyVersion,
        batch: u64,
        objects: u64,
        bytes: u64,
        missing: Vec<String>,
    },
    /// The bundle store holds a bundle of `version` that expires at `expiry`
    /// (`key` names it, for the record).
    BundleExpired {
        version: KeyVersion,
        key: String,
        expiry: Timestamp,
    },
}

/// How a grace window changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraceChange {
    /// A new verify-until (later than now).
    Until(Timestamp),
    /// The current verify-until, this much later.
    Extend(std::time::Duration),
    /// Ends now: the version retires in the same transaction.
    EndNow,
}

/// The longest reason a revocation may carry (it is shown to every
/// verifier that refuses the version).
pub const MAX_REASON: usize = 500;

/// Where the bundles of `version` live until they are archived.
pub fn bundle_prefix(version: KeyVersion) -> String {
    format!("bundle/v{}/", version.get())
}

/// Where they go.
pub fn archive_prefix(version: KeyVersion) -> String {
    format!("archive/v{}/", version.get())
}

/// Why a command was refused. Converted to an [`ErrorReply`] for the caller
/// and a `rejected` event for everyone watching.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Rejection {
        Rejection {
            code,
            message: message.into(),
        }
    }
}

impl From<Rejection> for ErrorReply {
    fn from(r: Rejection) -> ErrorReply {
        ErrorReply::new(r.code, r.message)
    }
}

pub fn decide(
    state: &State,
    command: &Command,
    ctx: &Context<'_>,
) -> Result<Vec<Event>, Rejection> {
    match command {
        Command::Provision => provision(state, ctx),
        Command::Replace { version } => replace(state, *version, ctx),
        Command::Rotate {
            to,
            requested_by,
            forced,
        } => rotate(state, *to, requested_by, *forced, ctx).map(|e| vec![e]),
        Command::Rollback { requested_by } => rollback(state, requested_by, ctx).map(|e| vec![e]),
        Command::Revoke {
            version,
            reason,
            requested_by,
            force,
        } => revoke(state, *version, reason, requested_by, *force, ctx),
        Command::Grace {
            version,
            change,
            requested_by,
        } => grace(state, *version, *change, requested_by, ctx),
        Command::Tick => Ok(tick(state, ctx)),
        Command::Bump {
            entity,
            scope,
            key_version,
        } => bump(state, entity, *scope, *key_version).map(|e| vec![e]),
        Command::BeginArchive {
            version,
            keys,
            left,
        } => begin_archive(state, *version, keys, *left, ctx).map(|e| vec![e]),
        Command::FinishArchive {
            version,
            batch,
            objects,
            bytes,
            missing,
        } => finish_archive(state, *version, *batch, *objects, *bytes, missing).map(|e| vec![e]),
        Command::BundleExpired {
            version,
            key,
            expiry,
        } => bundle_expired(state, *version, key, *expiry, ctx),
    }
}

fn provision(state: &State, ctx: &Context<'_>) -> Result<Vec<Event>, Rejection> {
    let mut out = Vec::new();
    for (version, fingerprint) in ctx.held {
        match state.keys.get(version) {
            None => out.push(Event::KeyProvisioned(KeyProvisioned {
                version: *version,
                fingerprint: fingerprint.clone(),
            })),
            Some(k) if k.fingerprint != *fingerprint => {
                return Err(Rejection::new(
                    ErrorCode::MaterialChanged,
                    format!(
                        "the key material given for {version} is not the one the ledger recorded for it \
                         (fingerprint {} recorded, {} given): refusing to re-key {version} silently; \
                         signatures made under the recorded material would stop verifying. \
                         Restore the original secret, or replace it on purpose with \
                         `tes secret put --key-version v{} --replace`",
                        k.fingerprint,
                        fingerprint,
                        version.get()
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    // A key TTL given now applies to the version already active, counted
    // from its activation (recorded, so a replay gives the same expiry).
    if let (Some(ttl), Some(active)) = (ctx.policy.key_ttl, state.active) {
        let record = state.keys.get(&active);
        if let Some(activated) = record.and_then(|k| k.activated_at) {
            let expires_at = activated.saturating_add(ttl);
            if record.and_then(|k| k.expires_at) != Some(expires_at) {
                out.push(Event::KeyExpirySet(KeyExpirySet {
                    version: active,
                    ttl_secs: ttl.as_secs(),
                    expires_at,
                }));
            }
        }
    }
    // Genesis: only a ledger that never had an active version activates
    // one on its own (after a forced revocation nothing is active, and
    // only a rotation may change that).
    if state.active.is_none() && state.rotation_timestamp.is_none() {
        if let Some(first) = ctx.held.keys().next() {
            out.push(Event::KeyRotate(KeyRotate {
                from: None,
                to: *first,
                reason: RotationReason::Initial,
                requested_by: "genesis".to_string(),
                forced: false,
                grace_until: None,
                expires_at: ctx.policy.key_ttl.map(|ttl| ctx.now.saturating_add(ttl)),
            }));
        }
    }
    Ok(out)
}

fn replace(state: &State, version: KeyVersion, ctx: &Context<'_>) -> Result<Vec<Event>, Rejection> {
    let Some(fingerprint) = ctx.held.get(&version) else {
        return Err(Rejection::new(
            ErrorCode::MissingKey,
            format!("no material for {version} is held here to replace it with"),
        ));
    };
    match state.keys.get(&version) {
        None => provision(state, ctx),
        Some(k) if k.fingerprint == *fingerprint => Ok(Vec::new()),
        Some(_) => Ok(vec![Event::KeyProvisioned(KeyProvisioned {
            version,
            fingerprint: fingerprint.clone(),
        })]),
    }
}

fn not_configured(after: KeyVersion) -> Rejection {
    let next = after.next();
    Rejection::new(
        ErrorCode::NoNextVersion,
        format!(
            "{next} key not configured: no key version after {after} is provisioned. \
             Provision one with `openssl rand -hex 32 | tes secret put --key-version v{n}` \
             or VERSION_SIGNING_KEY_V{n}",
            n = next.get()
        ),
    )
}

fn expired(state: &State, v: KeyVersion, ctx: &Context<'_>) -> bool {
    state
        .keys
        .get(&v)
        .and_then(|k| k.expires_at)
        .is_some_and(|at| at <= ctx.now)
}

fn rotate(
    state: &State,
    to: Option<KeyVersion>,
    requested_by: &str,
    forced: bool,
    ctx: &Context<'_>,
) -> Result<Event, Rejection> {
    // After a forced revocation of the active version nothing is active;
    // a rotation is how signing resumes, from the revoked version.
    let (from, after) = match (state.active, state.revoked_active()) {
        (Some(active), _) => (Some(active), active),
        (None, Some((revoked, _))) => (None, revoked),
        (None, None) => {
            return Err(Rejection::new(
                ErrorCode::NoNextVersion,
                "no version is active yet: start the daemon once with VERSION_SIGNING_KEY set (or let it generate v1)",
            ))
        }
    };
    let target = match to {
        None => state.next_version().ok_or_else(|| not_configured(after))?,
        Some(v) => match state.status_of(v) {
            None => return Err(unknown(v)),
            Some(KeyStatus::Retired) => return Err(retired(v)),
            Some(KeyStatus::Revoked) => return Err(revoked(state, v)),
            Some(KeyStatus::Active) => {
                return Err(Rejection::new(
                    ErrorCode::NoNextVersion,
                    format!("{v} is already the active version"),
                ))
            }
            Some(_) => v,
        },
    };
    if !forced && !ctx.held.contains_key(&target) {
        return Err(Rejection::new(
            ErrorCode::MissingKey,
            format!(
                "{target} is provisioned in the ledger but this signer does not hold its material; \
                 provide VERSION_SIGNING_KEY_V{} here, or force the rotation (signing will fall back to {after})",
                target.get()
            ),
        ));
    }
    if expired(state, target, ctx) {
        return Err(Rejection::new(
            ErrorCode::RetiredVersion,
            format!("{target} has expired and cannot become active again"),
        ));
    }
    Ok(Event::KeyRotate(KeyRotate {
        from,
        to: target,
        reason: RotationReason::Requested,
        requested_by: requested_by.to_string(),
        forced,
        grace_until: Some(ctx.now.saturating_add(ctx.policy.grace)),
        expires_at: ctx.policy.key_ttl.map(|ttl| ctx.now.saturating_add(ttl)),
    }))
}

/// Revokes `version`: from this event on it neither signs nor verifies.
/// The active version can only be revoked with a successor (the next
/// provisioned version this signer holds, rotated to in the same
/// transaction, its predecessor's grace ending at once) or with `force`,
/// which leaves nothing active.
fn revoke(
    state: &State,
    version: KeyVersion,
    reason: &str,
    requested_by: &str,
    force: bool,
    ctx: &Context<'_>,
) -> Result<Vec<Event>, Rejection> {
    let reason = reason.trim();
    if reason.is_empty() || reason.len() > MAX_REASON || reason.chars().any(char::is_control) {
        return Err(Rejection::new(
            ErrorCode::Malformed,
            format!("a revocation needs a reason: 1 to {MAX_REASON} printable characters"),
        ));
    }
    let Some(key) = state.keys.get(&version) else {
        return Err(unknown(version));
    };
    if key.status == KeyStatus::Revoked {
        return Err(revoked(state, version));
    }
    let revocation = |forced| {
        Event::KeyRevoked(KeyRevoked {
            version,
            reason: reason.to_string(),
            requested_by: requested_by.to_string(),
            forced,
        })
    };
    if state.active != Some(version) {
        return Ok(vec![revocation(false)]);
    }
    let successor = state
        .next_version()
        .filter(|n| ctx.held.contains_key(n) && !expired(state, *n, ctx));
    match successor {
        Some(to) => Ok(vec![
            Event::KeyRotate(KeyRotate {
                from: Some(version),
                to,
                reason: RotationReason::Revoked,
                requested_by: requested_by.to_string(),
                forced: false,
                // It stops verifying now: the revocation follows.
                grace_until: Some(ctx.now),
                expires_at: ctx.policy.key_ttl.map(|ttl| ctx.now.saturating_add(ttl)),
            }),
            revocation(false),
        ]),
        None if force => Ok(vec![revocation(true)]),
        None => Err(Rejection::new(
            ErrorCode::NoNextVersion,
            format!(
                "{version} is the active version and no version this signer holds can take over: \
                 revoking it would leave nothing to sign with. Provision {next} first \
                 (`openssl rand -hex 32 | tes secret put --key-version v{n}`), or pass --force to revoke \
                 it anyway (signing then refuses until a new version is provisioned and rotated to)",
                next = version.next(),
                n = version.next().get()
            ),
        )),
    }
}

/// Moves the verify-until of a verifying version; ending it now retires the
/// version in the same transaction.
fn grace(
    state: &State,
    version: KeyVersion,
    change: GraceChange,
    requested_by: &str,
    ctx: &Context<'_>,
) -> Result<Vec<Event>, Rejection> {
    let Some(key) = state.keys.get(&version) else {
        return Err(unknown(version));
    };
    match key.status {
        KeyStatus::Verifying => {}
        KeyStatus::Revoked => return Err(revoked(state, version)),
        KeyStatus::Retired => return Err(retired(version)),
        KeyStatus::Active | KeyStatus::Provisioned => {
            return Err(Rejection::new(
                ErrorCode::InUse,
                format!(
                    "{version} is {}: only a verifying version (the one before a rotation) has a grace window",
                    key.status.as_str()
                ),
            ))
        }
    }
    if key.grace_until.is_some_and(|g| g <= ctx.now) {
        return Err(Rejection::new(
            ErrorCode::RetiredVersion,
            format!("{version}'s grace window has already ended; it retires on the next tick"),
        ));
    }
    let until = match change {
        GraceChange::EndNow => ctx.now,
        GraceChange::Until(t) if t <= ctx.now => {
            return Err(Rejection::new(
                ErrorCode::Malformed,
                format!(
                    "{t} is not in the future; use --end-now to end {version}'s grace window now"
                ),
            ))
        }
        GraceChange::Until(t) => t,
        GraceChange::Extend(d) => {
            let Some(current) = key.grace_until else {
                return Err(Rejection::new(
                    ErrorCode::Malformed,
                    format!("{version}'s grace window has no end to extend; give --until TIME"),
                ));
            };
            if d.is_zero() {
                return Err(Rejection::new(
                    ErrorCode::Malformed,
                    "an extension must be longer than zero",
                ));
            }
            current.saturating_add(d)
        }
    };
    let mut out = vec![Event::GraceChanged(GraceChanged {
        version,
        previous: key.grace_until,
        grace_until: until,
        requested_by: requested_by.to_string(),
    })];
    if until <= ctx.now {
        out.push(Event::KeyRetired(KeyRetired {
            version,
            reason: RetireReason::GraceElapsed,
        }));
    }
    Ok(out)
}

fn rollback(state: &State, requested_by: &str, ctx: &Context<'_>) -> Result<Event, Rejection> {
    let nothing = |why: String| Rejection::new(ErrorCode::NothingToRollBack, why);
    let Some(active) = state.active else {
        return Err(nothing(
            "nothing to roll back: no version is active yet".into(),
        ));
    };
    let Some(previous) = state.previous else {
        return Err(nothing(format!(
            "nothing to roll back to: {active} is active and no previous version is still verifying"
        )));
    };
    let still_verifying = state.keys.get(&previous).is_some_and(|k| {
        k.status == KeyStatus::Verifying && k.grace_until.is_none_or(|g| ctx.now < g)
    });
    if !still_verifying {
        return Err(nothing(format!(
            "nothing to roll back to: {previous}'s grace window has ended"
        )));
    }
    if expired(state, previous, ctx) {
        return Err(nothing(format!(
            "cannot roll back to {previous}: it has expired"
        )));
    }
    if !ctx.held.contains_key(&previous) {
        return Err(Rejection::new(
            ErrorCode::MissingKey,
            format!("cannot roll back to {previous}: this signer does not hold its material"),
        ));
    }
    Ok(Event::KeyRollback(KeyRollback {
        from: active,
        to: previous,
        requested_by: requested_by.to_string(),
        grace_until: ctx.now.saturating_add(ctx.policy.grace),
    }))
}

fn tick(state: &State, ctx: &Context<'_>) -> Vec<Event> {
    let mut out = Vec::new();
    let mut scratch = state.clone();
    let mut emit = |scratch: &mut State, e: Event| {
        scratch.apply(ctx.now, &e);
        out.push(e);
    };
    let elapsed: Vec<KeyVersion> = state
        .keys
        .iter()
        .filter(|(_, k)| {
            k.status == KeyStatus::Verifying && k.grace_until.is_some_and(|g| g <= ctx.now)
        })
        .map(|(v, _)| *v)
        .collect();
    for version in elapsed {
        emit(
            &mut scratch,
            Event::KeyRetired(KeyRetired {
                version,
                reason: RetireReason::GraceElapsed,
            }),
        );
    }
    if let Some(active) = scratch.active.filter(|a| expired(&scratch, *a, ctx)) {
        let why = format!("{active} expired");
        if let Some(e) = force_off(
            &scratch,
            active,
            RotationReason::Expired,
            "expiry",
            &why,
            ctx,
        ) {
            emit(&mut scratch, e);
        }
    }
    out
}

/// Moves signing off the expired active version: a rotation to the next
/// held, unexpired version, or — once per version — a rotation failure
/// (which Alert turns into an alert) when there is none.
fn force_off(
    state: &State,
    active: KeyVersion,
    reason: RotationReason,
    requested_by: &str,
    why: &str,
    ctx: &Context<'_>,
) -> Option<Event> {
    let next = state
        .next_version()
        .filter(|n| ctx.held.contains_key(n) && !expired(state, *n, ctx));
    match next {
        Some(to) => Some(Event::KeyRotate(KeyRotate {
            from: Some(active),
            to,
            reason,
            requested_by: requested_by.to_string(),
            forced: false,
            grace_until: Some(ctx.now.saturating_add(ctx.policy.grace)),
            expires_at: ctx.policy.key_ttl.map(|ttl| ctx.now.saturating_add(ttl)),
        })),
        None if state.expiry_failure_reported != Some(active) => {
            Some(Event::RotationFailed(RotationFailed {
                from: Some(active),
                reason: format!(
                    "{why} and there is no provisioned version to rotate to; {}",
                    not_configured(active).message
                ),
            }))
        }
        None => None,
    }
}

/// A bundle of the active version has expired: signing moves on, as the
/// seed's "V1 TTL Expiry → Force V2". A bundle of any other version
/// changes nothing (that version no longer signs).
fn bundle_expired(
    state: &State,
    version: KeyVersion,
    key: &str,
    expiry: Timestamp,
    ctx: &Context<'_>,
) -> Result<Vec<Event>, Rejection> {
    if expiry > ctx.now {
        return Err(Rejection::new(
            ErrorCode::Malformed,
            format!("bundle {key} expires at {expiry}, which has not passed"),
        ));
    }
    if state.active != Some(version) {
        return Ok(Vec::new());
    }
    let why = format!("bundle {key} of {version} expired at {expiry}");
    let requested_by = format!("bundle expiry ({key})");
    Ok(force_off(
        state,
        version,
        RotationReason::BundleExpired,
        &requested_by,
        &why,
        ctx,
    )
    .into_iter()
    .collect())
}

/// Whether `version`'s bundles may be archived at `now`: it is known and has
/// left the verifying set. (The bundle worker asks before it lists the store;
/// planning a batch asks again.)
pub fn archivable(state: &State, version: KeyVersion, now: Timestamp) -> Result<(), Rejection> {
    if !state.keys.contains_key(&version) {
        return Err(unknown(version));
    }
    if state.verifying_set(now).any(|v| v == version) {
        return Err(Rejection::new(
            ErrorCode::InUse,
            format!(
                "{version} still signs or verifies: its bundles are archived once it leaves the verifying set"
            ),
        ));
    }
    Ok(())
}

fn begin_archive(
    state: &State,
    version: KeyVersion,
    keys: &[String],
    left: u64,
    ctx: &Context<'_>,
) -> Result<Event, Rejection> {
    archivable(state, version, ctx.now)?;
    let record = state.archives.get(&version);
    if let Some((batch, _)) = record.and_then(|a| a.open.as_ref()) {
        return Err(Rejection::new(
            ErrorCode::InUse,
            format!("archive batch {batch} of {version} is not finished yet"),
        ));
    }
    let prefix = bundle_prefix(version);
    if keys.is_empty() {
        return Err(Rejection::new(
            ErrorCode::Malformed,
            "an archive batch needs at least one key",
        ));
    }
    if let Some(bad) = keys
        .iter()
        .find(|k| !k.starts_with(&prefix) || k.len() == prefix.len())
    {
        return Err(Rejection::new(
            ErrorCode::Malformed,
            format!("{bad:?} is not a bundle of {version} (under {prefix})"),
        ));
    }
    Ok(Event::ArchiveBatch(ArchiveBatch {
        version,
        batch: record.map_or(0, |a| a.batches) + 1,
        keys: keys.to_vec(),
        left: left.max(keys.len() as u64),
    }))
}

fn finish_archive(
    state: &State,
    version: KeyVersion,
    batch: u64,
    objects: u64,
    bytes: u64,
    missing: &[String],
) -> Result<Event, Rejection> {
    let open = state.archives.get(&version).and_then(|a| a.open.as_ref());
    let Some((open_batch, keys)) = open.filter(|(b, _)| *b == batch) else {
        return Err(Rejection::new(
            ErrorCode::Malformed,
            format!("archive batch {batch} of {version} is not open"),
        ));
    };
    if objects + missing.len() as u64 != keys.len() as u64 {
        return Err(Rejection::new(
            ErrorCode::Malformed,
            format!(
                "archive batch {open_batch} of {version} planned {} key(s); {objects} archived and {} missing do not add up",
                keys.len(),
                missing.len()
            ),
        ));
    }
    Ok(Event::BundleArchived(BundleArchived {
        version,
        batch,
        objects,
        bytes,
        missing: missing.to_vec(),
    }))
}

fn bump(
    state: &State,
    entity: &str,
    scope: Scope,
    key_version: KeyVersion,
) -> Result<Event, Rejection> {
    if entity.is_empty() || entity.len() > 128 || entity.chars().any(char::is_control) {
        return Err(Rejection::new(
            ErrorCode::Malformed,
            "entity names are 1 to 128 printable characters",
        ));
    }
    let from = state
        .entities
        .get(entity)
        .cloned()
        .unwrap_or_else(|| manifest::INITIAL_VERSION.to_string());
    let to = manifest::bump(&from, scope).map_err(|e| Rejection::new(ErrorCode::Malformed, e))?;
    Ok(Event::VersionBump(VersionBump {
        entity: entity.to_string(),
        scope,
        from,
        to,
        key_version,
    }))
}

pub(crate) fn unknown(v: KeyVersion) -> Rejection {
    Rejection::new(
        ErrorCode::UnknownVersion,
        format!("key version {v} is unknown to this ledger"),
    )
}

/// The refusal of anything a revoked version would do, with when and why.
pub(crate) fn revoked(state: &State, v: KeyVersion) -> Rejection {
    let (at, reason) = state
        .keys
        .get(&v)
        .map(|k| {
            (
                k.revoked_at
                    .map_or("an unknown time".to_string(), |t| t.to_string()),
                k.revoked_reason.clone().unwrap_or_default(),
            )
        })
        .unwrap_or_default();
    Rejection::new(
        ErrorCode::RevokedVersion,
        format!(
            "key version {v} was revoked at {at}, reason: {reason}; it neither signs nor verifies"
        ),
    )
}

pub(crate) fn retired(v: KeyVersion) -> Rejection {
    Rejection::new(
        ErrorCode::RetiredVersion,
        format!("key version {v} is retired: it neither signs nor verifies"),
    )
}
