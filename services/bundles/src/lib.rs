//! Signed bundles in object storage: DESIGN.md §5, the seed's "R2 Archive
//! V1" and "V1 TTL Expiry".
//!
//! - [`layout`]: `bundle/v<N>/…` and `archive/v<N>/…` keys.
//! - [`bundle`]: a bundle's bytes and metadata, derived from ledger events.
//! - [`store`]: the OpenDAL store (filesystem or S3-compatible).
//! - [`archive`]: one archive pass — plan a batch in the ledger, copy,
//!   check, delete, record — resumable from the ledger alone.
//! - [`checkpoints`]: the store as a witness of signed ledger checkpoints.
//! - [`worker`]: the part of Version Management (0x6001) that runs all of
//!   it beside the engine: writes bundles after their events commit, tells
//!   the engine when the active version's bundles expire, archives a
//!   version once it retires, and serves `tes.cmd.0x6001.archive`.
//!
//! Signing never waits on the store: bundles are written from the ledger,
//! after the fact, and a store that is down only delays them.

pub mod archive;
pub mod bundle;
pub mod checkpoints;
pub mod layout;
pub mod store;
pub mod worker;

pub use bundle::{Bundle, BundleBody, Deriver, Ttl};
pub use store::{S3Config, Store, StoreConfig, StoreError, DEFAULT_ARCHIVE_CLASS};
pub use worker::{Worker, WorkerConfig};
