//! The bundle store as a checkpoint witness: `checkpoint/latest` (the
//! newest signed note) and `checkpoint/history/<size, 20 digits>` (one
//! object per checkpoint, never rewritten). Off-host when the store is S3,
//! so a swapped or truncated ledger on the writer's disk disagrees with it.

use tes_audit::{SignedCheckpoint, Witness};

use crate::Store;

pub const LATEST: &str = "checkpoint/latest";
pub const HISTORY: &str = "checkpoint/history/";

#[async_trait::async_trait]
impl Witness for Store {
    fn describe(&self) -> String {
        format!("bundle store {}", Store::describe(self))
    }

    async fn put(&self, signed: &SignedCheckpoint) -> Result<(), String> {
        let bytes = signed.note.clone().into_bytes();
        let meta = vec![
            ("treesize".to_string(), signed.checkpoint.size.to_string()),
            ("root".to_string(), signed.checkpoint.root_hex()),
        ];
        let history = format!("{HISTORY}{:020}", signed.checkpoint.size);
        self.write_text(&history, bytes.clone(), meta.clone())
            .await
            .map_err(|e| e.to_string())?;
        self.write_text(LATEST, bytes, meta)
            .await
            .map_err(|e| e.to_string())
    }

    async fn notes(&self) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        let mut keys: Vec<String> = self
            .list(HISTORY)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|l| l.key)
            .collect();
        keys.push(LATEST.to_string());
        for key in keys {
            if let Some(bytes) = self.read(&key).await.map_err(|e| e.to_string())? {
                if let Ok(text) = String::from_utf8(bytes) {
                    out.push(text);
                }
            }
        }
        Ok(out)
    }
}
