//! One module per verb (or family of verbs).

pub mod audit;
pub mod bundles;
pub mod client;
pub mod daemon;
pub mod demo;
pub mod health;
pub mod init;
pub mod observe;
pub mod replay;
pub mod secret;
pub mod watch;
