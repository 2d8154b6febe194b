//! Who signs right now: every signer (the ledger writer, each replica) says
//! it is alive and which key versions it holds every few seconds
//! (`signer_heartbeat`); a signer unheard of for [`SIGNER_LIVENESS`] is gone.
//! The gate refuses to promote a version that a live signer lacks (Tink's
//! propagation rule, checked rather than documented).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tes_proto::event::{HeldKey, SignerHeartbeat, SIGNER_LIVENESS};

/// A signer heard from recently, and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSigner {
    pub name: String,
    pub held: Vec<HeldKey>,
}

/// When a signer was last heard from, and what it held then.
type LastSeen = (Instant, Vec<HeldKey>);

#[derive(Debug, Clone, Default)]
pub struct Signers {
    seen: Arc<Mutex<HashMap<String, LastSeen>>>,
}

impl Signers {
    pub fn observe(&self, heartbeat: SignerHeartbeat, at: Instant) {
        self.seen
            .lock()
            .expect("signers lock poisoned")
            .insert(heartbeat.signer, (at, heartbeat.held));
    }

    /// The signers heard from within the liveness window before `now`.
    pub fn live(&self, now: Instant) -> Vec<LiveSigner> {
        self.heard(now).into_iter().map(|(s, _)| s).collect()
    }

    /// [`Signers::live`], each with how long ago it was last heard from.
    pub fn heard(&self, now: Instant) -> Vec<(LiveSigner, Duration)> {
        let mut seen = self.seen.lock().expect("signers lock poisoned");
        seen.retain(|_, (at, _)| now.saturating_duration_since(*at) < SIGNER_LIVENESS);
        let mut live: Vec<(LiveSigner, Duration)> = seen
            .iter()
            .map(|(name, (at, held))| {
                let signer = LiveSigner {
                    name: name.clone(),
                    held: held.clone(),
                };
                (signer, now.saturating_duration_since(*at))
            })
            .collect();
        live.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        live
    }
}
