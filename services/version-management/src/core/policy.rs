//! Rotation policy: configuration the decider is given, never reads itself.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// How long the previous active version keeps verifying after a
    /// rotation or rollback (the grace window).
    pub grace: Duration,
    /// How long a version may stay active before it is rotated away on its
    /// own (the seed's V1 TTL). `None`: no expiry.
    pub key_ttl: Option<Duration>,
    /// Sign with the verifying version(s) too during the grace window.
    pub dual_sign: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            grace: Duration::from_secs(24 * 3600),
            key_ttl: None,
            dual_sign: true,
        }
    }
}
