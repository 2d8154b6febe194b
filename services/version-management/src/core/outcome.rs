//! The outcome of a command the ledger already applied, rebuilt from the
//! events it caused: how a retry (a client that timed out, a daemon killed
//! between commit and reply) gets back the signature, manifest or rotation
//! it asked for, with the same seq, instead of a bare "duplicate".
//!
//! Pure: the events are passed in. A retry whose body differs from what the
//! ledger recorded under its id (another payload, another pin, another
//! target) is refused: an id names one request.

use sha2::{Digest, Sha256};
use tes_proto::command::{Bump, Grace, Revoke, Rotate, Sign};
use tes_proto::event::{Event, SignatureGenerated};
use tes_proto::reply::{
    BumpReply, GraceReply, Manifest, RevokeReply, RotationReply, SignReply, VersionedSignature,
};
use tes_proto::thread::colour;
use tes_proto::{Envelope, ErrorCode, KeyVersion, MsgId};

use super::decide::Rejection;
use super::manifest;

/// A command's events as the ledger holds them: `(seq, event)`, in order.
pub type Applied = [(u64, Envelope<Event>)];

fn reused(id: MsgId, applied: &Applied, what: &str) -> Rejection {
    let seq = applied.first().map_or(0, |(s, _)| *s);
    Rejection::new(
        ErrorCode::Duplicate,
        format!(
            "command id {id} was already applied (ledger seq {seq}) to a different request ({what} differs); \
             an id names one request: send a new one with a new id"
        ),
    )
}

/// The signatures of one signing request: the fallback it took, the
/// primary signature's seq, and every signature in order (primary first).
struct Signed<'a> {
    fallback_from: Option<KeyVersion>,
    seq: u64,
    primary: &'a SignatureGenerated,
    all: Vec<VersionedSignature>,
}

fn signed(applied: &Applied) -> Option<Signed<'_>> {
    let fallback_from = applied.iter().find_map(|(_, e)| match &e.body {
        Event::KeyFallback(f) => Some(f.from),
        _ => None,
    });
    let mut sigs = applied.iter().filter_map(|(seq, e)| match &e.body {
        Event::SignatureGenerated(s) => Some((*seq, s)),
        _ => None,
    });
    let (seq, primary) = sigs.next()?;
    let all = std::iter::once(primary)
        .chain(sigs.map(|(_, s)| s))
        .map(|s| VersionedSignature {
            key_version: s.key_version,
            signature: s.signature.clone(),
        })
        .collect();
    Some(Signed {
        fallback_from,
        seq,
        primary,
        all,
    })
}

fn same_pin(pin: Option<KeyVersion>, primary: &SignatureGenerated) -> bool {
    match pin {
        Some(v) => primary.pinned && primary.key_version == v,
        None => !primary.pinned,
    }
}

/// Lowercase hex SHA-256: what `payload_sha256` records of a signed payload.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    // The same form as the `payload_sha256` the signing path records.
    tes_ledger::chain::to_hex(&Sha256::digest(bytes).into())
}

/// A retried `sign`: the same signatures and seq, if the payload and pin
/// are the ones recorded.
pub fn sign(
    id: MsgId,
    request: &Sign,
    applied: &Applied,
    signer: &str,
) -> Result<SignReply, Rejection> {
    let s = signed(applied).ok_or_else(|| reused(id, applied, "it signed nothing"))?;
    if s.primary.payload_sha256 != sha256_hex(request.payload.as_bytes()) {
        return Err(reused(id, applied, "the payload"));
    }
    if !same_pin(request.key_version, s.primary) {
        return Err(reused(id, applied, "the pinned key version"));
    }
    Ok(SignReply {
        payload: request.payload.clone(),
        signature: s.primary.signature.clone(),
        key_version: s.primary.key_version,
        signatures: s.all,
        fallback_from: s.fallback_from,
        seq: s.seq,
        signer: signer.to_string(),
        replayed: true,
    })
}

/// A retried `bump`: the same manifest (its time is the event's), payload,
/// signatures and seq.
pub fn bump(id: MsgId, request: &Bump, applied: &Applied) -> Result<BumpReply, Rejection> {
    let Some((bump, at)) = applied.iter().find_map(|(_, e)| match &e.body {
        Event::VersionBump(b) => Some((b, e.time)),
        _ => None,
    }) else {
        return Err(reused(id, applied, "it bumped nothing"));
    };
    if bump.entity != request.entity || bump.scope != request.scope {
        return Err(reused(id, applied, "the entity or scope"));
    }
    let s = signed(applied).ok_or_else(|| reused(id, applied, "it signed nothing"))?;
    if !same_pin(request.key_version, s.primary) {
        return Err(reused(id, applied, "the pinned key version"));
    }
    let manifest = Manifest {
        entity: bump.entity.clone(),
        version: bump.to.clone(),
        previous: bump.from.clone(),
        scope: bump.scope,
        key_version: bump.key_version,
        timestamp: at,
    };
    let payload = manifest::canonical(&manifest);
    Ok(BumpReply {
        manifest,
        payload,
        signature: s.primary.signature.clone(),
        key_version: s.primary.key_version,
        signatures: s.all,
        fallback_from: s.fallback_from,
        seq: s.seq,
        replayed: true,
    })
}

