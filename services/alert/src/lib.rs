//! Alert (thread 0x5003): threshold rules over Monitoring's snapshots.
//!
//! - [`rules`]: which rules hold and their thresholds (defaults: the seed's;
//!   or a TOML file, checked at start-up).
//! - [`core`]: pure: a snapshot → the alerts that start and end.
//! - [`replay`]: a ledger → the alerts it raises, event by event.
//! - [`actor`]: the shell: snapshots in, alerts to the Supervisor, which has
//!   them recorded; `tes.cmd.0x5003.alerts`.

pub mod actor;
pub mod core;
pub mod replay;
pub mod rules;

pub use crate::core::Evaluator;
pub use crate::rules::Rules;
