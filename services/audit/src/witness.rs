//! A directory witness: signed checkpoints kept outside the ledger file.
//!
//! `DIR/checkpoints/latest.note` is the newest note (replaced atomically);
//! `DIR/checkpoints/history.jsonl` gets one line per checkpoint,
//! `{"size":N,"root":"<hex>","note":"<the note>"}`, appended and never
//! rewritten. The daemon keeps one in its log directory; the bundle store
//! and NATS hold the same note bytes.

use std::fs::{self, OpenOptions};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint::SignedCheckpoint;

pub const SUBDIR: &str = "checkpoints";
pub const LATEST: &str = "latest.note";
pub const HISTORY: &str = "history.jsonl";

/// One history line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub size: u64,
    pub root: String,
    pub note: String,
}

#[derive(Debug, thiserror::Error)]
#[error("checkpoint witness {path:?}: {error}")]
pub struct WitnessError {
    pub path: PathBuf,
    pub error: std::io::Error,
}

/// Somewhere outside the ledger file that keeps signed checkpoints.
#[async_trait::async_trait]
pub trait Witness: Send + Sync + std::fmt::Debug {
    /// For people: where it is.
    fn describe(&self) -> String;
    /// Keeps `signed` (as the latest, and in the history).
    async fn put(&self, signed: &SignedCheckpoint) -> Result<(), String>;
    /// Every note it holds (any order; each is checked by its signature).
    async fn notes(&self) -> Result<Vec<String>, String>;
}

#[async_trait::async_trait]
impl Witness for DirWitness {
    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }
    async fn put(&self, signed: &SignedCheckpoint) -> Result<(), String> {
        DirWitness::put(self, signed).map_err(|e| e.to_string())
    }
    async fn notes(&self) -> Result<Vec<String>, String> {
        DirWitness::notes(self).map_err(|e| e.to_string())
    }
}

#[derive(Debug, Clone)]
pub struct DirWitness {
    dir: PathBuf,
}

impl DirWitness {
    /// The witness under `base` (a log directory): `base/checkpoints/`.
    pub fn new(base: &Path) -> DirWitness {
        DirWitness {
            dir: base.join(SUBDIR),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends `signed` to the history and makes it the latest.
    pub fn put(&self, signed: &SignedCheckpoint) -> Result<(), WitnessError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |error| WitnessError { path, error }
        };
        fs::create_dir_all(&self.dir).map_err(err(&self.dir))?;
        let history = self.dir.join(HISTORY);
        let mut line = serde_json::to_vec(&Entry {
            size: signed.checkpoint.size,
            root: signed.checkpoint.root_hex(),
            note: signed.note.clone(),
        })
        .expect("plain data serializes");
        line.push(b'\n');
        // One write of a short line to an O_APPEND file: lines never interleave.
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&history)
            .and_then(|mut f| f.write_all(&line))
            .map_err(err(&history))?;
        let latest = self.dir.join(LATEST);
        let tmp = self.dir.join(format!(".{LATEST}.tmp"));
        fs::write(&tmp, signed.note.as_bytes())
            .and_then(|_| fs::rename(&tmp, &latest))
            .map_err(err(&latest))
    }

    /// Every note this witness holds, oldest first (the history, then the
    /// latest). Nothing there is an empty list; unreadable lines are
    /// skipped (each note is checked by its signature anyway).
    pub fn notes(&self) -> Result<Vec<String>, WitnessError> {
        let mut out = Vec::new();
        let history = self.dir.join(HISTORY);
        match fs::File::open(&history) {
            Ok(f) => {
                for line in std::io::BufReader::new(f).lines() {
                    let line = line.map_err(|error| WitnessError {
                        path: history.clone(),
                        error,
                    })?;
                    if let Ok(entry) = serde_json::from_str::<Entry>(&line) {
                        out.push(entry.note);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(WitnessError {
                    path: history,
                    error,
                })
            }
        }
        let latest = self.dir.join(LATEST);
        match fs::read_to_string(&latest) {
            Ok(note) => out.push(note),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(WitnessError {
                    path: latest,
                    error,
                })
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AuditKey;

    #[test]
    fn keeps_history_and_latest() {
        let dir = tempfile::tempdir().unwrap();
        let w = DirWitness::new(dir.path());
        assert!(w.notes().unwrap().is_empty(), "nothing there yet");
        let k = AuditKey::generate("o").unwrap();
        let a = SignedCheckpoint::sign(&k, 1, [1; 32]);
        let b = SignedCheckpoint::sign(&k, 2, [2; 32]);
        w.put(&a).unwrap();
        w.put(&b).unwrap();
        assert_eq!(w.notes().unwrap(), vec![a.note, b.note.clone(), b.note]);
    }
}
