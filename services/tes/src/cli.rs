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
    /// Credentials may be in the URL (nats://user:password@host:4222). A
    /// cluster: its members' URLs, comma-separated.
    #[arg(long, global = true, env = "TES_NATS_URL", value_name = "URL")]
    pub nats: Option<String>,
    /// The NATS user (ops/nats-server.conf has one per actor); its password
    /// comes from --nats-password / TES_NATS_PASSWORD or, for compose
    /// secrets, the file TES_NATS_PASSWORD_FILE names.
    #[arg(long, global = true, env = "TES_NATS_USER")]
    pub nats_user: Option<String>,
    #[arg(
        long,
        global = true,
        env = "TES_NATS_PASSWORD",
        hide_env_values = true,
        requires = "nats_user"
    )]
    pub nats_password: Option<String>,
    #[arg(
        long,
        global = true,
        env = "TES_NATS_PASSWORD_FILE",
        value_name = "FILE",
        conflicts_with = "nats_password",
        requires = "nats_user"
    )]
    pub nats_password_file: Option<PathBuf>,
    /// Print JSON (one object per line) instead of words.
    #[arg(long, global = true)]
    pub json: bool,
    /// Write logs (stderr) as flat JSON lines (also TES_LOG_FORMAT=json).
    #[arg(long, global = true, env = "TES_LOG_JSON")]
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
    #[arg(long, env = "TES_GRACE", default_value = "24h", value_parser = parse_duration)]
    pub grace: Duration,
    /// Rotate an active version away after this long (e.g. 30d). Default: never.
    #[arg(long, env = "TES_KEY_TTL", value_parser = parse_duration)]
    pub key_ttl: Option<Duration>,
    /// Do not add the verifying version's signature during a grace window.
    #[arg(long, env = "TES_NO_DUAL_SIGN")]
    pub no_dual_sign: bool,
    /// Save a state snapshot every N events (0: never).
    #[arg(long, env = "TES_SNAPSHOT_EVERY", default_value_t = 1000)]
    pub snapshot_every: u64,
    /// Wire form of the messages this process publishes: `json` (the
    /// schemas in schemas/; what any NATS client reads), or `binary`
    /// (postcard, smaller) — for the whole deployment, not one process.
    /// Receivers accept both. Without NATS nothing leaves the process and
    /// the in-process bus always carries postcard.
    #[arg(long, env = "TES_WIRE", value_enum, default_value_t = Wire::Json)]
    pub wire: Wire,
    #[command(flatten)]
    pub bundles: BundleOptions,
}

/// The heading of a client verb's own run options: they apply only when no
/// daemon serves the verb and it runs the embedded actors itself.
const WITHOUT_A_DAEMON: &str = "Without a daemon (the embedded actors' policy, wire and bundles)";

impl RunOptions {
    /// Run options from `TES_…` variables and defaults alone (no flags).
    pub fn from_environment() -> RunOptions {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            run: RunOptions,
        }
        Only::try_parse_from(["tes"])
            .map(|o| o.run)
            .unwrap_or_else(|e| e.exit())
    }
}

