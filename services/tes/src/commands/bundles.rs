//! `tes archive` and `tes bundles ls`: the bundle store as an operator sees
//! it. An archive pass runs in the bundle worker of Version Management — the
//! daemon's on NATS, else one started here on the data directory — and its
//! progress is read from the `archive_batch` / `bundle_archived` events it
//! records, so the bar shows what the ledger says, not a guess.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tes_bundles::bundle::{meta, parse_expiry};
use tes_bundles::layout::version_of;
use tes_bundles::Store;
use tes_bus::typed::{self, CallError};
use tes_bus::Bus;
use tes_proto::command::Archive;
use tes_proto::reply::{ArchiveReply, VersionArchive};
use tes_proto::{subject, ErrorCode, Event, KeyVersion, ThreadId};

use crate::cli::{BundleOptions, Global, RunOptions};
use crate::failure::{from_call, Failure, Result};
use crate::output::Printer;
use crate::runtime::{self, Actors};

/// An archive pass may move many objects; the reply comes when it is done.
const ARCHIVE_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

pub async fn archive(
    global: &Global,
    run: &RunOptions,
    version: Option<KeyVersion>,
    dry_run: bool,
) -> Result<()> {
    let request = Archive { version, dry_run };
    let reply = match runtime::nats(global, "tes-cli").await? {
        Some(bus) => {
            let bus: Arc<dyn Bus> = Arc::new(bus);
            call_with_progress(global, bus, request).await
        }
        None => {
            let Some(config) = runtime::bundle_store(global, &run.bundles)? else {
                return Err(Failure::input(anyhow::anyhow!(
                    "bundles are off (--bundle-store none): there is nothing to archive"
                )));
            };
            if dry_run {
                return print_archive(global, &dry_run_here(global, &config, version).await?);
            }
            if let Some(daemon) = crate::commands::client::daemon_here(global).await {
                // The daemon on this directory holds the ledger: it archives.
                let envelope = tes_bus::typed::command(ThreadId::VersionManagement, request);
                let reply = tes_bus::typed::call::<Archive>(
                    &daemon,
                    ThreadId::VersionManagement,
                    runtime::wire(run.wire),
                    &envelope,
                    std::time::Duration::from_secs(600),
                )
                .await
                .map_err(from_call)?;
                return print_archive(global, &reply);
            }
            let rt = Actors::embedded(global, run).await?;
            let reply = call_with_progress(global, rt.bus(), request).await;
            rt.stop().await;
            reply
        }
    }
    .map_err(|e| match e {
        CallError::Refused(r) if r.code == ErrorCode::BundleStore => {
            Failure::check(anyhow::anyhow!(r.message))
        }
        other => from_call(other),
    })?;
    print_archive(global, &reply)
}

/// A preview from the ledger (read-only) and a listing of the store: no
/// writer, no lock, nothing written.
async fn dry_run_here(
    global: &Global,
    config: &tes_bundles::StoreConfig,
    version: Option<KeyVersion>,
) -> Result<ArchiveReply> {
    let ledger = crate::commands::replay::open(global)?;
    let state = tes_version_management::replay::replay(
        &ledger,
        tes_version_management::replay::Until::Head,
    )
    .map_err(crate::commands::replay::verify_failure)?
    .state;
    let now = tes_proto::Timestamp::now();
    let versions = tes_bundles::archive::candidates(&state, version, now)
        .map_err(|r| from_call(CallError::Refused(r)))?;
    let store = Store::new(config).map_err(Failure::input)?;
    let mut out = Vec::new();
    for v in versions {
        out.push(
            tes_bundles::archive::dry_run(&store, v)
                .await
                .map_err(Failure::check)?,
        );
    }
    Ok(ArchiveReply { versions: out })
}

fn print_archive(global: &Global, reply: &ArchiveReply) -> Result<()> {
    let out = Printer { json: global.json };
    if reply.versions.is_empty() {
        out.say("Nothing to archive: every key version still signs or verifies.");
    }
    for v in &reply.versions {
        out.emit(describe(v), v);
    }
    Ok(())
}

fn describe(v: &VersionArchive) -> String {
    let mut line = if v.dry_run {
        format!(
            "{}: would move {} bundle(s), {} to archive/{}/",
            v.version,
            v.objects,
            bytes(v.bytes),
            v.version
        )
    } else {
        format!(
            "{}: moved {} bundle(s), {} to archive/{}/ in {} batch(es)",
            v.version,
            v.objects,
            bytes(v.bytes),
            v.version,
            v.batches
        )
    };
    if !v.missing.is_empty() {
        line.push_str(&format!(
            "; {} planned bundle(s) were in neither place: {}",
            v.missing.len(),
            v.missing.join(", ")
        ));
    }
    line
}

fn bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

