//! The command line: every verb and option, in one place.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tes_proto::command::Scope;
use tes_proto::KeyVersion;

#[derive(Debug, Parser)]
#[command(
    name = "tes",
    version,
    about = "TES key ledger: zero-downtime HMAC-SHA256 signing-key rotation over an append-only, hash-chained event log",
    after_help = "Exit codes: 0 success, 1 a check failed (verification, audit) or a runtime fault, 2 usage or input error."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Data directory; the ledger is DIR/ledger.db.
    #[arg(long, global = true, env = "TES_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Where generated and `tes secret put` keys live: a file (mode 0600;
    /// default DIR/keystore.json), or `os` / `os:NAME` for the OS credential
    /// store (the kernel keyring).
    #[arg(
        long,
        global = true,
        env = "TES_KEY_STORE",
        value_name = "PATH|os[:NAME]"
    )]
    pub key_store: Option<String>,
    /// A NATS server (2.10+). The daemon serves on it; every other verb
    /// (but `demo`, always embedded) becomes a client of a daemon there.
    /// Credentials may be in the URL (nats://user:password@host:4222).
    #[arg(long, global = true, env = "TES_NATS_URL", value_name = "URL")]
    pub nats: Option<String>,
    #[arg(long, global = true, env = "TES_NATS_USER", requires = "nats_password")]
    pub nats_user: Option<String>,
    #[arg(
        long,
        global = true,
        env = "TES_NATS_PASSWORD",
        hide_env_values = true,
        requires = "nats_user"
    )]
    pub nats_password: Option<String>,
    /// Print JSON (one object per line) instead of words.
    #[arg(long, global = true)]
    pub json: bool,
    /// Write logs (stderr) as JSON lines.
    #[arg(long, global = true)]
    pub log_json: bool,
}

impl Global {
    pub fn ledger_path(&self) -> PathBuf {
        self.data_dir.join(tes_ledger::LEDGER_FILE)
    }

    pub fn key_store(&self) -> tes_keyring::KeyStore {
        match &self.key_store {
            Some(spec) => tes_keyring::KeyStore::parse(spec),
            None => {
                tes_keyring::KeyStore::new(self.data_dir.join(tes_keyring::store::DEFAULT_FILE))
            }
        }
    }
}

/// How the actors run: policy and wire options shared by the daemon, the
/// demo and the one-shot verbs.
#[derive(Debug, Clone, Args)]
pub struct RunOptions {
    /// How long the previous version keeps verifying after a rotation.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// Rotate an active version away after this long (e.g. 30d). Default: never.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub key_ttl: Option<Duration>,
    /// Do not add the verifying version's signature during a grace window.
    #[arg(long)]
    pub no_dual_sign: bool,
    /// Save a state snapshot every N events (0: never).
    #[arg(long, default_value_t = 1000)]
    pub snapshot_every: u64,
    /// Wire form of published messages (receivers accept both).
    #[arg(long, value_enum, default_value_t = Wire::Binary)]
    pub wire: Wire,
}

