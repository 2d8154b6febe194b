//! The key store: where generated and `tes secret put` secrets live, outside
//! the ledger. Either a JSON file (mode 0600; writes are atomic — temp file,
//! fsync, rename — so a crash or a full disk leaves the old file whole) or
//! the OS credential store ([`crate::kernel`], the Linux kernel keyring: the
//! seed's `Bun.secrets` on a server).

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tes_proto::KeyVersion;
use zeroize::Zeroizing;

use crate::{KeyringError, Secret};

const FORMAT: &str = "tes-keystore/1";

/// The default file name inside the data directory.
pub const DEFAULT_FILE: &str = "keystore.json";

/// `--key-store os` (or `os:NAME`) selects the OS credential store.
pub const OS_STORE: &str = "os";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyStore {
    File {
        path: PathBuf,
    },
    /// The kernel keyring of this user; entries are `<namespace>:v<N>`.
    Os {
        namespace: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    format: String,
    keys: BTreeMap<u32, String>,
    /// The ledger's audit key (Ed25519, signed-note private form): signs
    /// checkpoints, never manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    audit: Option<String>,
}

impl File {
    fn empty() -> File {
        File {
            format: FORMAT.to_string(),
            keys: BTreeMap::new(),
            audit: None,
        }
    }
}

impl Drop for File {
    fn drop(&mut self) {
        for v in self.keys.values_mut() {
            zeroize::Zeroize::zeroize(v);
        }
        if let Some(a) = self.audit.as_mut() {
            zeroize::Zeroize::zeroize(a);
        }
    }
}

impl KeyStore {
    /// A key store file.
    pub fn new(path: impl Into<PathBuf>) -> KeyStore {
        KeyStore::File { path: path.into() }
    }

    /// `os` or `os:NAME` → the OS credential store (namespace `tes` or NAME);
    /// anything else is a file path.
    pub fn parse(spec: &str) -> KeyStore {
        match spec.strip_prefix(OS_STORE) {
            Some("") => KeyStore::Os {
                namespace: "tes".to_string(),
            },
            Some(rest) if rest.starts_with(':') && rest.len() > 1 => KeyStore::Os {
                namespace: rest[1..].to_string(),
            },
            _ => KeyStore::new(spec),
        }
    }

    /// The file, for a file store.
    pub fn path(&self) -> Option<&Path> {
        match self {
            KeyStore::File { path } => Some(path),
            KeyStore::Os { .. } => None,
        }
    }

    /// For people: where the secrets are.
    pub fn describe(&self) -> String {
        match self {
            KeyStore::File { path } => format!("key store {}", path.display()),
            KeyStore::Os { namespace } => {
                format!("OS key store (kernel keyring, {namespace}:v<N>)")
            }
        }
    }

    /// Every secret in the store; an absent file is an empty store.
    pub fn load(&self) -> Result<BTreeMap<KeyVersion, Secret>, KeyringError> {
        match self {
            KeyStore::File { path } => FileStore { path }.load(),
            KeyStore::Os { namespace } => crate::kernel::load(namespace),
        }
    }

    /// Adds a version's secret. Refuses to replace existing material unless
    /// `replace`: signatures made under the old material would stop verifying.
    pub fn put(
        &self,
        version: KeyVersion,
        secret: &Secret,
        replace: bool,
    ) -> Result<(), KeyringError> {
        match self {
            KeyStore::File { path } => FileStore { path }.put(version, secret, replace),
            KeyStore::Os { namespace } => crate::kernel::put(namespace, version, secret, replace),
        }
    }
}

impl KeyStore {
    /// The audit key's private text, if the store holds one.
    pub fn audit_key(&self) -> Result<Option<Secret>, KeyringError> {
        match self {
            KeyStore::File { path } => FileStore { path }.audit(),
            KeyStore::Os { namespace } => crate::kernel::load_audit(namespace),
        }
    }

    /// Stores the audit key once; a second one is refused (checkpoints
    /// signed by the first would no longer match the published vkey).
    pub fn put_audit_key(&self, secret: &Secret) -> Result<(), KeyringError> {
        match self {
            KeyStore::File { path } => FileStore { path }.put_audit(secret),
            KeyStore::Os { namespace } => crate::kernel::put_audit(namespace, secret),
        }
    }
}

struct FileStore<'a> {
    path: &'a Path,
}

