//! The object store behind bundles, through OpenDAL: the local filesystem
//! (the default, under the data directory) or any S3-compatible service
//! (AWS, R2, MinIO). Errors say which store and what to check, never the
//! credentials.

use std::fmt;
use std::path::PathBuf;
use std::sync::Once;
use std::time::Duration;

use futures::TryStreamExt;
use opendal::{ErrorKind, Operator};
use zeroize::Zeroizing;

/// The storage class archived bundles are written with on S3-compatible
/// stores (R2 maps it to its Infrequent Access class).
pub const DEFAULT_ARCHIVE_CLASS: &str = "STANDARD_IA";

/// Where bundles are kept.
#[derive(Clone)]
pub enum StoreConfig {
    /// A directory (metadata as `user.*` extended attributes).
    Fs {
        root: PathBuf,
    },
    S3(S3Config),
}

#[derive(Clone)]
pub struct S3Config {
    /// `http(s)://host:port`; `None`: AWS for `region`.
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: Zeroizing<String>,
    /// The storage class of `archive/` objects.
    pub archive_class: String,
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl StoreConfig {
    /// Names the store in messages (no credentials).
    pub fn describe(&self) -> String {
        match self {
            StoreConfig::Fs { root } => format!("fs:{}", root.display()),
            StoreConfig::S3(s) => format!(
                "s3://{} at {} ({})",
                s.bucket,
                s.endpoint.as_deref().unwrap_or("AWS"),
                s.region
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("bundle store {store} is unreachable ({detail}); check the endpoint and the network")]
    Unreachable { store: String, detail: String },
    #[error("bucket {bucket:?} does not exist at {store}; create it, or point --s3-bucket at one that does")]
    NoBucket { store: String, bucket: String },
    #[error("bundle store {store} refused our credentials or permissions ({detail}); check TES_S3_ACCESS_KEY_ID and the secret")]
    Denied { store: String, detail: String },
    #[error("bundle store {store}: {op} {key}: {detail}")]
    Failed {
        store: String,
        op: &'static str,
        key: String,
        detail: String,
    },
    #[error("bundle store {store} is misconfigured: {detail}")]
    Config { store: String, detail: String },
}

impl StoreError {
    /// A failure worth retrying later (the store may come back).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unreachable { .. } | StoreError::Failed { .. }
        )
    }
}

/// Size and user metadata of a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub size: u64,
    /// As the store returns them (S3 lower-cases names; a filesystem keeps them).
    pub user: Vec<(String, String)>,
}

impl ObjectMeta {
    /// A metadata value by name, case-blind.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.user
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub size: u64,
}

/// Where a file-system store writes an object before renaming it into
/// place (never listed: every reader lists under its own prefix).
const PARTIAL: &str = "partial/";

#[derive(Clone)]
pub struct Store {
    /// Reads, writes of new bundles, deletes.
    op: Operator,
    /// Writes into `archive/`: on S3 built with the archive storage class,
    /// because OpenDAL sets the class per operator, not per write (and its
    /// `copy` sends none).
    archive_op: Operator,
    describe: String,
    bucket: Option<String>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe)
    }
}

/// How long one store request may take before it counts as unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// OpenDAL's HTTP services need a transport installed once per process;
/// ours is reqwest over rustls with the ring provider.
fn install_http_transport() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err: a provider is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("an HTTP client with the ring provider builds");
        opendal::HttpTransporter::install_default(
            opendal_http_transport_reqwest::ReqwestTransport::new(client),
        );
    });
}

