//! One ledger writer per deployment: a lease in the KV bucket `tes` (key
//! `writer-lease`) naming the ledger (its genesis hash), the holder and
//! when it lapses.
//!
//! Taken with `create` (nobody holds it) or, once it has lapsed or when the
//! holder is this very writer restarted (same host, same ledger file — the
//! file lock already keeps two such processes apart), with `update` at the
//! revision read. Renewed by `update` at the revision it last wrote, well
//! inside its time to live: a renewal refused for a wrong revision means
//! another writer took it, and this one must stop writing at once.
//!
//! The time to live is in the value (the bucket keeps other keys forever),
//! so hosts' clocks must agree to within a fraction of it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use tes_proto::subject::kv::{BUCKET, STANDBY_PREFIX, WRITER_LEASE};

/// How long a lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often the holder renews it.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);
/// How long one read or write of the lease may take before it is tried
/// again (a renewal must not outlast the renewal period).
const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// What the lease says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseValue {
    /// The ledger's identity: the hex hash of its seq 1.
    pub ledger: String,
    /// Who writes it: `host:path of the ledger file`.
    pub holder: String,
    /// Unix milliseconds after which another writer may take it.
    pub expires_at: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("another writer holds this deployment's ledger lease: {holder} writes ledger {ledger}… until {expires_in_ms} ms from now (renewed every {renew:?}); one writer per deployment — stop that one first, or point this one at its own NATS account")]
    Held {
        holder: String,
        ledger: String,
        expires_in_ms: u64,
        renew: Duration,
    },
    #[error("the writer lease was taken by {0}: this writer must stop writing")]
    Lost(String),
    #[error("writer lease (KV bucket {BUCKET}, key {WRITER_LEASE}): {0}")]
    Nats(String),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A held lease.
pub struct Lease {
    store: kv::Store,
    revision: u64,
    value: LeaseValue,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("value", &self.value)
            .field("revision", &self.revision)
            .finish()
    }
}

impl Lease {
    /// Takes the lease for `ledger` as `holder`, or says who holds it.
    pub async fn acquire(
        client: async_nats::Client,
        ledger: &str,
        holder: &str,
    ) -> Result<Lease, LeaseError> {
        let store = crate::jetstream::tes_bucket_answering_within(client, Some(OP_TIMEOUT))
            .await
            .map_err(|e| LeaseError::Nats(e.to_string()))?;
        let mut value = LeaseValue {
            ledger: ledger.to_string(),
            holder: holder.to_string(),
            expires_at: now_ms() + LEASE_TTL.as_millis() as u64,
        };
        for _ in 0..3 {
            let bytes = serde_json::to_vec(&value).expect("plain data").into();
            match store.create(WRITER_LEASE, bytes).await {
                Ok(revision) => {
                    return Ok(Lease {
                        store,
                        revision,
                        value,
                    })
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(LeaseError::Nats(e.to_string())),
            }
            let Some(entry) = store
                .entry(WRITER_LEASE)
                .await
                .map_err(|e| LeaseError::Nats(e.to_string()))?
            else {
                continue;
            };
            let current: Option<LeaseValue> = match entry.operation {
                kv::Operation::Put => serde_json::from_slice(&entry.value).ok(),
                _ => None,
            };
            let now = now_ms();
            if let Some(c) = &current {
                let ours = c.holder == holder && c.ledger == ledger;
                if c.expires_at > now && !ours {
                    return Err(LeaseError::Held {
                        holder: c.holder.clone(),
                        ledger: c.ledger.chars().take(16).collect(),
                        expires_in_ms: c.expires_at - now,
                        renew: RENEW_EVERY,
                    });
                }
            }
            value.expires_at = now + LEASE_TTL.as_millis() as u64;
            let bytes = serde_json::to_vec(&value).expect("plain data").into();
            match store.update(WRITER_LEASE, bytes, entry.revision).await {
                Ok(revision) => {
                    return Ok(Lease {
                        store,
                        revision,
                        value,
                    })
                }
                // Someone else moved first: look again.
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(LeaseError::Nats(e.to_string())),
            }
        }
        Err(LeaseError::Nats(
            "the lease kept changing under us; try again".into(),
        ))
    }

    /// The lease as it stands, if someone holds it and it has not lapsed
    /// (reads only).
    pub async fn live(client: async_nats::Client) -> Result<Option<LeaseValue>, LeaseError> {
        let store = crate::jetstream::tes_bucket_answering_within(client, Some(OP_TIMEOUT))
            .await
            .map_err(|e| LeaseError::Nats(e.to_string()))?;
        let entry = store
            .entry(WRITER_LEASE)
            .await
            .map_err(|e| LeaseError::Nats(e.to_string()))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| serde_json::from_slice::<LeaseValue>(&e.value).ok())
            .filter(|v| v.expires_at > now_ms()))
    }

    pub fn value(&self) -> &LeaseValue {
        &self.value
    }

    /// Extends the lease. `Lost` when another writer has taken it.
    pub async fn renew(&mut self) -> Result<(), LeaseError> {
        if self.extend().await? {
            return Ok(());
        }
        let entry = self
            .store
            .entry(WRITER_LEASE)
            .await
            .map_err(|e| LeaseError::Nats(e.to_string()))?;
        let current = entry.as_ref().and_then(|e| {
            serde_json::from_slice::<LeaseValue>(&e.value)
                .ok()
                .filter(|_| e.operation == kv::Operation::Put)
        });
        match (entry, current) {
            // Our own renewal, stored after its reply timed out (a slow or
            // electing bucket): the holder names this host and ledger file,
            // which the file lock keeps to one process, so nobody else
            // wrote it. Held on from there; refused again, it is another's.
            (Some(entry), Some(current))
                if current.holder == self.value.holder
                    && current.ledger == self.value.ledger
                    && current.expires_at > 0 =>
            {
                self.revision = entry.revision;
                self.value = current;
                match self.extend().await? {
                    true => Ok(()),
                    false => Err(LeaseError::Lost("another writer".into())),
                }
            }
            (_, current) => Err(LeaseError::Lost(
                current.map_or_else(|| "someone".into(), |v| v.holder),
            )),
        }
    }

    /// Writes a new expiry at the revision held: false when the revision
    /// has moved on.
    async fn extend(&mut self) -> Result<bool, LeaseError> {
        let mut value = self.value.clone();
        value.expires_at = now_ms() + LEASE_TTL.as_millis() as u64;
        let bytes = serde_json::to_vec(&value).expect("plain data").into();
        match self.store.update(WRITER_LEASE, bytes, self.revision).await {
            Ok(revision) => {
                self.revision = revision;
                self.value = value;
                Ok(true)
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(LeaseError::Nats(e.to_string())),
        }
    }

    /// Gives the lease up (it lapses at once), if it is still ours.
    pub async fn release(self) {
        let mut value = self.value;
        value.expires_at = 0;
        let bytes = serde_json::to_vec(&value).expect("plain data").into();
        let _ = self.store.update(WRITER_LEASE, bytes, self.revision).await;
    }
}

