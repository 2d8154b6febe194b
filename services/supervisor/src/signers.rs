//! Who signs right now: every signer (the ledger writer, each replica) says
//! it is alive and which key versions it holds every few seconds
//! (`signer_heartbeat`); a signer unheard of for [`SIGNER_LIVENESS`] is gone.
//! The gate refuses to promote a version that a live signer lacks (Tink's
//! propagation rule, checked rather than documented).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
        let mut seen = self.seen.lock().expect("signers lock poisoned");
        seen.retain(|_, (at, _)| now.duration_since(*at) < SIGNER_LIVENESS);
        let mut live: Vec<LiveSigner> = seen
            .iter()
            .map(|(name, (_, held))| LiveSigner {
                name: name.clone(),
                held: held.clone(),
            })
            .collect();
        live.sort_by(|a, b| a.name.cmp(&b.name));
        live
    }
}
