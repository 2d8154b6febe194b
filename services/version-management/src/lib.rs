//! Version Management (thread 0x6001): the only writer of the ledger, the
//! holder of the keyring, the signer.
//!
//! - [`core`]: the pure decider (state, evolve, decide, signing plans).
//! - [`engine`]: the synchronous shell around it: ledger + keyring + state,
//!   group commit.
//! - [`catch_up`]: a writer whose ledger is behind `TES_EVENTS` (restored
//!   from a backup) takes back the events it had published, before writing.
//! - [`audit`]: the audit view (newest checkpoint, witnesses, a full
//!   verification on request) for the admin page.
//! - [`history`]: the newest ledger events for the admin page's feed,
//!   read beside the engine.
//! - [`replay`]: rebuilding state from any ledger, to a seq or a time.
//! - [`actor`]: the bus-facing side: `tes.cmd.0x6001.*` in, replies and
//!   `tes.evt.0x6001.*` out.
//! - [`replica`]: a signer replica: no ledger, the state followed from
//!   `TES_EVENTS`, audit records written through the ledger writer.

pub mod actor;
pub mod audit;
pub mod catch_up;
pub mod core;
pub mod engine;
pub mod history;
pub mod replay;
pub mod replica;
pub mod standby;

pub use engine::{Engine, EngineConfig, EngineError, Request, Response};