/// Sends the request and, on a terminal, draws a bar from the batches the
/// worker records meanwhile.
async fn call_with_progress(
    global: &Global,
    bus: Arc<dyn Bus>,
    request: Archive,
) -> std::result::Result<ArchiveReply, CallError> {
    let thread = ThreadId::VersionManagement;
    let show = !global.json && !request.dry_run && std::io::stderr().is_terminal();
    let progress = if show {
        let mut events = bus
            .subscribe(&subject::events_of(thread), None)
            .await
            .map_err(CallError::Bus)?;
        let bar = ProgressBar::new(0).with_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:40}] {pos}/{len} bundles, {msg} ({elapsed})",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        let drawn = bar.clone();
        let task = tokio::spawn(async move {
            let mut bytes_so_far = 0u64;
            while let Some(message) = events.next().await {
                let Ok(event) = typed::decode_event(&message) else {
                    continue;
                };
                match event.body {
                    Event::ArchiveBatch(b) => {
                        drawn.set_prefix(b.version.to_string());
                        drawn.set_length(drawn.position() + b.left);
                    }
                    Event::BundleArchived(b) => {
                        bytes_so_far += b.bytes;
                        drawn.inc(b.objects + b.missing.len() as u64);
                        drawn.set_message(bytes(bytes_so_far));
                    }
                    _ => {}
                }
            }
        });
        Some((bar, task))
    } else {
        None
    };
    let envelope = typed::command(thread, request);
    let reply = typed::call::<Archive>(
        &*bus,
        thread,
        tes_proto::ContentType::Json,
        &envelope,
        ARCHIVE_TIMEOUT,
    )
    .await;
    if let Some((bar, task)) = progress {
        task.abort();
        bar.finish_and_clear();
    }
    reply
}

/// How many bundles, and how many bytes, in one place.
#[derive(Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Place {
    pub objects: u64,
    pub bytes: u64,
}

/// The two places a bundle can be.
pub const AREAS: [&str; 2] = ["bundle", "archive"];

/// Counts per (key version, area), and each object as it is listed.
pub async fn census(
    store: &Store,
    mut each: impl AsyncFnMut(KeyVersion, &tes_bundles::store::Listed) -> Result<()>,
) -> Result<BTreeMap<(KeyVersion, &'static str), Place>> {
    let mut table: BTreeMap<(KeyVersion, &str), Place> = BTreeMap::new();
    for area in AREAS {
        let listed = store
            .list(&format!("{area}/"))
            .await
            .map_err(Failure::check)?;
        for l in listed {
            let Some(v) = version_of(&l.key) else {
                continue;
            };
            let place = table.entry((v, area)).or_default();
            place.objects += 1;
            place.bytes += l.size;
            each(v, &l).await?;
        }
    }
    Ok(table)
}

/// `v1: 3 bundle(s), 1.6 KiB under bundle/v1/`
pub fn describe_place(v: KeyVersion, area: &str, place: &Place) -> String {
    format!(
        "{v}: {} bundle(s), {} under {area}/{v}/",
        place.objects,
        bytes(place.bytes)
    )
}

pub async fn ls(global: &Global, options: &BundleOptions, all: bool) -> Result<()> {
    let Some(config) = runtime::bundle_store(global, options)? else {
        return Err(Failure::input(anyhow::anyhow!(
            "bundles are off (--bundle-store none)"
        )));
    };
    let out = Printer { json: global.json };
    if let tes_bundles::StoreConfig::Fs { root } = &config {
        if !root.exists() {
            // Looking creates nothing: a directory store never written is empty.
            out.say(format!("Bundle store {}\n  (empty)", config.describe()));
            return Ok(());
        }
    }
    let store = Store::new(&config).map_err(Failure::input)?;
    out.say(format!("Bundle store {}", store.describe()));
    let table = census(&store, async |v, l| {
        if all {
            let m = store.stat(&l.key).await.map_err(Failure::check)?;
            let expiry = m
                .as_ref()
                .and_then(|m| m.get(meta::EXPIRY))
                .and_then(parse_expiry);
            out.emit(
                format!(
                    "  {}  {}  expires {}",
                    l.key,
                    bytes(l.size),
                    expiry.map_or("never".to_string(), |e| e.to_string())
                ),
                &json!({"key": l.key, "size": l.size, "keyVersion": v, "expiry": expiry}),
            );
        }
        Ok(())
    })
    .await?;
    if table.is_empty() {
        out.say("  (empty)");
    }
    for ((v, area), place) in &table {
        out.emit(
            describe_place(*v, area, place),
            &json!({"keyVersion": v, "place": area, "objects": place.objects, "bytes": place.bytes}),
        );
    }
    // The revocation marks (revoked/v<N>.json): those versions' bundles
    // no longer verify.
    for l in store
        .list(tes_bundles::layout::REVOKED_PREFIX)
        .await
        .map_err(Failure::check)?
    {
        let marked: serde_json::Value = match store.read(&l.key).await.map_err(Failure::check)? {
            Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            None => continue,
        };
        let field = |k: &str| {
            marked
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("?")
                .to_string()
        };
        out.emit(
            format!(
                "{}: REVOKED at {} ({}): its bundles no longer verify",
                field("keyVersion"),
                field("revokedAt"),
                field("reason")
            ),
            &json!({"place": "revoked", "key": l.key, "revocation": marked}),
        );
    }
    Ok(())
}
