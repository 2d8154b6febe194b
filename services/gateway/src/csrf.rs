//! One-time CSRF tokens: issued by `GET /api/auth/csrf-token`, spent by the
//! first request that presents one, refused after their lifetime.
//!
//! Spending is a compare-and-set on a store every gateway instance sees, so
//! a token is good exactly once however many requests race with it and
//! whichever instance they reach, and tokens outlive a gateway restart:
//! - on NATS, the JetStream KV bucket `tes-csrf` (`update` at the revision
//!   read: a concurrent spender gets "wrong last revision");
//! - on the embedded bus, a small SQLite file beside the ledger
//!   (`UPDATE … WHERE spent = 0` in one statement).
//!
//! Only a token's SHA-256 is stored, so the store does not hold live tokens.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use sha2::{Digest, Sha256};
use tes_proto::Timestamp;

/// The bucket of the NATS store.
pub const BUCKET: &str = "tes-csrf";
/// The file of the embedded store, in the data directory.
pub const FILE: &str = "csrf.db";
/// How long a token is good for, by default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);

const SPENT: &[u8] = b"spent";

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Unknown,
    Spent,
    Expired,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => "no X-CSRF-Token header",
            Refusal::Unknown => "the CSRF token was never issued",
            Refusal::Spent => "the CSRF token was already used",
            Refusal::Expired => "the CSRF token has expired",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("CSRF token store: {0}")]
pub struct StoreError(String);

#[derive(Clone)]
pub struct Csrf {
    store: Store,
    ttl: Duration,
}

#[derive(Clone)]
enum Store {
    Kv(Box<kv::Store>),
    File(Arc<Mutex<rusqlite::Connection>>, PathBuf),
}

fn key_of(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Csrf {
    /// The NATS store (creates the bucket if needed).
    pub async fn on_nats(client: async_nats::Client, ttl: Duration) -> Result<Csrf, StoreError> {
        let copies = tes_bus::jetstream::replicas(&client);
        let js = jetstream::new(client);
        let store = match js.get_key_value(BUCKET).await {
            Ok(s) => s,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: BUCKET.to_string(),
                    history: 1,
                    // Spent and expired entries go away on their own.
                    max_age: ttl + Duration::from_secs(60),
                    num_replicas: copies,
                    ..Default::default()
                })
                .await
                .map_err(|e| StoreError(format!("cannot create the KV bucket {BUCKET}: {e}")))?,
        };
        Ok(Csrf {
            store: Store::Kv(Box::new(store)),
            ttl,
        })
    }

    /// The file store in `data_dir`.
    pub fn in_file(data_dir: &Path, ttl: Duration) -> Result<Csrf, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError(format!("{}: {e}", data_dir.display())))?;
        let path = data_dir.join(FILE);
        let err = |e: rusqlite::Error| StoreError(format!("{}: {e}", path.display()));
        let conn = rusqlite::Connection::open(&path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS tokens (
                 key TEXT PRIMARY KEY, expires_ms INTEGER NOT NULL, spent INTEGER NOT NULL DEFAULT 0);",
        )
        .map_err(err)?;
        Ok(Csrf {
            store: Store::File(Arc::new(Mutex::new(conn)), path),
            ttl,
        })
    }

    /// A new token, good until the returned time.
    pub async fn issue(&self, now: Timestamp) -> Result<(String, Timestamp), StoreError> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| StoreError(format!("no randomness: {e}")))?;
        let token = hex::encode(raw);
        let expires = now.saturating_add(self.ttl);
        let key = key_of(&token);
        match &self.store {
            Store::Kv(kv) => {
                kv.create(&key, expires.as_millis().to_string().into())
                    .await
                    .map_err(|e| StoreError(e.to_string()))?;
            }
            Store::File(conn, path) => {
                let conn = conn.lock().expect("csrf store lock");
                conn.execute(
                    "INSERT INTO tokens (key, expires_ms) VALUES (?1, ?2)",
                    rusqlite::params![key, expires.as_millis()],
                )
                .map_err(|e| StoreError(format!("{}: {e}", path.display())))?;
                // Keep the file small: forget what can no longer be spent.
                let _ = conn.execute(
                    "DELETE FROM tokens WHERE expires_ms < ?1",
                    [now.as_millis().saturating_sub(3_600_000)],
                );
            }
        }
        Ok((token, expires))
    }

    /// Spends `token` if it is good: once, whoever else tries at the same time.
    pub async fn spend(
        &self,
        token: Option<&str>,
        now: Timestamp,
    ) -> Result<Result<(), Refusal>, StoreError> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Ok(Err(Refusal::Missing));
        };
        if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Err(Refusal::Unknown));
        }
        let key = key_of(&token.to_ascii_lowercase());
        match &self.store {
            Store::Kv(kv) => {
                let entry = kv
                    .entry(&key)
                    .await
                    .map_err(|e| StoreError(e.to_string()))?;
                let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
                    return Ok(Err(Refusal::Unknown));
                };
                if entry.value.as_ref() == SPENT {
                    return Ok(Err(Refusal::Spent));
                }
                let expires = std::str::from_utf8(&entry.value)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0);
                if now.as_millis() >= expires {
                    return Ok(Err(Refusal::Expired));
                }
                match kv.update(&key, SPENT.into(), entry.revision).await {
                    Ok(_) => Ok(Ok(())),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                        Ok(Err(Refusal::Spent))
                    }
                    Err(e) => Err(StoreError(e.to_string())),
                }
            }
            Store::File(conn, path) => {
                let err = |e: rusqlite::Error| StoreError(format!("{}: {e}", path.display()));
                let conn = conn.lock().expect("csrf store lock");
                let spent = conn
                    .execute(
                        "UPDATE tokens SET spent = 1 WHERE key = ?1 AND spent = 0 AND expires_ms > ?2",
                        rusqlite::params![key, now.as_millis()],
                    )
                    .map_err(err)?;
                if spent == 1 {
                    return Ok(Ok(()));
                }
                let row: Option<(u64, bool)> = conn
                    .query_row(
                        "SELECT expires_ms, spent FROM tokens WHERE key = ?1",
                        [&key],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .map(Some)
                    .or_else(|e| match e {
                        rusqlite::Error::QueryReturnedNoRows => Ok(None),
                        other => Err(other),
                    })
                    .map_err(err)?;
                Ok(Err(match row {
                    None => Refusal::Unknown,
                    Some((_, true)) => Refusal::Spent,
                    Some(_) => Refusal::Expired,
                }))
            }
        }
    }
}
