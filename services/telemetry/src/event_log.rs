//! The JSON-lines event log (`logs/worker-events.log`): one line per ledger
//! event, written by tracing-subscriber's JSON formatter with every field at
//! the top level, so the seed's own commands work on it as written:
//!
//! ```text
//! rg '"keyVersion":\s*"v2"' logs/worker-events.log | wc -l      # v2 signatures
//! rg 'key:fallback_v2_to_v1' logs/worker-events.log            # fallbacks
//! rg '"\[META:KEY-VERSION\]":\s*"2"' logs/worker-events.log     # v2 signatures
//! ```
//!
//! Only `signature_generated` lines carry `keyVersion` and
//! `[META:KEY-VERSION]` (verifications say `verifiedKeyVersion`, bumps
//! `signedWith`), so those counts are signature counts. Lines hold what
//! events hold: versions, fingerprints, MACs — never key material.
//!
//! The file rotates by size (`worker-events.log.1`, `.2`, … oldest last).
//! A write that fails (a full disk) drops that line and is counted; the
//! next write tries again. Signing and the ledger never wait on this file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tes_proto::event::Event;
use tes_proto::Envelope;
use tracing::Dispatch;

/// The file name the seed greps.
pub const FILE_NAME: &str = "worker-events.log";

/// How the log is doing (exported as metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogHealth {
    pub written: u64,
    pub dropped: u64,
    /// The last write failed.
    pub failing: bool,
}

#[derive(Debug, Default)]
struct Counters {
    written: AtomicU64,
    dropped: AtomicU64,
    failing: AtomicBool,
}

pub struct EventLog {
    dispatch: Dispatch,
    counters: Arc<Counters>,
    path: PathBuf,
}

impl EventLog {
    /// Opens (creating the directory if needed) the log at `path`, rotating
    /// when it would pass `max_bytes` and keeping `keep` older files.
    pub fn open(path: &Path, max_bytes: u64, keep: usize) -> io::Result<EventLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        let counters = Arc::new(Counters::default());
        let file = Arc::new(Mutex::new(RotatingFile {
            path: path.to_path_buf(),
            max_bytes: max_bytes.max(1),
            keep,
            file: None,
            size: 0,
        }));
        let writer = LineWriter {
            file,
            counters: counters.clone(),
        };
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_target(false)
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .log_internal_errors(false)
            .with_writer(move || writer.clone())
            .finish();
        Ok(EventLog {
            dispatch: Dispatch::new(subscriber),
            counters,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn health(&self) -> LogHealth {
        LogHealth {
            written: self.counters.written.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            failing: self.counters.failing.load(Ordering::Relaxed),
        }
    }

    /// Writes ledger event `seq` as one line. Reports (on the process log)
    /// when writing starts to fail and when it works again.
    pub fn write(&self, seq: u64, event: &Envelope<Event>) {
        let was_failing = self.counters.failing.load(Ordering::Relaxed);
        tracing::dispatcher::with_default(&self.dispatch, || emit(seq, event));
        let failing = self.counters.failing.load(Ordering::Relaxed);
        if failing && !was_failing {
            tracing::warn!(path = %self.path.display(), dropped = self.counters.dropped.load(Ordering::Relaxed), "the event log cannot be written (disk full?); dropping lines until it can");
        } else if was_failing && !failing {
            tracing::info!(path = %self.path.display(), "the event log is written again");
        }
    }

    /// The seq of the last line in the log at `path` (or in its newest
    /// rotated file), so a restarted Telemetry goes on after it.
    pub fn last_seq(path: &Path) -> Option<u64> {
        EventLog::last_entry(path).map(|(seq, _)| seq)
    }

    /// The seq and event id of the last line (see [`EventLog::last_seq`]).
    pub fn last_entry(path: &Path) -> Option<(u64, Option<String>)> {
        last_entry_in(path).or_else(|| last_entry_in(&rotated(path, 1)))
    }

    /// Moves the log at `path` and its rotated files into the folder
    /// `discarded-<suffix>` beside them (for a history the ledger no longer
    /// holds: a restore). Returns that folder.
    pub fn set_aside(path: &Path, suffix: &str) -> io::Result<PathBuf> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let aside = dir.join(format!("discarded-{suffix}"));
        fs::create_dir_all(&aside)?;
        let name = path.file_name().unwrap_or_default().to_owned();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let file = entry.file_name();
            let is_ours = file == name
                || file
                    .to_str()
                    .zip(name.to_str())
                    .and_then(|(f, n)| f.strip_prefix(n)?.strip_prefix('.'))
                    .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()));
            if is_ours {
                fs::rename(entry.path(), aside.join(&file))?;
            }
        }
        Ok(aside)
    }
}