/// What a rotation or rollback reply says.
pub fn rotation_message(what: &str, to: KeyVersion) -> String {
    format!("Key {what} to {} completed", to.to_string().to_uppercase())
}

/// A retried `rotate` (`request` given) or `rollback` (`None`).
pub fn rotation(
    id: MsgId,
    request: Option<&Rotate>,
    applied: &Applied,
) -> Result<RotationReply, Rejection> {
    let found = applied
        .iter()
        .find_map(|(seq, e)| match (&e.body, request) {
            (Event::KeyRotate(r), Some(cmd)) => {
                let same = cmd.to.is_none_or(|to| to == r.to) && cmd.force == r.forced;
                Some((
                    same,
                    *seq,
                    e.time,
                    r.from,
                    r.to,
                    r.grace_until,
                    r.forced,
                    "rotation",
                ))
            }
            (Event::KeyRollback(r), None) => Some((
                true,
                *seq,
                e.time,
                Some(r.from),
                r.to,
                Some(r.grace_until),
                false,
                "rollback",
            )),
            _ => None,
        });
    let Some((same, seq, at, from, to, grace_until, forced, what)) = found else {
        return Err(reused(id, applied, "the verb"));
    };
    if !same {
        return Err(reused(id, applied, "the target or --force"));
    }
    Ok(RotationReply {
        success: true,
        message: rotation_message(what, to),
        from,
        key_version: to,
        rotation_timestamp: at,
        grace_until,
        forced,
        seq,
        hsl: if what == "rollback" {
            colour::FALLBACK_ORANGE
        } else {
            colour::VERSION_PURPLE
        }
        .to_string(),
        replayed: true,
    })
}

/// What a revocation reply says.
pub fn revocation_message(
    version: KeyVersion,
    rotated_to: Option<KeyVersion>,
    forced: bool,
) -> String {
    match (rotated_to, forced) {
        (Some(to), _) => format!("{version} revoked; signing moved to {to}"),
        (None, true) => format!(
            "{version} revoked; nothing signs until a new version is provisioned and rotated to"
        ),
        (None, false) => format!("{version} revoked"),
    }
}

/// A revocation's reply from its events (fresh or retried); `active` is the
/// version that took over, which the caller replaces with the one active now.
pub fn revocation(
    id: MsgId,
    request: &Revoke,
    applied: &Applied,
    replayed: bool,
) -> Result<RevokeReply, Rejection> {
    let rotated_to = applied.iter().find_map(|(_, e)| match &e.body {
        Event::KeyRotate(r) => Some(r.to),
        _ => None,
    });
    let Some((seq, at, r)) = applied.iter().find_map(|(seq, e)| match &e.body {
        Event::KeyRevoked(r) => Some((*seq, e.time, r)),
        _ => None,
    }) else {
        return Err(reused(id, applied, "the verb"));
    };
    if r.version != request.version || r.reason != request.reason.trim() {
        return Err(reused(id, applied, "the version or reason"));
    }
    Ok(RevokeReply {
        version: r.version,
        revoked_at: at,
        reason: r.reason.clone(),
        rotated_to,
        active: rotated_to,
        forced: r.forced,
        message: revocation_message(r.version, rotated_to, r.forced),
        seq,
        hsl: colour::REVOKED_CRIMSON.to_string(),
        replayed,
    })
}

/// A grace change's reply from its events (fresh or retried).
pub fn grace(
    id: MsgId,
    request: &Grace,
    applied: &Applied,
    replayed: bool,
) -> Result<GraceReply, Rejection> {
    let retired = applied
        .iter()
        .any(|(_, e)| matches!(e.body, Event::KeyRetired(_)));
    let Some((seq, g)) = applied.iter().find_map(|(seq, e)| match &e.body {
        Event::GraceChanged(g) => Some((*seq, g)),
        _ => None,
    }) else {
        return Err(reused(id, applied, "the verb"));
    };
    if g.version != request.version {
        return Err(reused(id, applied, "the version"));
    }
    let message = if retired {
        format!("{}'s grace window ended now: it is retired", g.version)
    } else {
        format!("{} verifies until {}", g.version, g.grace_until)
    };
    Ok(GraceReply {
        version: g.version,
        previous: g.previous,
        grace_until: g.grace_until,
        retired,
        message,
        seq,
        replayed,
    })
}