impl RunOptions {
    /// The rotation policy these options describe.
    pub fn policy(&self) -> tes_version_management::core::Policy {
        tes_version_management::core::Policy {
            grace: self.grace,
            key_ttl: self.key_ttl,
            dual_sign: !self.no_dual_sign,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Wire {
    Binary,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Play the whole story on the embedded default (never on NATS): sign,
    /// rotate, sign, verify old and new, roll back, replay, audit.
    Demo(#[command(flatten)] RunOptions),
    /// Run actors until Ctrl-C or SIGTERM: on NATS with --nats, else all of
    /// them on the embedded bus.
    Daemon {
        /// Which actors this process runs: `all`, or a list of
        /// `supervisor`, `version` (several daemons on one NATS server form
        /// the system). Subsets need --nats.
        #[arg(long, default_value = "all", value_parser = parse_actors)]
        actors: ActorSet,
        /// What Version Management is here: the ledger `writer` (one per
        /// ledger), or a `signer` replica (no ledger; follows TES_EVENTS,
        /// signs in the `signers` queue group, records through the writer).
        /// A signer needs --nats.
        #[arg(long, value_enum, default_value_t = Role::Writer)]
        role: Role,
        #[command(flatten)]
        run: RunOptions,
    },
    /// Rotate to the next provisioned key version (through the Supervisor).
    Rotate {
        /// A specific target version.
        #[arg(long)]
        to: Option<KeyVersion>,
        /// Rotate even if a signer lacks the key (recorded as forced).
        #[arg(long)]
        force: bool,
        #[arg(long, default_value = "cli")]
        requested_by: String,
        #[command(flatten)]
        run: RunOptions,
    },
    /// Roll back to the previous version while it still verifies.
    Rollback {
        #[arg(long, default_value = "cli")]
        requested_by: String,
        #[command(flatten)]
        run: RunOptions,
    },
    /// Sign a payload (the exact bytes given; `-` reads stdin).
    Sign {
        payload: String,
        /// Pin a key version (default: the active one).
        #[arg(long)]
        key_version: Option<KeyVersion>,
        #[command(flatten)]
        run: RunOptions,
    },
    /// Verify a signature; exits 1 if it does not verify.
    Verify {
        payload: String,
        signature: String,
        #[arg(long)]
        key_version: KeyVersion,
        #[command(flatten)]
        run: RunOptions,
    },
    /// Bump a versioned entity and get its signed canonical manifest.
    Bump {
        #[arg(value_parser = parse_scope)]
        scope: Scope,
        #[arg(long, default_value = tes_proto::command::DEFAULT_ENTITY)]
        entity: String,
        #[arg(long)]
        key_version: Option<KeyVersion>,
        #[command(flatten)]
        run: RunOptions,
    },
    /// Show key versions, their states, and the ledger head.
    Status(#[command(flatten)] RunOptions),
    /// Rebuild the state from the ledger and print it.
    Replay {
        /// Stop after this seq.
        #[arg(long, conflicts_with = "until")]
        to_seq: Option<u64>,
        /// Stop at the first event after this time (RFC 3339).
        #[arg(long, value_parser = parse_time)]
        until: Option<tes_proto::Timestamp>,
    },
    /// Check the ledger.
    #[command(subcommand)]
    Audit(Audit),
    /// Provision and list key material.
    #[command(subcommand)]
    Secret(Secret),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    Writer,
    Signer,
}

#[derive(Debug, Subcommand)]
pub enum Audit {
    /// Walk the hash chain; exit 0 if sound, 1 naming the first bad seq.
    Verify {
        /// A head seen elsewhere (e.g. a published checkpoint), SEQ:HASH;
        /// catches a truncated or replaced ledger.
        #[arg(long, value_parser = parse_checkpoint)]
        checkpoint: Option<(u64, String)>,
    },
}

#[derive(Debug, Subcommand)]
pub enum Secret {
    /// Store a version's secret, read from stdin:
    /// `openssl rand -hex 32 | tes secret put --version 2`.
    Put {
        #[arg(long)]
        version: KeyVersion,
        /// Overwrite existing material for this version.
        #[arg(long)]
        replace: bool,
    },
    /// List held versions with fingerprints and sources (never values).
    List,
}

/// The actors one process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActorSet {
    pub supervisor: bool,
    pub version: bool,
}

impl ActorSet {
    pub const ALL: ActorSet = ActorSet {
        supervisor: true,
        version: true,
    };

    pub fn names(self) -> Vec<&'static str> {
        [
            (self.supervisor, "Supervisor (0x1001)"),
            (self.version, "Version Management (0x6001)"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

fn parse_actors(s: &str) -> Result<ActorSet, String> {
    if s == "all" {
        return Ok(ActorSet::ALL);
    }
    let mut set = ActorSet {
        supervisor: false,
        version: false,
    };
    for name in s.split(',').map(str::trim) {
        match name {
            "supervisor" | "0x1001" => set.supervisor = true,
            "version" | "0x6001" => set.version = true,
            "monitoring" | "telemetry" | "alert" | "0x5000" | "0x5002" | "0x5003" => {
                return Err(format!("the {name} actor is not built yet (issue 4)"))
            }
            other => {
                return Err(format!(
                    "unknown actor {other:?}: expected all, or supervisor and/or version"
                ))
            }
        }
    }
    Ok(set)
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    s.parse()
}

fn parse_time(s: &str) -> Result<tes_proto::Timestamp, String> {
    tes_proto::Timestamp::parse_rfc3339(s)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))
}

fn parse_checkpoint(s: &str) -> Result<(u64, String), String> {
    let (seq, hash) = s.split_once(':').ok_or("expected SEQ:HASH")?;
    let seq = seq.parse().map_err(|_| format!("{seq:?} is not a seq"))?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("the hash is 64 hex characters".into());
    }
    Ok((seq, hash.to_ascii_lowercase()))
}
