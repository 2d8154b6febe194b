//! The five actors, addressed by thread id, and the colours people see them in.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A thread id names an actor on the bus (`tes.cmd.0x6001.sign`) and in the
/// ledger. Written as `0x6001` in text; a plain `u16` in the binary form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u16)]
pub enum ThreadId {
    /// Gates every rotation and rollback; receives alerts.
    Supervisor = 0x1001,
    /// Owns the ledger, the keyring, signing and versioned entities.
    VersionManagement = 0x6001,
    /// Aggregates key deltas from events.
    Monitoring = 0x5000,
    /// Exports Monitoring's snapshots.
    Telemetry = 0x5002,
    /// Raises and resolves threshold alerts.
    Alert = 0x5003,
}

impl ThreadId {
    pub const ALL: [ThreadId; 5] = [
        ThreadId::Supervisor,
        ThreadId::VersionManagement,
        ThreadId::Monitoring,
        ThreadId::Telemetry,
        ThreadId::Alert,
    ];

    pub fn as_u16(self) -> u16 {
        self as u16
    }

    pub fn from_u16(raw: u16) -> Option<ThreadId> {
        ThreadId::ALL.into_iter().find(|t| t.as_u16() == raw)
    }

    /// The subject token, e.g. `0x6001`.
    pub fn token(self) -> &'static str {
        match self {
            ThreadId::Supervisor => "0x1001",
            ThreadId::VersionManagement => "0x6001",
            ThreadId::Monitoring => "0x5000",
            ThreadId::Telemetry => "0x5002",
            ThreadId::Alert => "0x5003",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ThreadId::Supervisor => "Supervisor",
            ThreadId::VersionManagement => "Version Management",
            ThreadId::Monitoring => "Monitoring",
            ThreadId::Telemetry => "Telemetry",
            ThreadId::Alert => "Alert",
        }
    }

    /// The actor's colour as `#RRGGBB` (DESIGN.md §1). Telemetry has none of
    /// its own in the seed; it is shown in a neutral grey.
    pub fn hsl(self) -> &'static str {
        match self {
            ThreadId::Supervisor => colour::SUPERVISOR_BLUE,
            ThreadId::VersionManagement => colour::VERSION_PURPLE,
            ThreadId::Monitoring => colour::MONITORING_GREEN,
            ThreadId::Telemetry => colour::TELEMETRY_GREY,
            ThreadId::Alert => colour::ALERT_MAGENTA,
        }
    }
}

/// The seed's colours, in one place.
pub mod colour {
    pub const SUPERVISOR_BLUE: &str = "#1E90FF";
    pub const VERSION_PURPLE: &str = "#9D4EDD";
    pub const MONITORING_GREEN: &str = "#2ECC71";
    pub const TELEMETRY_GREY: &str = "#A0A0A0";
    pub const ALERT_MAGENTA: &str = "#FF00FF";
    /// Fallback and rollback.
    pub const FALLBACK_ORANGE: &str = "#FF8C00";
    /// CSRF rejected, deprecated subprotocol, any refused request.
    pub const REJECTED_ORANGE_RED: &str = "#FF4500";
    /// Missing key material.
    pub const MISSING_KEY_RED: &str = "#FF0000";
    /// A revoked key version: stronger than a refusal, not a missing key.
    pub const REVOKED_CRIMSON: &str = "#DC143C";
}

impl fmt::Display for ThreadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.token())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown thread id {0:?} (expected one of 0x1001, 0x6001, 0x5000, 0x5002, 0x5003)")]
pub struct UnknownThread(pub String);

impl FromStr for ThreadId {
    type Err = UnknownThread;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ThreadId::ALL
            .into_iter()
            .find(|t| t.token().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownThread(s.to_string()))
    }
}

impl Serialize for ThreadId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(self.token())
        } else {
            s.serialize_u16(self.as_u16())
        }
    }
}

impl<'de> Deserialize<'de> for ThreadId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(D::Error::custom)
        } else {
            let raw = u16::deserialize(d)?;
            ThreadId::from_u16(raw)
                .ok_or_else(|| D::Error::custom(UnknownThread(format!("{raw:#06x}"))))
        }
    }
}

impl schemars::JsonSchema for ThreadId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ThreadId".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "enum": ["0x1001", "0x6001", "0x5000", "0x5002", "0x5003"],
            "description": "Actor thread id"
        })
    }
}