impl Store {
    /// Opens the store and checks that it answers.
    pub async fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        let store = Store::new(config)?;
        store.check().await?;
        Ok(store)
    }

    /// Checks that the store answers (reachable, bucket there, credentials
    /// accepted) with one listing.
    pub async fn check(&self) -> Result<(), StoreError> {
        self.list_page("bundle/").await
    }

    async fn list_page(&self, prefix: &str) -> Result<(), StoreError> {
        self.op
            .list_with(prefix)
            .limit(1)
            .await
            .map(|_| ())
            .map_err(|e| self.error("list", prefix, e))
    }

    /// Builds the store from its configuration; no request is made yet.
    pub fn new(config: &StoreConfig) -> Result<Store, StoreError> {
        let describe = config.describe();
        let invalid = |e: opendal::Error| StoreError::Config {
            store: describe.clone(),
            detail: e.message().to_string(),
        };
        let store = match config {
            StoreConfig::Fs { root } => {
                std::fs::create_dir_all(root).map_err(|e| StoreError::Config {
                    store: describe.clone(),
                    detail: format!("cannot create {}: {e}", root.display()),
                })?;
                let root = root.to_str().ok_or_else(|| StoreError::Config {
                    store: describe.clone(),
                    detail: "the path is not UTF-8".into(),
                })?;
                let op =
                    Operator::new(opendal::services::Fs::default().root(root)).map_err(invalid)?;
                Store {
                    archive_op: op.clone(),
                    op,
                    describe: describe.clone(),
                    bucket: None,
                }
            }
            StoreConfig::S3(s) => {
                install_http_transport();
                let builder = || {
                    let mut b = opendal::services::S3::default()
                        .bucket(&s.bucket)
                        .region(&s.region)
                        .access_key_id(&s.access_key_id)
                        .secret_access_key(&s.secret_access_key)
                        .disable_config_load()
                        .disable_ec2_metadata();
                    if let Some(endpoint) = &s.endpoint {
                        b = b.endpoint(endpoint);
                    }
                    b
                };
                Store {
                    op: Operator::new(builder()).map_err(invalid)?,
                    archive_op: Operator::new(builder().default_storage_class(&s.archive_class))
                        .map_err(invalid)?,
                    describe: describe.clone(),
                    bucket: Some(s.bucket.clone()),
                }
            }
        };
        Ok(store)
    }

    pub fn describe(&self) -> &str {
        &self.describe
    }

    fn error(&self, op: &'static str, key: &str, e: opendal::Error) -> StoreError {
        let store = self.describe.clone();
        let detail = e.message().to_string();
        let text = e.to_string();
        match e.kind() {
            _ if text.contains("NoSuchBucket") => StoreError::NoBucket {
                store,
                bucket: self.bucket.clone().unwrap_or_default(),
            },
            ErrorKind::PermissionDenied => StoreError::Denied { store, detail },
            _ if [
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "AccessDenied",
            ]
            .iter()
            .any(|c| text.contains(c)) =>
            {
                StoreError::Denied {
                    store,
                    detail: detail_code(&text).unwrap_or(detail),
                }
            }
            ErrorKind::Unexpected if e.is_temporary() => StoreError::Unreachable { store, detail },
            _ => StoreError::Failed {
                store,
                op,
                key: key.to_string(),
                detail,
            },
        }
    }

    /// Writes a bundle under `bundle/`.
    pub async fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        metadata: Vec<(String, String)>,
    ) -> Result<(), StoreError> {
        self.write(&self.op, key, bytes, metadata).await
    }

    /// Writes an archived copy (with the archive storage class).
    pub async fn put_archive(
        &self,
        key: &str,
        bytes: Vec<u8>,
        metadata: Vec<(String, String)>,
    ) -> Result<(), StoreError> {
        self.write(&self.archive_op, key, bytes, metadata).await
    }

    /// Writes a text object (a signed checkpoint) in the default class.
    pub async fn write_text(
        &self,
        key: &str,
        bytes: Vec<u8>,
        metadata: Vec<(String, String)>,
    ) -> Result<(), StoreError> {
        self.write_as(&self.op, key, bytes, "text/plain; charset=utf-8", metadata)
            .await
    }

    async fn write(
        &self,
        op: &Operator,
        key: &str,
        bytes: Vec<u8>,
        metadata: Vec<(String, String)>,
    ) -> Result<(), StoreError> {
        self.write_as(op, key, bytes, "application/json", metadata)
            .await
    }

    /// Writes `key` whole or not at all. An S3 PUT is that already; on a
    /// file system the bytes go to `partial/<key>` first and are renamed
    /// into place, so a process killed (or a disk filled) mid-write leaves
    /// no torn object for a reader — a torn checkpoint would fail every
    /// later audit.
    async fn write_as(
        &self,
        op: &Operator,
        key: &str,
        bytes: Vec<u8>,
        content_type: &str,
        metadata: Vec<(String, String)>,
    ) -> Result<(), StoreError> {
        let target = match self.bucket {
            None => format!("{PARTIAL}{key}"),
            Some(_) => key.to_string(),
        };
        op.write_with(&target, bytes)
            .content_type(content_type)
            .user_metadata(metadata)
            .await
            .map_err(|e| self.error("write", key, e))?;
        if target != key {
            op.rename(&target, key)
                .await
                .map_err(|e| self.error("write", key, e))?;
        }
        Ok(())
    }

    /// Objects under `prefix` (files only), sorted by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        let lister = self
            .op
            .lister_with(prefix)
            .recursive(true)
            .await
            .map_err(|e| self.error("list", prefix, e))?;
        let entries: Vec<opendal::Entry> = lister
            .try_collect()
            .await
            .map_err(|e| self.error("list", prefix, e))?;
        let mut out: Vec<Listed> = entries
            .into_iter()
            .filter(|e| !e.path().ends_with('/'))
            .map(|e| Listed {
                size: e.metadata().content_length(),
                key: e.path().to_string(),
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// `None` when there is no such object.
    pub async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        match self.op.stat(key).await {
            Ok(m) => Ok(Some(ObjectMeta {
                size: m.content_length(),
                user: m
                    .user_metadata()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            })),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.error("stat", key, e)),
        }
    }

    /// `None` when there is no such object.
    pub async fn read(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.op.read(key).await {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.error("read", key, e)),
        }
    }

    /// Deleting what is not there succeeds.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.op
            .delete(key)
            .await
            .map_err(|e| self.error("delete", key, e))
    }
}

/// `S3Error { code: "InvalidAccessKeyId", … }` → `InvalidAccessKeyId`.
fn detail_code(text: &str) -> Option<String> {
    let start = text.find("code: \"")? + 7;
    let len = text[start..].find('"')?;
    Some(text[start..start + len].to_string())
}