impl FileStore<'_> {
    fn io(&self, error: std::io::Error) -> KeyringError {
        KeyringError::KeyStoreIo {
            path: self.path.to_path_buf(),
            error,
        }
    }

    fn corrupt(&self, reason: impl Into<String>) -> KeyringError {
        KeyringError::KeyStoreCorrupt {
            path: self.path.to_path_buf(),
            reason: reason.into(),
        }
    }

    fn load(&self) -> Result<BTreeMap<KeyVersion, Secret>, KeyringError> {
        let Some(file) = self.read()? else {
            return Ok(BTreeMap::new());
        };
        let mut out = BTreeMap::new();
        for (n, text) in &file.keys {
            let version = KeyVersion::new(*n).ok_or_else(|| self.corrupt("key version 0"))?;
            let name = format!("key store entry v{n}");
            out.insert(version, Secret::from_text(&name, text.as_bytes().to_vec())?);
        }
        Ok(out)
    }

    fn read(&self) -> Result<Option<File>, KeyringError> {
        let bytes = match fs::read(self.path) {
            Ok(b) => Zeroizing::new(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        let mode = fs::metadata(self.path)
            .map_err(|e| self.io(e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(KeyringError::KeyStorePermissions {
                path: self.path.to_path_buf(),
                mode: mode & 0o777,
            });
        }
        // serde_json's messages can quote the offending value, which may be a
        // secret: report only where the problem is.
        let file: File = serde_json::from_slice(&bytes).map_err(|e| {
            self.corrupt(format!(
                "invalid JSON at line {} column {}",
                e.line(),
                e.column()
            ))
        })?;
        if file.format != FORMAT {
            return Err(self.corrupt(format!("unknown format (expected {FORMAT})")));
        }
        Ok(Some(file))
    }

    fn audit(&self) -> Result<Option<Secret>, KeyringError> {
        let Some(file) = self.read()? else {
            return Ok(None);
        };
        file.audit
            .as_ref()
            .map(|text| Secret::from_text("key store entry audit", text.as_bytes().to_vec()))
            .transpose()
    }

    fn put_audit(&self, secret: &Secret) -> Result<(), KeyringError> {
        let mut file = self.read()?.unwrap_or_else(File::empty);
        if file.audit.is_some() {
            return Err(KeyringError::AuditKeyExists(
                self.path.display().to_string(),
            ));
        }
        file.audit = Some(secret.expose_str().to_string());
        let text = Zeroizing::new(serde_json::to_vec_pretty(&file).expect("plain data serializes"));
        self.write_atomically(&text)
    }

    fn put(&self, version: KeyVersion, secret: &Secret, replace: bool) -> Result<(), KeyringError> {
        let mut file = self.read()?.unwrap_or_else(File::empty);
        if file.keys.contains_key(&version.get()) && !replace {
            return Err(KeyringError::AlreadyProvisioned(version));
        }
        file.keys
            .insert(version.get(), secret.expose_str().to_string());
        let text = Zeroizing::new(serde_json::to_vec_pretty(&file).expect("plain data serializes"));
        self.write_atomically(&text)
    }

    fn write_atomically(&self, bytes: &[u8]) -> Result<(), KeyringError> {
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|e| self.io(e))?;
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            self.path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("keystore"),
            std::process::id()
        ));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, self.path)?;
            fs::File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(|e| self.io(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Secret {
        Secret::from_text("t", s.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn put_then_load_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path().join("ks.json"));
        assert!(store.load().unwrap().is_empty());
        store.put(KeyVersion::V1, &secret("one"), false).unwrap();
        store
            .put(KeyVersion::new(2).unwrap(), &secret("two"), false)
            .unwrap();
        let mode = fs::metadata(store.path().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let loaded = store.load().unwrap();
        assert_eq!(loaded[&KeyVersion::V1].expose(), b"one");
        assert_eq!(loaded.len(), 2);
    }

    #[test]
    fn parses_os_and_paths() {
        assert_eq!(
            KeyStore::parse("os"),
            KeyStore::Os {
                namespace: "tes".into()
            }
        );
        assert_eq!(
            KeyStore::parse("os:prod"),
            KeyStore::Os {
                namespace: "prod".into()
            }
        );
        assert_eq!(KeyStore::parse("os:"), KeyStore::new("os:"));
        assert_eq!(KeyStore::parse("./ks.json"), KeyStore::new("./ks.json"));
    }

    #[test]
    fn refuses_to_replace_silently() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path().join("ks.json"));
        store.put(KeyVersion::V1, &secret("one"), false).unwrap();
        assert!(matches!(
            store.put(KeyVersion::V1, &secret("other"), false),
            Err(KeyringError::AlreadyProvisioned(_))
        ));
        assert_eq!(store.load().unwrap()[&KeyVersion::V1].expose(), b"one");
        store.put(KeyVersion::V1, &secret("other"), true).unwrap();
        assert_eq!(store.load().unwrap()[&KeyVersion::V1].expose(), b"other");
    }

    #[test]
    fn refuses_loose_permissions_and_garbage_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ks.json");
        let store = KeyStore::new(&path);
        store.put(KeyVersion::V1, &secret("one"), false).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            store.load(),
            Err(KeyringError::KeyStorePermissions { .. })
        ));

        fs::write(
            &path,
            r#"{"format":"tes-keystore/1","keys":{"1":["leaky-secret"]}}"#,
        )
        .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("not a TES key store"), "{err}");
        assert!(!err.contains("leaky-secret"), "{err}");
    }
}