/// One line per event; fields absent for a kind are left out.
fn emit(seq: u64, e: &Envelope<Event>) {
    let v = |k: &tes_proto::KeyVersion| k.to_string();
    let mut line = Line::default();
    match &e.body {
        Event::SignatureGenerated(s) => {
            line.key_version = Some(v(&s.key_version));
            line.meta_key_version = Some(s.key_version.bare());
            line.signature = Some(s.signature.clone());
            line.payload_sha256 = Some(s.payload_sha256.clone());
            line.pinned = Some(s.pinned);
        }
        Event::SignatureVerified(s) => {
            line.verified_key_version = Some(v(&s.key_version));
            line.valid = Some(s.valid);
        }
        Event::KeyFallback(f) => {
            line.from = Some(v(&f.from));
            line.to = Some(v(&f.to));
        }
        Event::KeyRotate(r) => {
            line.from = r.from.as_ref().map(v);
            line.to = Some(v(&r.to));
            line.reason = Some(format!("{:?}", r.reason).to_lowercase());
            line.forced = Some(r.forced);
        }
        Event::KeyRollback(r) => {
            line.from = Some(v(&r.from));
            line.to = Some(v(&r.to));
        }
        Event::KeyProvisioned(p) => {
            line.version = Some(v(&p.version));
            line.fingerprint = Some(p.fingerprint.to_string());
        }
        Event::KeyRetired(r) => line.version = Some(v(&r.version)),
        Event::RotationFailed(f) => {
            line.from = f.from.as_ref().map(v);
            line.reason = Some(f.reason.clone());
        }
        Event::VersionBump(b) => {
            line.entity = Some(b.entity.clone());
            line.scope = Some(b.scope.as_str().to_string());
            line.from = Some(b.from.clone());
            line.to = Some(b.to.clone());
            line.signed_with = Some(v(&b.key_version));
        }
        Event::Alert(a) => {
            line.rule = Some(a.rule.to_string());
            line.detail = Some(a.message.clone());
        }
        Event::Resolved(r) => {
            line.rule = Some(r.rule.to_string());
            line.detail = Some(r.message.clone());
        }
        Event::ArchiveBatch(a) => {
            line.version = Some(v(&a.version));
            line.detail = Some(format!(
                "batch {}: {} bundle(s) planned",
                a.batch,
                a.keys.len()
            ));
        }
        Event::BundleArchived(a) => {
            line.version = Some(v(&a.version));
            line.detail = Some(format!(
                "batch {}: {} bundle(s), {} byte(s) archived, {} missing",
                a.batch,
                a.objects,
                a.bytes,
                a.missing.len()
            ));
        }
        Event::KeyRevoked(r) => {
            line.version = Some(v(&r.version));
            line.reason = Some(r.reason.clone());
            line.forced = Some(r.forced);
            line.detail = Some(format!("revoked by {}", r.requested_by));
        }
        Event::GraceChanged(g) => {
            line.version = Some(v(&g.version));
            line.detail = Some(format!(
                "verifies until {} (was {}), changed by {}",
                g.grace_until,
                g.previous.map_or("no end".to_string(), |p| p.to_string()),
                g.requested_by
            ));
        }
        Event::KeyExpirySet(x) => {
            line.version = Some(v(&x.version));
            line.detail = Some(format!(
                "expires at {} (key TTL {}s from its activation)",
                x.expires_at, x.ttl_secs
            ));
        }
        Event::Rejected(_)
        | Event::Checkpoint(_)
        | Event::SignerHeartbeat(_)
        | Event::Metrics(_) => {}
    }
    tracing::info!(
        seq,
        id = %e.id,
        time = %e.time,
        thread = e.thread.token(),
        kind = e.body.kind(),
        hsl = e.body.hsl(),
        causationId = e.causation_id.map(|c| c.to_string()),
        keyVersion = line.key_version,
        "[META:KEY-VERSION]" = line.meta_key_version,
        verifiedKeyVersion = line.verified_key_version,
        valid = line.valid,
        from = line.from,
        to = line.to,
        version = line.version,
        fingerprint = line.fingerprint,
        signature = line.signature,
        payloadSha256 = line.payload_sha256,
        pinned = line.pinned,
        forced = line.forced,
        reason = line.reason,
        entity = line.entity,
        scope = line.scope,
        signedWith = line.signed_with,
        rule = line.rule,
        detail = line.detail,
        "{}",
        e.body.seed_label()
    );
}

