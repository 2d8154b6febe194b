//! Supervisor (thread 0x1001): every rotation and rollback signal goes
//! through here. [`gate`] decides (pure) whether it may go through;
//! [`actor`] is the shell that asks Version Management for its status,
//! applies the gate, forwards what passes to `tes.cmd.0x6001.<verb>` and
//! publishes a `rejected` event for what does not. [`kv_signal`] feeds the
//! same gate from the JetStream KV bucket `tes`, key `rotation-signal`, and
//! [`durable`] from the `TES_COMMANDS` stream on NATS. Alerts from Alert
//! (0x5003) arrive as `tes.cmd.0x1001.alert` and are recorded through
//! Version Management (`alerts`).
//!
//! Invariant: only the Supervisor sends `tes.cmd.0x6001.rotate|rollback`
//! (the NATS permissions in `ops/` enforce it on a real server).

pub mod actor;
mod alerts;
pub mod durable;
pub mod gate;
pub mod kv_signal;
pub mod signers;
