//! `tes.cmd.0x6001.audit`: the audit view of the writer's ledger for the
//! admin page. The newest signed checkpoint, what each witness holds under
//! our key, and, when asked (`verify`), one full walk of the chain compared
//! with every checkpoint the witnesses hold — what `tes audit verify`
//! does, on a reader connection of its own. Reads only.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tes_audit::{check_ledger, Checkpoint, SignedCheckpoint};
use tes_ledger::{Ledger, VerifyError};
use tes_proto::reply::{AuditReply, CheckpointView, VerificationView, WitnessView};
use tes_proto::{ErrorCode, ErrorReply, Timestamp};
use tokio::sync::{watch, Mutex};

use crate::actor::Auditor;

/// The newest checkpoint this writer signed, and when.
pub type Latest = watch::Receiver<Option<(Timestamp, SignedCheckpoint)>>;

/// What the read-only verbs read from beside the engine: the ledger file
/// (`history` too) and, for `audit`, the witnesses and the newest
/// checkpoint signed here. One full walk at a time (a second request waits
/// for the first rather than doubling the disk reads).
#[derive(Clone)]
pub struct AuditSource {
    pub ledger_path: Arc<Path>,
    pub auditor: Option<Auditor>,
    pub latest: Latest,
    pub walking: Arc<Mutex<()>>,
}

/// One witness's newest checkpoint under our key, or why there is none.
struct Held {
    name: String,
    newest: Option<SignedCheckpoint>,
    error: Option<String>,
    all: Vec<Checkpoint>,
}

impl AuditSource {
    pub async fn report(&self, verify: bool) -> Result<AuditReply, ErrorReply> {
        let mut held = Vec::new();
        if let Some(auditor) = &self.auditor {
            let vkey = auditor.key.verifier();
            for witness in &auditor.witnesses {
                let mut entry = Held {
                    name: witness.describe(),
                    newest: None,
                    error: None,
                    all: Vec::new(),
                };
                match witness.notes().await {
                    Ok(notes) => {
                        for note in notes {
                            match SignedCheckpoint::open(&note, &vkey) {
                                Ok(signed) => {
                                    entry.all.push(signed.checkpoint.clone());
                                    if entry
                                        .newest
                                        .as_ref()
                                        .is_none_or(|n| n.checkpoint.size < signed.checkpoint.size)
                                    {
                                        entry.newest = Some(signed);
                                    }
                                }
                                Err(e) => entry.error = Some(format!("a note was refused: {e}")),
                            }
                        }
                    }
                    Err(e) => entry.error = Some(e),
                }
                held.push(entry);
            }
        }
        let ours = self.latest.borrow().clone();
        let checkpoint = match ours {
            Some((at, signed)) => Some(view(&signed, Some(at))),
            None => held
                .iter()
                .filter_map(|h| h.newest.as_ref())
                .max_by_key(|s| s.checkpoint.size)
                .map(|s| view(s, None)),
        };
        let (head_seq, verification, agreed) = if verify {
            let _one = self.walking.lock().await;
            let path = self.ledger_path.clone();
            let all: Vec<Checkpoint> = held.iter().flat_map(|h| h.all.clone()).collect();
            tokio::task::spawn_blocking(move || walk(&path, &all))
                .await
                .map_err(|e| unavailable(format!("the verification did not finish: {e}")))??
        } else {
            let path = self.ledger_path.clone();
            let head = tokio::task::spawn_blocking(move || {
                Ledger::open_reader(&path).map(|l| l.head().seq)
            })
            .await
            .map_err(|e| unavailable(format!("the ledger read did not finish: {e}")))?
            .map_err(|e| unavailable(format!("the ledger could not be read: {e}")))?;
            (head, None, Vec::new())
        };
        Ok(AuditReply {
            head_seq,
            vkey: self.auditor.as_ref().map(|a| a.key.vkey()),
            checkpoint,
            witnesses: held
                .into_iter()
                .map(|h| WitnessView {
                    agrees: match (&verification, &h.newest) {
                        (Some(_), Some(n)) => Some(agreed.contains(&n.checkpoint.size)),
                        _ => None,
                    },
                    size: h.newest.as_ref().map(|n| n.checkpoint.size),
                    root: h.newest.as_ref().map(|n| n.checkpoint.root_hex()),
                    name: h.name,
                    error: h.error,
                })
                .collect(),
            verification,
        })
    }
}

fn view(signed: &SignedCheckpoint, at: Option<Timestamp>) -> CheckpointView {
    CheckpointView {
        size: signed.checkpoint.size,
        root: signed.checkpoint.root_hex(),
        signed_at: at,
        note: signed.note.clone(),
    }
}

fn unavailable(message: String) -> ErrorReply {
    ErrorReply::new(ErrorCode::Unavailable, message)
}

type Walked = (u64, Option<VerificationView>, Vec<u64>);

/// Every row checked, the tree compared at each checkpoint's size. A broken
/// chain or a disagreement is a finding (ok: false), not an error.
fn walk(path: &Path, checkpoints: &[Checkpoint]) -> Result<Walked, ErrorReply> {
    let started = Instant::now();
    let ledger = Ledger::open_reader(path)
        .map_err(|e| unavailable(format!("the ledger could not be read: {e}")))?;
    let head = ledger.head().seq;
    let took = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match check_ledger(&ledger, checkpoints, |_, _| {}) {
        Ok(report) => {
            let problem = report.disagreement.as_ref().map(|d| d.to_string());
            let first_bad_seq = report.disagreement.as_ref().map(|d| d.first_bad_seq());
            let view = VerificationView {
                ok: problem.is_none(),
                events: report.verified.events,
                checkpoints_agreed: report.agreed.len() as u64,
                problem,
                first_bad_seq,
                took_ms: took(),
            };
            Ok((head, Some(view), report.agreed))
        }
        Err(VerifyError::Broken(b)) => {
            let view = VerificationView {
                ok: false,
                events: b.seq.saturating_sub(1),
                checkpoints_agreed: 0,
                problem: Some(b.to_string()),
                first_bad_seq: Some(b.seq),
                took_ms: took(),
            };
            Ok((head, Some(view), Vec::new()))
        }
        Err(other) => Err(unavailable(format!(
            "the ledger could not be verified: {other}"
        ))),
    }
}