/// Where signed bundles are kept and how they are archived. S3 credentials
/// come from the environment only (flags show in `ps`):
/// `TES_S3_ACCESS_KEY_ID` (or `AWS_ACCESS_KEY_ID`) and
/// `TES_S3_SECRET_ACCESS_KEY_FILE`, `TES_S3_SECRET_ACCESS_KEY` (or
/// `AWS_SECRET_ACCESS_KEY`).
#[derive(Debug, Clone, Args)]
pub struct BundleOptions {
    /// `fs` (DIR/bundles), `fs:PATH`, `s3://BUCKET` (any S3-compatible
    /// store: AWS, R2, MinIO), or `none` (no bundles).
    #[arg(
        long,
        env = "TES_BUNDLE_STORE",
        default_value = "fs",
        value_name = "STORE"
    )]
    pub bundle_store: String,
    /// The S3 endpoint (R2: https://ACCOUNT.r2.cloudflarestorage.com;
    /// MinIO: http://host:9000). Default: AWS.
    #[arg(long, env = "TES_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// The S3 region (R2: `auto`).
    #[arg(long, env = "TES_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// Storage class of archived bundles on S3-compatible stores.
    #[arg(long, env = "TES_ARCHIVE_CLASS", default_value = tes_bundles::DEFAULT_ARCHIVE_CLASS)]
    pub archive_class: String,
    /// How long a bundle lives before its `expiry` (which forces signing
    /// onto the next version): `DURATION` for every key version, or
    /// `vN=DURATION` for one (repeatable, or comma-separated).
    #[arg(
        long = "bundle-ttl",
        env = "TES_BUNDLE_TTL",
        value_delimiter = ',',
        default_value = "365d",
        value_name = "[vN=]DURATION"
    )]
    pub bundle_ttl: Vec<String>,
    /// Bundles per archive batch (one `archive_batch` event each).
    #[arg(long, env = "TES_ARCHIVE_BATCH", default_value_t = 100)]
    pub archive_batch: usize,
    /// Bundles moved at once in an archive pass.
    #[arg(long, env = "TES_ARCHIVE_CONCURRENCY", default_value_t = 8)]
    pub archive_concurrency: usize,
    /// Do not archive a version on its own when it retires (only `tes archive` does).
    #[arg(long, env = "TES_NO_AUTO_ARCHIVE")]
    pub no_auto_archive: bool,
    /// How often the active version's bundles are listed again for their expiry.
    #[arg(long, env = "TES_EXPIRY_SCAN_EVERY", default_value = "5m", value_parser = parse_duration)]
    pub expiry_scan_every: Duration,
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
    /// Make a data directory ready: generate v1 into the key store (unless
    /// VERSION_SIGNING_KEY is set) and the audit key, create the ledger and
    /// sign its first checkpoint. Safe to run again; the only verb besides
    /// `demo` that generates keys.
    Init(#[command(flatten)] RunOptions),
    /// Play the whole story on the embedded default (never on NATS): sign,
    /// rotate, sign, verify old and new, roll back, replay, audit.
    Demo(#[command(flatten)] RunOptions),
    /// Run actors until Ctrl-C or SIGTERM: on NATS with --nats, else all of
    /// them on the embedded bus.
    Daemon {
        /// Which actors this process runs: `all`, or a list of
        /// `supervisor`, `version`, `monitoring`, `telemetry`, `alert`,
        /// `gateway` (the HTTP edge) (several daemons on one NATS server
        /// form the system). Subsets need --nats.
        #[arg(long, env = "TES_ACTORS", default_value = "all", value_parser = parse_actors)]
        actors: ActorSet,
        /// What Version Management is here: the ledger `writer` (one per
        /// ledger), or a `signer` replica (no ledger; follows TES_EVENTS,
        /// signs in the `signers` queue group, records through the writer).
        /// A signer needs --nats.
        #[arg(long, env = "TES_ROLE", value_enum, default_value_t = Role::Writer)]
        role: Role,
        #[command(flatten)]
        run: RunOptions,
        #[command(flatten)]
        observe: ObserveOptions,
        #[command(flatten)]
        http: HttpOptions,
    },
    /// Rotate to the next provisioned key version (through the Supervisor).
    Rotate {
        /// A specific target version.
        #[arg(long)]
        to: Option<KeyVersion>,
        /// Rotate even if a signer lacks the key (recorded as forced).
        #[arg(long)]
        force: bool,
        /// Who asks (recorded in the ledger).
        #[arg(long, default_value = "cli")]
        requested_by: String,
        #[command(flatten, next_help_heading = WITHOUT_A_DAEMON)]
        run: RunOptions,
    },
    /// Roll back to the previous version while it still verifies.
    Rollback {
        /// Who asks (recorded in the ledger).
        #[arg(long, default_value = "cli")]
        requested_by: String,
        #[command(flatten, next_help_heading = WITHOUT_A_DAEMON)]
        run: RunOptions,
    },
    /// Revoke a key version now (it leaked): from the revocation on it
    /// neither signs nor verifies, on every signer. Revoking the active
    /// version rotates to the next provisioned one in the same transaction;
    /// with none, it is refused unless --force (then nothing signs until a
    /// new version is provisioned and rotated to). Through the Supervisor.
    Revoke {
        /// The version to revoke (v1, v2, …).
        version: KeyVersion,
        /// Why (recorded in the ledger; every refused verification shows it).
        #[arg(long)]
        reason: String,
        /// Revoke the active version even with no version to take over.
        #[arg(long)]
        force: bool,
        /// Who asks (recorded in the ledger).
        #[arg(long, default_value = "cli")]
        requested_by: String,
        #[command(flatten, next_help_heading = WITHOUT_A_DAEMON)]
        run: RunOptions,
    },
    /// Change a verifying version's grace window (its verify-until), on
    /// every signer. Through the Supervisor.
    Grace {
        /// The verifying version (the one before the last rotation).
        version: KeyVersion,
        #[command(flatten)]
        change: GraceArgs,
        /// Who asks (recorded in the ledger).
        #[arg(long, default_value = "cli")]
        requested_by: String,
        #[command(flatten, next_help_heading = WITHOUT_A_DAEMON)]
        run: RunOptions,
    },
    /// Sign a payload (the exact bytes given; `-` reads stdin), or with
    /// `--batch` every payload on stdin.
    Sign {
        /// The exact bytes to sign (`-` reads stdin).
        #[arg(required_unless_present = "batch")]
        payload: Option<String>,
        /// Sign many: one payload per line of stdin (or a JSON array of
        /// strings, or of {"payload", "keyVersion"} objects), sent in
        /// batches of up to 1000; prints one line per payload, in order
        /// (with --json, one JSON object each). Exits 1 if any item failed.
        #[arg(long, conflicts_with = "payload")]
        batch: bool,
        /// Pin a key version, v1, v2, … (default: the active one).
        #[arg(long, value_name = "vN")]
        key_version: Option<KeyVersion>,
        #[command(flatten, next_help_heading = WITHOUT_A_DAEMON)]
        run: RunOptions,
    },
    /// Verify a signature; exits 1 if it does not verify. With `--batch`,
    /// every signature on stdin.
    Verify {
        /// The exact payload that was signed (`-` reads stdin).
        #[arg(required_unless_present = "batch")]
        payload: Option<String>,
        /// The signature: 64 hex characters.
        #[arg(value_parser = parse_signature, required_unless_present = "batch")]
        signature: Option<String>,
        /// Verify many: one JSON object per line of stdin, {"payload",
        /// "signature", "keyVersion"} (what `tes sign --batch --json`
        /// prints), or a JSON array of them; prints one line per item, in
        /// order. Exits 1 if any does not verify.
        #[arg(long, conflicts_with_all = ["payload", "signature"])]
        batch: bool,
        /// The key version that made it (v1, v2, …).
        #[arg(long, value_name = "vN", required_unless_present = "batch")]
        key_version: Option<KeyVersion>,
        #[command(flatten, next_help_heading = WITHOUT_A_DAEMON)]
        run: RunOptions,
    },
    /// Bump a versioned entity and get its signed canonical manifest.
    Bump {
        /// Which part of the semver moves: patch, minor or major.
        #[arg(value_parser = parse_scope, value_name = "patch|minor|major")]
        scope: Scope,
        /// The versioned entity.
        #[arg(long, default_value = tes_proto::command::DEFAULT_ENTITY)]
        entity: String,
        /// Sign the manifest with this key version (default: the active one).
        #[arg(long, value_name = "vN")]
        key_version: Option<KeyVersion>,
        #[command(flatten, next_help_heading = WITHOUT_A_DAEMON)]
        run: RunOptions,
    },
    /// Show key versions, their states, and the ledger head.
    Status,
    /// Exit 0 if the daemon running these actors on this data directory is
    /// ready (its bus connected, its ledger readable), 1 if not: for
    /// container healthchecks.
    Health {
        /// The actors of the daemon to check (as its --actors).
        #[arg(long, env = "TES_ACTORS", default_value = "all", value_parser = parse_actors)]
        actors: ActorSet,
    },
    /// Follow events as they happen, coloured by actor and kind (plain
    /// without a terminal or with NO_COLOR): on NATS every event on the
    /// bus, else the ledger's rows as they are appended.
    Watch {
        /// Only these actors (repeatable): 0x1001, 0x6001, 0x5000, 0x5002, 0x5003.
        #[arg(long = "thread", value_name = "THREAD")]
        threads: Vec<tes_proto::ThreadId>,
        /// Only these kinds (repeatable), e.g. signature_generated, key_rotate, alert.
        #[arg(long = "kind", value_name = "KIND", value_parser = parse_kind)]
        kinds: Vec<&'static str>,
        /// Also heartbeats, checkpoints and metrics snapshots (hidden unless
        /// asked for by --kind).
        #[arg(long)]
        all: bool,
    },
    /// Monitoring's numbers: from the daemon on NATS, else folded from the ledger.
    Metrics {
        #[command(flatten)]
        observe: ObserveOptions,
    },
    /// The open alerts: from the daemon on NATS, else judged from the ledger.
    Alerts {
        /// Every alert and resolution the ledger's history raises, at the
        /// event that raised it (read from the ledger, even with --nats).
        #[arg(long)]
        replay: bool,
        #[command(flatten)]
        observe: ObserveOptions,
    },
    /// Move the bundles of versions that left the verifying set from
    /// bundle/v<N>/ to archive/v<N>/ (infrequent-access class), or preview
    /// it. Through the daemon on NATS, else on the data directory here.
    Archive {
        /// Only this key version (default: every version that no longer verifies).
        #[arg(long = "key-version", visible_alias = "version", value_name = "vN")]
        version: Option<KeyVersion>,
        /// Say what would move; move nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        run: RunOptions,
    },
    /// The bundle store.
    #[command(subcommand)]
    Bundles(Bundles),
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

/// Exactly one change of a grace window.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct GraceArgs {
    /// The new verify-until (RFC 3339, in the future).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<tes_proto::Timestamp>,
    /// Move the verify-until this much later (e.g. 1h, 2d).
    #[arg(long, value_parser = parse_duration)]
    pub extend: Option<Duration>,
    /// End it now: the version retires at once.
    #[arg(long)]
    pub end_now: bool,
}

/// Monitoring, Telemetry and Alert settings.
#[derive(Debug, Clone, Args)]
pub struct ObserveOptions {
    /// The recent window that usage shares and the fallback rate cover.
    #[arg(long, env = "TES_METRICS_WINDOW", default_value = "1h", value_parser = parse_duration)]
    pub metrics_window: Duration,
    /// How often Monitoring publishes a snapshot.
    #[arg(long, env = "TES_METRICS_EVERY", default_value = "1s", value_parser = parse_duration)]
    pub metrics_every: Duration,
    /// Where Telemetry serves Prometheus `/metrics`.
    #[arg(long, env = "TES_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: std::net::SocketAddr,
    /// Telemetry's event log directory (the file is worker-events.log).
    #[arg(long, env = "TES_LOG_DIR", default_value = "./logs")]
    pub log_dir: PathBuf,
    /// Rotate the event log when it would pass this many bytes.
    #[arg(long, env = "TES_LOG_MAX_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub log_max_bytes: u64,
    /// Alert rules (TOML); default: the seed's thresholds.
    #[arg(long, env = "TES_ALERT_RULES", value_name = "FILE")]
    pub alert_rules: Option<PathBuf>,
}

/// The HTTP gateway's settings. The admin credential comes from
/// `TES_ADMIN_TOKEN` or `TES_ADMIN_TOKEN_FILE` (never a flag: flags show in
/// `ps`).
#[derive(Debug, Clone, Args)]
pub struct HttpOptions {
    /// Where the HTTP gateway listens (the seed's port).
    #[arg(long, env = "TES_HTTP_ADDR", default_value = tes_gateway::server::DEFAULT_LISTEN)]
    pub http_addr: std::net::SocketAddr,
    /// Addresses (CIDRs) allowed to rotate and roll back over HTTP, and
    /// trusted as proxies for X-Forwarded-For.
    #[arg(long, env = "TES_PROXY_IPS", default_value = tes_gateway::trust::DEFAULT_TRUSTED)]
    pub proxy_ips: tes_gateway::trust::Trusted,
    /// How long a CSRF token is good for.
    #[arg(long, env = "TES_CSRF_TTL", default_value = "10m", value_parser = parse_duration)]
    pub csrf_ttl: Duration,
    /// Requests per second per client (and twice that as a burst).
    #[arg(long, env = "TES_HTTP_RATE", default_value_t = 20)]
    pub http_rate: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    Writer,
    Signer,
}

#[derive(Debug, Subcommand)]
pub enum Bundles {
    /// List what is where: bundles and archived bundles per key version
    /// (with --all, every object with its expiry).
    Ls {
        /// Every object, not only the counts.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        bundles: BundleOptions,
    },
}

#[derive(Debug, Subcommand)]
pub enum Audit {
    /// Walk the hash chain and the Merkle tree; compare with signed
    /// checkpoints (given, or else every one the witnesses hold); exit 0 if
    /// sound, 1 naming the first bad seq.
    Verify {
        /// A signed checkpoint (a note file), or a head seen elsewhere as
        /// SEQ:HASH. Repeatable. Without one, the witnesses' checkpoints.
        #[arg(long, value_parser = parse_checkpoint, value_name = "FILE|SEQ:HASH")]
        checkpoint: Vec<CheckpointArg>,
        #[command(flatten)]
        witnesses: WitnessOptions,
    },
    /// The audit key's verifier key (signed-note vkey): what an auditor holds.
    Key,
    /// Sign a checkpoint of the ledger's head (after verifying the chain)
    /// and print it: a C2SP tlog-checkpoint in a signed note.
    Checkpoint,
    /// An RFC 6962 inclusion proof of the event at SEQ.
    Prove {
        seq: u64,
        /// Prove against this signed checkpoint (a note file); default: a
        /// fresh checkpoint of the head.
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
    },
}

/// Where signed checkpoints are looked for, and the key that checks them.
#[derive(Debug, Clone, Args)]
pub struct WitnessOptions {
    /// The verifier key (signed-note vkey) checkpoints must be signed by;
    /// default: the audit key of TES_AUDIT_KEY[_FILE] or the key store.
    #[arg(long, env = "TES_AUDIT_VKEY", value_name = "VKEY")]
    pub vkey: Option<String>,
    /// The daemon's log directory (its checkpoints/ witness).
    #[arg(long, env = "TES_LOG_DIR", default_value = "./logs")]
    pub log_dir: PathBuf,
    #[command(flatten)]
    pub bundles: BundleOptions,
}

/// A checkpoint given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointArg {
    /// SEQ:HASH, a head seen elsewhere.
    Head(u64, String),
    /// A signed note in a file.
    Note(PathBuf),
}