/// What a standby writer says of itself (KV `standby.<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StandbyValue {
    /// `host:path of its ledger file`, as a lease would name it.
    pub holder: String,
    /// The last ledger seq it has followed into its own ledger.
    pub head_seq: u64,
    /// Unix milliseconds of this announcement.
    pub at: u64,
}

/// How long a standby's announcement counts as live.
pub const STANDBY_LIVENESS: Duration = Duration::from_secs(6);

/// The KV key of standby `holder` (a holder names a path; keys may not
/// hold every character a path does).
fn standby_key(holder: &str) -> String {
    let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, holder.as_bytes());
    format!("{STANDBY_PREFIX}{}", id.simple())
}

/// A standby says it is there and how far it has followed.
pub async fn announce_standby(
    client: async_nats::Client,
    holder: &str,
    head_seq: u64,
) -> Result<(), LeaseError> {
    let store = crate::jetstream::tes_bucket_answering_within(client, Some(OP_TIMEOUT))
        .await
        .map_err(|e| LeaseError::Nats(e.to_string()))?;
    let value = StandbyValue {
        holder: holder.to_string(),
        head_seq,
        at: now_ms(),
    };
    store
        .put(
            standby_key(holder),
            serde_json::to_vec(&value).expect("plain data").into(),
        )
        .await
        .map(|_| ())
        .map_err(|e| LeaseError::Nats(e.to_string()))
}

/// A standby that became the writer stops announcing itself as one.
pub async fn retire_standby(client: async_nats::Client, holder: &str) {
    if let Ok(store) = crate::jetstream::tes_bucket_answering_within(client, Some(OP_TIMEOUT)).await
    {
        let _ = store.purge(standby_key(holder)).await;
    }
}

/// Who writes and who stands by, as the bucket says (reads only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    /// The live lease, if any.
    pub writer: Option<LeaseValue>,
    /// Standbys heard from within [`STANDBY_LIVENESS`].
    pub standbys: Vec<StandbyValue>,
}

pub async fn deployment(client: async_nats::Client) -> Result<Deployment, LeaseError> {
    use futures_util::StreamExt;
    let writer = Lease::live(client.clone()).await?;
    let store = crate::jetstream::tes_bucket_answering_within(client, Some(OP_TIMEOUT))
        .await
        .map_err(|e| LeaseError::Nats(e.to_string()))?;
    let mut keys = store
        .keys()
        .await
        .map_err(|e| LeaseError::Nats(e.to_string()))?;
    let mut standbys = Vec::new();
    let now = now_ms();
    while let Some(key) = keys.next().await {
        let Ok(key) = key else { continue };
        if !key.starts_with(STANDBY_PREFIX) {
            continue;
        }
        if let Ok(Some(bytes)) = store.get(&key).await {
            if let Ok(v) = serde_json::from_slice::<StandbyValue>(&bytes) {
                if now.saturating_sub(v.at) <= STANDBY_LIVENESS.as_millis() as u64 {
                    standbys.push(v);
                }
            }
        }
    }
    standbys.sort_by(|a, b| a.holder.cmp(&b.holder));
    Ok(Deployment { writer, standbys })
}
