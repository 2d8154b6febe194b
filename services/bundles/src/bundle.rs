//! A bundle: one signed manifest as an object, and how bundles are derived
//! from the ledger.
//!
//! Bundles are not a second source of truth: everything in one is in the
//! ledger (the `version_bump` event, its time, and the `signature_generated`
//! events that follow it in the same transaction), so the worker can write
//! them after the fact, again after a crash, and always the same bytes.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tes_proto::event::VersionBump;
use tes_proto::reply::{Manifest, VersionedSignature};
use tes_proto::{Envelope, Event, KeyVersion, MsgId, Timestamp};
use tes_version_management::core::manifest;

use crate::layout::bundle_key;

/// Object metadata names. S3 lower-cases user metadata names on the way
/// back (`x-amz-meta-keyversion`), so readers compare them case-blind.
pub mod meta {
    pub const KEY_VERSION: &str = "keyVersion";
    pub const SIGNATURE: &str = "signature";
    pub const EXPIRY: &str = "expiry";
}

/// The object body: self-describing, so a store without user metadata (or
/// a copy that lost it) still says what it is and when it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleBody {
    pub key_version: KeyVersion,
    /// The primary signature (lowercase hex HMAC-SHA256 of `payload`).
    pub signature: String,
    pub expiry: Option<Timestamp>,
    /// Ledger seq of the bump.
    pub seq: u64,
    pub manifest: Manifest,
    /// The exact signed bytes (RFC 8785 canonical JSON of `manifest`).
    pub payload: String,
    /// Every signature over `payload` (dual signatures in a grace window).
    pub signatures: Vec<VersionedSignature>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub key: String,
    pub body: BundleBody,
}

impl Bundle {
    pub fn bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.body).expect("a bundle is plain data")
    }

    /// Its user metadata, as written to the store.
    pub fn metadata(&self) -> Vec<(String, String)> {
        let mut m = vec![
            (
                meta::KEY_VERSION.to_string(),
                self.body.key_version.to_string(),
            ),
            (meta::SIGNATURE.to_string(), self.body.signature.clone()),
        ];
        if let Some(expiry) = self.body.expiry {
            m.push((meta::EXPIRY.to_string(), expiry.to_rfc3339()));
        }
        m
    }
}

/// Reads an `expiry` metadata value: RFC 3339, or milliseconds since the
/// epoch as the seed's `Date.now()` wrote them.
pub fn parse_expiry(value: &str) -> Option<Timestamp> {
    let value = value.trim();
    value
        .parse::<u64>()
        .ok()
        .map(Timestamp::from_millis)
        .or_else(|| Timestamp::parse_rfc3339(value).ok())
}

/// How long bundles signed under each key version live.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ttl {
    pub default: Option<Duration>,
    pub per_version: BTreeMap<KeyVersion, Duration>,
}

impl Ttl {
    pub fn of(&self, v: KeyVersion) -> Option<Duration> {
        self.per_version.get(&v).copied().or(self.default)
    }

    /// Parses `--bundle-ttl` values: `30d` (every version) or `v1=2h`.
    pub fn add(&mut self, spec: &str) -> Result<(), String> {
        let (version, duration) = match spec.split_once('=') {
            Some((v, d)) => {
                let v = v
                    .trim()
                    .parse::<KeyVersion>()
                    .map_err(|e| format!("--bundle-ttl {spec:?}: {e}"))?;
                (Some(v), d)
            }
            None => (None, spec),
        };
        let d = humantime::parse_duration(duration.trim())
            .map_err(|e| format!("--bundle-ttl {spec:?}: {e} (use e.g. 30d, 12h, v1=2h)"))?;
        match version {
            Some(v) => {
                self.per_version.insert(v, d);
            }
            None => self.default = Some(d),
        }
        Ok(())
    }
}

/// The bump whose signatures are being collected.
#[derive(Debug, Clone)]
struct Open {
    seq: u64,
    at: Timestamp,
    cause: Option<MsgId>,
    bump: VersionBump,
    signatures: Vec<VersionedSignature>,
    payload_sha256: Option<String>,
}

/// Folds ledger events into bundles. A bump's events are one transaction
/// (`version_bump`, maybe `key_fallback`, then a `signature_generated` per
/// signing version, all with the bump command as their cause), so a bundle
/// is complete at the first event that is not part of its group.
#[derive(Debug, Default)]
pub struct Deriver {
    ttl: Ttl,
    open: Option<Open>,
}

impl Deriver {
    pub fn new(ttl: Ttl) -> Deriver {
        Deriver { ttl, open: None }
    }

    /// The seq of the bump still being collected, if any.
    pub fn open_since(&self) -> Option<u64> {
        self.open.as_ref().map(|o| o.seq)
    }

    /// Feeds ledger event `seq`; returns a bundle when one is complete.
    pub fn observe(&mut self, seq: u64, event: &Envelope<Event>) -> Option<Bundle> {
        let same_group = |o: &Open| o.cause.is_some() && event.causation_id == o.cause;
        match &event.body {
            Event::SignatureGenerated(s) if self.open.as_ref().is_some_and(same_group) => {
                let o = self.open.as_mut().expect("checked");
                o.signatures.push(VersionedSignature {
                    key_version: s.key_version,
                    signature: s.signature.clone(),
                });
                o.payload_sha256
                    .get_or_insert_with(|| s.payload_sha256.clone());
                None
            }
            Event::KeyFallback(_) if self.open.as_ref().is_some_and(same_group) => None,
            Event::VersionBump(b) => {
                let done = self.finish();
                self.open = Some(Open {
                    seq,
                    at: event.time,
                    cause: event.causation_id,
                    bump: b.clone(),
                    signatures: Vec::new(),
                    payload_sha256: None,
                });
                done
            }
            _ => self.finish(),
        }
    }

    /// Ends the group being collected (the ledger's head was reached: its
    /// transaction is complete).
    pub fn finish(&mut self) -> Option<Bundle> {
        let o = self.open.take()?;
        let manifest = Manifest {
            entity: o.bump.entity.clone(),
            version: o.bump.to.clone(),
            previous: o.bump.from.clone(),
            scope: o.bump.scope,
            key_version: o.bump.key_version,
            timestamp: o.at,
        };
        let payload = manifest::canonical(&manifest);
        let primary = o
            .signatures
            .iter()
            .find(|s| s.key_version == o.bump.key_version)?
            .signature
            .clone();
        let digest = hex::encode(Sha256::digest(payload.as_bytes()));
        if o.payload_sha256.as_deref() != Some(digest.as_str()) {
            // The canonical form is a contract; a mismatch means this build
            // would write a bundle whose signature does not cover its bytes.
            tracing::error!(
                seq = o.seq,
                "bump's manifest does not hash to its recorded payload; no bundle written"
            );
            return None;
        }
        let expiry = self
            .ttl
            .of(o.bump.key_version)
            .map(|ttl| o.at.saturating_add(ttl));
        Some(Bundle {
            key: bundle_key(o.bump.key_version, &o.bump.entity, &o.bump.to),
            body: BundleBody {
                key_version: o.bump.key_version,
                signature: primary,
                expiry,
                seq: o.seq,
                manifest,
                payload,
                signatures: o.signatures,
            },
        })
    }
}