#[derive(Debug, Subcommand)]
pub enum Secret {
    /// Store a version's secret, read from stdin:
    /// `openssl rand -hex 32 | tes secret put --key-version v2`.
    Put {
        /// The key version the secret is for (v2, or 2).
        #[arg(long = "key-version", visible_alias = "version", value_name = "vN")]
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
    pub monitoring: bool,
    pub telemetry: bool,
    pub alert: bool,
    pub gateway: bool,
}

impl ActorSet {
    pub const ALL: ActorSet = ActorSet {
        supervisor: true,
        version: true,
        monitoring: true,
        telemetry: true,
        alert: true,
        gateway: true,
    };

    /// What a one-shot verb or the demo needs: no observers, no ports.
    pub const CORE: ActorSet = ActorSet {
        supervisor: true,
        version: true,
        monitoring: false,
        telemetry: false,
        alert: false,
        gateway: false,
    };

    /// Each actor: in this set or not, its `--actors` name, its name for people.
    fn members(self) -> [(bool, &'static str, &'static str); 6] {
        [
            (self.supervisor, "supervisor", "Supervisor (0x1001)"),
            (self.version, "version", "Version Management (0x6001)"),
            (self.monitoring, "monitoring", "Monitoring (0x5000)"),
            (self.telemetry, "telemetry", "Telemetry (0x5002)"),
            (self.alert, "alert", "Alert (0x5003)"),
            (self.gateway, "gateway", "HTTP gateway"),
        ]
    }

