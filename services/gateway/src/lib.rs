//! The HTTP gateway: the seed's HTTP edge, a client of the actors.
//!
//! - [`server`]: the routes, the admin checks, limits and the access log.
//! - [`csrf`]: one-time tokens in a store every instance shares (NATS KV,
//!   or a file on the embedded bus).
//! - [`trust`]: the client's address and `TES_PROXY_IPS`.
//! - [`ws`]: the version WebSocket and its subprotocol rule.
//! - [`page`]: the admin page, compiled in.
//! - [`console`]: the read endpoints the admin page draws from (the feed's
//!   history, signers and the gate, audit).

mod console;
pub mod csrf;
mod page;
pub mod server;
pub mod trust;
mod ws;

pub use server::{start, Gateway, GatewayConfig, GatewayError};
