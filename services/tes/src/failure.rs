//! How a command fails: an error with context, and the exit code the
//! contract gives it (0 success, 1 a check failed, 2 usage or input error).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// A check failed (verification, audit) or a runtime fault.
    CheckFailed = 1,
    /// Usage or input error: the request itself cannot be served.
    Input = 2,
}

pub struct Failure {
    pub exit: Exit,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn input(error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            exit: Exit::Input,
            error: error.into(),
        }
    }

    pub fn check(error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            exit: Exit::CheckFailed,
            error: error.into(),
        }
    }
}

/// Anything unexpected is a runtime fault.
impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure::check(e)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

pub type Result<T, E = Failure> = std::result::Result<T, E>;

/// Classifies a bus call's failure: a refusal is the caller's input, a
/// missing or silent actor is a runtime fault.
pub fn from_call(e: tes_bus::typed::CallError) -> Failure {
    use tes_bus::typed::CallError;
    use tes_bus::BusError;
    match e {
        CallError::Refused(reply) => Failure::input(anyhow::anyhow!(reply.message)),
        CallError::Bus(BusError::NoResponders(subject)) => Failure::check(anyhow::anyhow!(
            "nothing answers on {subject}: no tes daemon is serving this NATS server (start one with `tes daemon --nats URL`)"
        )),
        CallError::Bus(e @ BusError::Forbidden(_)) => Failure::input(e),
        other => Failure::check(other),
    }
}