    /// The set as `--actors` takes it: `all`, or `supervisor,version,…`.
    pub fn slug(self) -> String {
        if self == ActorSet::ALL {
            return "all".to_string();
        }
        let names: Vec<&str> = self
            .members()
            .into_iter()
            .filter_map(|(on, slug, _)| on.then_some(slug))
            .collect();
        names.join(",")
    }

    pub fn names(self) -> Vec<&'static str> {
        self.members()
            .into_iter()
            .filter_map(|(on, _, name)| on.then_some(name))
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
        monitoring: false,
        telemetry: false,
        alert: false,
        gateway: false,
    };
    for name in s.split(',').map(str::trim) {
        match name {
            "supervisor" | "0x1001" => set.supervisor = true,
            "version" | "0x6001" => set.version = true,
            "monitoring" | "0x5000" => set.monitoring = true,
            "telemetry" | "0x5002" => set.telemetry = true,
            "alert" | "0x5003" => set.alert = true,
            "gateway" | "http" => set.gateway = true,
            other => {
                return Err(format!(
                    "unknown actor {other:?}: expected all, or a list of supervisor, version, monitoring, telemetry, alert, gateway"
                ))
            }
        }
    }
    Ok(set)
}

fn parse_kind(s: &str) -> Result<&'static str, String> {
    tes_proto::event::kind::ALL
        .into_iter()
        .find(|k| *k == s)
        .ok_or_else(|| {
            format!(
                "unknown event kind {s:?}: expected one of {}",
                tes_proto::event::kind::ALL.join(", ")
            )
        })
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    s.parse()
}

