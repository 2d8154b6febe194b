//! Which version signs, and what a signature leaves in the ledger.
//!
//! The rules (DESIGN.md §4): the active version signs by default; a caller
//! may pin any version that is not retired; if the active version's material
//! is missing here, the previous version signs and a `key_fallback` event
//! says so; during a grace window the verifying versions sign too (dual
//! signatures), so a verifier that knows only the old or only the new key
//! succeeds.

use tes_proto::event::{Event, KeyFallback, SignatureGenerated, SignatureVerified};
use tes_proto::reply::KeyStatus;
use tes_proto::{ErrorCode, KeyVersion};

use super::decide::{retired, revoked, unknown, Rejection};
use super::state::State;
use super::Context;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningPlan {
    /// The version whose signature is the primary one.
    pub primary: KeyVersion,
    /// The active version, when its material was missing and `primary` stood in.
    pub fallback_from: Option<KeyVersion>,
    pub pinned: bool,
    /// Versions that sign as well (the dual signatures of a grace window).
    pub also: Vec<KeyVersion>,
}

impl SigningPlan {
    /// Every version that signs, primary first.
    pub fn versions(&self) -> impl Iterator<Item = KeyVersion> + '_ {
        std::iter::once(self.primary).chain(self.also.iter().copied())
    }
}

fn missing(v: KeyVersion) -> Rejection {
    Rejection::new(
        ErrorCode::MissingKey,
        format!(
            "{v} key not available on this signer [HSL:#FF0000]: set VERSION_SIGNING_KEY{} or add it with `tes secret put --key-version v{}`",
            if v == KeyVersion::V1 { String::new() } else { format!("_V{}", v.get()) },
            v.get()
        ),
    )
}

/// Whether `v` may sign or verify at `ctx.now`.
fn usable(state: &State, v: KeyVersion, ctx: &Context<'_>) -> Result<(), Rejection> {
    let key = state.keys.get(&v).ok_or_else(|| unknown(v))?;
    match key.status {
        KeyStatus::Retired => Err(retired(v)),
        KeyStatus::Revoked => Err(revoked(state, v)),
        KeyStatus::Verifying if key.grace_until.is_some_and(|g| g <= ctx.now) => Err(retired(v)),
        _ => Ok(()),
    }
}

pub fn plan(
    state: &State,
    pin: Option<KeyVersion>,
    ctx: &Context<'_>,
) -> Result<SigningPlan, Rejection> {
    if let Some(v) = pin {
        usable(state, v, ctx)?;
        if !ctx.held.contains_key(&v) {
            // A pin is a promise about the version: no fallback.
            return Err(missing(v));
        }
        return Ok(SigningPlan {
            primary: v,
            fallback_from: None,
            pinned: true,
            also: Vec::new(),
        });
    }
    let active = state.active.ok_or_else(|| match state.revoked_active() {
        Some((v, _)) => {
            let why = revoked(state, v);
            Rejection::new(
                ErrorCode::RevokedVersion,
                format!(
                    "nothing signs: the active version was revoked with no version to take over ({}). \
                     Provision a new version (`openssl rand -hex 32 | tes secret put --key-version v{n}`) \
                     and rotate to it (`tes rotate`)",
                    why.message,
                    n = v.next().get()
                ),
            )
        }
        None => Rejection::new(
            ErrorCode::MissingKey,
            "no key version is active yet [HSL:#FF0000]",
        ),
    })?;
    if ctx.held.contains_key(&active) {
        let also = if ctx.policy.dual_sign {
            state
                .verifying_set(ctx.now)
                .filter(|v| *v != active && ctx.held.contains_key(v))
                .collect()
        } else {
            Vec::new()
        };
        return Ok(SigningPlan {
            primary: active,
            fallback_from: None,
            pinned: false,
            also,
        });
    }
    // Fallback: the previous version if it still verifies, else the newest
    // verifying version held here.
    let candidates: Vec<KeyVersion> = state
        .verifying_set(ctx.now)
        .filter(|v| *v != active && ctx.held.contains_key(v))
        .collect();
    let stand_in = state
        .previous
        .filter(|p| candidates.contains(p))
        .or_else(|| candidates.last().copied())
        .ok_or_else(|| missing(active))?;
    Ok(SigningPlan {
        primary: stand_in,
        fallback_from: Some(active),
        pinned: false,
        also: Vec::new(),
    })
}

/// The audit events of the signatures made under `plan`: one per signature
/// handed out, preceded by the fallback if there was one.
pub fn audit_events(
    plan: &SigningPlan,
    signatures: &[(KeyVersion, String)],
    payload_sha256: &str,
) -> Vec<Event> {
    let mut out = Vec::with_capacity(signatures.len() + 1);
    if let Some(from) = plan.fallback_from {
        out.push(Event::KeyFallback(KeyFallback {
            from,
            to: plan.primary,
        }));
    }
    out.extend(signatures.iter().map(|(v, sig)| {
        Event::SignatureGenerated(SignatureGenerated {
            key_version: *v,
            signature: sig.clone(),
            payload_sha256: payload_sha256.to_string(),
            pinned: plan.pinned,
        })
    }));
    out
}

/// Whether a signature under `v` may be checked: `v` must be in the
/// verifying set (or provisioned) and held here.
pub fn check_verifiable(state: &State, v: KeyVersion, ctx: &Context<'_>) -> Result<(), Rejection> {
    usable(state, v, ctx)?;
    if !ctx.held.contains_key(&v) {
        return Err(missing(v));
    }
    Ok(())
}

pub fn verification_event(v: KeyVersion, valid: bool) -> Event {
    Event::SignatureVerified(SignatureVerified {
        key_version: v,
        valid,
    })
}
