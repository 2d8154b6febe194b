//! One archive pass over a retired version's bundles.
//!
//! Each batch is planned in the ledger first (`archive_batch`, with its
//! keys), then every key is copied to `archive/v<N>/`, the copy is read back
//! and compared, the original is deleted, and the batch is recorded done
//! (`bundle_archived`, with counts and bytes). A pass cut short anywhere
//! leaves an open batch in the ledger; the next pass finishes exactly those
//! keys before listing again. Each step is safe to repeat, which is what
//! makes that work:
//! - original and identical copy both there (stopped before the delete):
//!   the copy is kept, the original deleted;
//! - a copy that differs (stopped mid-write): written again;
//! - original gone, copy there (stopped after the delete): counted as moved;
//! - neither there (deleted behind our back): reported as missing.
//!
//! So every bundle ends in exactly one place and is counted exactly once.

use futures::{StreamExt, TryStreamExt};
use tes_proto::event::{ArchiveBatch, BundleArchived};
use tes_proto::reply::VersionArchive;
use tes_proto::{ErrorCode, ErrorReply, Event, KeyVersion, Timestamp};
use tes_version_management::actor::EngineHandle;
use tes_version_management::core::decide::archivable;
use tes_version_management::core::{Command, State};
use tes_version_management::engine::{Request, Response};

use crate::layout::{archive_key, bundle_prefix};
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Keys per batch (per `archive_batch` event).
    pub batch: usize,
    /// Objects moved at once.
    pub concurrency: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            batch: 100,
            concurrency: 8,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the copy of {key} read back differs from the original; the original is kept")]
    CopyMismatch { key: String },
    #[error("{0}")]
    Refused(ErrorReply),
}

impl From<ArchiveError> for ErrorReply {
    fn from(e: ArchiveError) -> ErrorReply {
        match e {
            ArchiveError::Refused(r) => r,
            other => ErrorReply::new(ErrorCode::BundleStore, other.to_string()),
        }
    }
}

/// What happened to one key of a batch.
enum Moved {
    Archived { bytes: u64 },
    Missing(String),
}

/// The engine's folded state.
pub async fn state(engine: &EngineHandle) -> Result<State, ErrorReply> {
    match engine.call(Request::State).await? {
        Response::State(s) => Ok(*s),
        _ => unreachable!("the engine answers State with a state"),
    }
}

async fn decide(engine: &EngineHandle, command: Command) -> Result<Vec<Event>, ErrorReply> {
    match engine.call(Request::Bundles(command)).await? {
        Response::Decided { events, .. } => Ok(events),
        _ => unreachable!("the engine answers Bundles with what it decided"),
    }
}

/// Previews a pass: what is still under `bundle/v<N>/`.
/// The versions an archive request covers: the one asked for (refused
/// unless it may be archived), else every version that was in the verifying
/// set and left it (one only ever provisioned has no bundles to move).
pub fn candidates(
    state: &tes_version_management::core::State,
    version: Option<KeyVersion>,
    now: tes_proto::Timestamp,
) -> Result<Vec<KeyVersion>, tes_proto::ErrorReply> {
    use std::collections::BTreeSet;
    use tes_proto::reply::KeyStatus;
    Ok(match version {
        Some(v) => {
            tes_version_management::core::decide::archivable(state, v, now)
                .map_err(tes_proto::ErrorReply::from)?;
            vec![v]
        }
        None => {
            let verifying: BTreeSet<KeyVersion> = state.verifying_set(now).collect();
            state
                .keys
                .iter()
                .filter(|(v, k)| k.status != KeyStatus::Provisioned && !verifying.contains(v))
                .map(|(v, _)| *v)
                .collect()
        }
    })
}

pub async fn dry_run(store: &Store, version: KeyVersion) -> Result<VersionArchive, ArchiveError> {
    let listed = store.list(&bundle_prefix(version)).await?;
    Ok(VersionArchive {
        version,
        objects: listed.len() as u64,
        bytes: listed.iter().map(|l| l.size).sum(),
        batches: listed.len().div_ceil(Limits::default().batch.max(1)) as u64,
        missing: Vec::new(),
        dry_run: true,
    })
}

