//! The TES wire protocol.
//!
//! Everything two actors (or an actor and an outside client) must agree on
//! lives here and nowhere else: thread ids and colours ([`thread`]), the
//! subject scheme ([`subject`]), the envelope every message travels in
//! ([`envelope`]), one struct per command ([`command`]), the events
//! ([`event`]), Monitoring's snapshot ([`metrics`]), Alert's rules and
//! events ([`alert`]), request/reply bodies ([`reply`]) and the two codecs
//! ([`codec`]: JSON for people and other languages, postcard for speed).
//!
//! The JSON Schemas under `schemas/` are generated from these types
//! ([`schema`]); a test fails when the files and the types drift apart.

pub mod alert;
pub mod codec;
pub mod command;
pub mod envelope;
pub mod event;
pub mod key_version;
pub mod metrics;
pub mod reply;
pub mod schema;
pub mod subject;
pub mod thread;

pub use codec::{CodecError, ContentType};
pub use command::CommandBody;
pub use envelope::{Channel, Envelope, MsgId, Timestamp};
pub use event::Event;
pub use key_version::{Fingerprint, KeyVersion};
pub use reply::{ErrorCode, ErrorReply, Reply};
pub use thread::ThreadId;

/// Version of the message bodies defined in this crate. Stored in every
/// envelope and every ledger row; bump it when a body changes shape and add
/// an upcaster for the old one (see `tes-ledger`'s `codec`).
pub const SCHEMA_VERSION: u16 = 1;