/// An RFC 3339 time, or a date alone (midnight UTC).
fn parse_time(s: &str) -> Result<tes_proto::Timestamp, String> {
    let s = s.trim();
    let full = if s.len() == 10 && s.as_bytes().get(4) == Some(&b'-') {
        format!("{s}T00:00:00Z")
    } else {
        s.to_string()
    };
    tes_proto::Timestamp::parse_rfc3339(&full).map_err(|e| {
        format!("{s:?} is not a time: write 2026-12-24 or 2026-12-24T18:00:00Z (RFC 3339) ({e})")
    })
}

/// A duration as people write it.
fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("{s:?} is not a duration: write a duration like 90s, 15m, 24h or 7d ({e})")
    })
}

/// A signature as `tes sign` prints it: 64 hex characters.
fn parse_signature(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "a signature is 64 hex characters (HMAC-SHA256, as `tes sign` prints it); got {} character(s)",
            s.chars().count()
        ));
    }
    Ok(s.to_ascii_lowercase())
}

fn parse_checkpoint(s: &str) -> Result<CheckpointArg, String> {
    let Some((seq, hash)) = s.split_once(':') else {
        return Ok(CheckpointArg::Note(PathBuf::from(s)));
    };
    let Ok(seq) = seq.parse() else {
        return Ok(CheckpointArg::Note(PathBuf::from(s)));
    };
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("SEQ:HASH needs 64 hex characters after the colon".into());
    }
    Ok(CheckpointArg::Head(seq, hash.to_ascii_lowercase()))
}