/// Archives every bundle of `version`, finishing an open batch first.
pub async fn run(
    store: &Store,
    engine: &EngineHandle,
    version: KeyVersion,
    limits: Limits,
    now: Timestamp,
) -> Result<VersionArchive, ArchiveError> {
    let current = state(engine).await.map_err(ArchiveError::Refused)?;
    archivable(&current, version, now).map_err(|r| ArchiveError::Refused(r.into()))?;
    let mut summary = VersionArchive {
        version,
        objects: 0,
        bytes: 0,
        batches: 0,
        missing: Vec::new(),
        dry_run: false,
    };
    loop {
        let state = state(engine).await.map_err(ArchiveError::Refused)?;
        let open = state.archives.get(&version).and_then(|a| a.open.clone());
        let (batch, keys) = match open {
            Some(open) => {
                tracing::info!(%version, batch = open.0, keys = open.1.len(), "finishing an archive batch left open");
                open
            }
            None => {
                let listed = store.list(&bundle_prefix(version)).await?;
                if listed.is_empty() {
                    return Ok(summary);
                }
                let keys: Vec<String> = listed
                    .iter()
                    .take(limits.batch.max(1))
                    .map(|l| l.key.clone())
                    .collect();
                let command = Command::BeginArchive {
                    version,
                    keys,
                    left: listed.len() as u64,
                };
                let decided = decide(engine, command)
                    .await
                    .map_err(ArchiveError::Refused)?;
                match decided.into_iter().next() {
                    Some(Event::ArchiveBatch(ArchiveBatch { batch, keys, .. })) => (batch, keys),
                    _ => unreachable!("a planned batch is one archive_batch event"),
                }
            }
        };
        let moved: Vec<Moved> = futures::stream::iter(keys)
            .map(|key| move_one(store, key))
            .buffered(limits.concurrency.max(1))
            .try_collect()
            .await?;
        let (mut objects, mut bytes, mut missing) = (0, 0, Vec::new());
        for m in moved {
            match m {
                Moved::Archived { bytes: b } => {
                    objects += 1;
                    bytes += b;
                }
                Moved::Missing(key) => missing.push(key),
            }
        }
        if !missing.is_empty() {
            tracing::warn!(%version, batch, missing = ?missing, "bundles planned for the archive were in neither place (deleted behind our back?)");
        }
        let done = decide(
            engine,
            Command::FinishArchive {
                version,
                batch,
                objects,
                bytes,
                missing: missing.clone(),
            },
        )
        .await
        .map_err(ArchiveError::Refused)?;
        if let Some(Event::BundleArchived(BundleArchived { .. })) = done.first() {
            tracing::info!(%version, batch, objects, bytes, "archive batch done");
        }
        summary.objects += objects;
        summary.bytes += bytes;
        summary.batches += 1;
        summary.missing.extend(missing);
    }
}

/// Copy, check, delete — each step safe to repeat (see the module doc).
async fn move_one(store: &Store, key: String) -> Result<Moved, ArchiveError> {
    let target = archive_key(&key).expect("the engine accepted only bundle keys");
    let Some(meta) = store.stat(&key).await? else {
        return gone(store, key, &target).await;
    };
    let Some(original) = store.read(&key).await? else {
        // Deleted between the two calls.
        return gone(store, key, &target).await;
    };
    let existing = store.read(&target).await?;
    if existing.as_deref() != Some(original.as_slice()) {
        store
            .put_archive(&target, original.clone(), meta.user.clone())
            .await?;
        let copy = store.read(&target).await?;
        if copy.as_deref() != Some(original.as_slice()) {
            return Err(ArchiveError::CopyMismatch { key });
        }
    }
    store.delete(&key).await?;
    Ok(Moved::Archived {
        bytes: original.len() as u64,
    })
}

/// The original is not there: moved by an earlier, interrupted pass if the
/// copy is, else missing.
async fn gone(store: &Store, key: String, target: &str) -> Result<Moved, ArchiveError> {
    Ok(match store.stat(target).await? {
        Some(copy) => Moved::Archived { bytes: copy.size },
        None => Moved::Missing(key),
    })
}