#[derive(Default)]
struct Line {
    key_version: Option<String>,
    meta_key_version: Option<String>,
    verified_key_version: Option<String>,
    valid: Option<bool>,
    from: Option<String>,
    to: Option<String>,
    version: Option<String>,
    fingerprint: Option<String>,
    signature: Option<String>,
    payload_sha256: Option<String>,
    pinned: Option<bool>,
    forced: Option<bool>,
    reason: Option<String>,
    entity: Option<String>,
    scope: Option<String>,
    signed_with: Option<String>,
    rule: Option<String>,
    detail: Option<String>,
}

fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn last_entry_in(path: &Path) -> Option<(u64, Option<String>)> {
    const TAIL: u64 = 64 * 1024;
    let mut file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(TAIL))).ok()?;
    // Never more than the tail: a device (a test's /dev/full) reads forever.
    let mut bytes = Vec::new();
    file.take(TAIL).read_to_end(&mut bytes).ok()?;
    let tail = String::from_utf8_lossy(&bytes);
    tail.lines().rev().find_map(|line| {
        let rest = line.split_once("\"seq\":")?.1;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let seq = digits.parse().ok()?;
        // Ids are UUIDs: nothing to unescape.
        let id = line
            .split_once("\"id\":\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(id, _)| id.to_string());
        Some((seq, id))
    })
}

/// A file that moves aside (`.1`, `.2`, …) when it would pass its size.
/// Written by hand rather than with a rotation crate: the ones looked at
/// panic when the directory cannot be made and drop lines silently when the
/// file cannot be opened, and this log must say when it loses a line.
struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: Option<File>,
    size: u64,
}

impl RotatingFile {
    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        if self.file.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.size = file.metadata()?.len();
            self.file = Some(file);
        }
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
            return self.write_line(line);
        }
        let file = self.file.as_mut().expect("opened above");
        if let Err(e) = file.write_all(line) {
            // Reopen next time: the file may have been moved or truncated.
            self.file = None;
            return Err(e);
        }
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        if self.keep == 0 {
            return fs::remove_file(&self.path);
        }
        for n in (1..self.keep).rev() {
            let from = rotated(&self.path, n);
            if from.exists() {
                fs::rename(&from, rotated(&self.path, n + 1))?;
            }
        }
        fs::rename(&self.path, rotated(&self.path, 1))
    }
}

/// What tracing-subscriber writes through: each `write` is one whole line.
#[derive(Clone)]
struct LineWriter {
    file: Arc<Mutex<RotatingFile>>,
    counters: Arc<Counters>,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let result = self
            .file
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .write_line(buf);
        match result {
            Ok(()) => {
                self.counters.written.fetch_add(1, Ordering::Relaxed);
                self.counters.failing.store(false, Ordering::Relaxed);
                Ok(buf.len())
            }
            Err(e) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                self.counters.failing.store(true, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
