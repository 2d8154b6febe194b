//! The actors of this process (any of the five) on one data directory and
//! one bus: the in-process bus (the embedded default: the demo, the one-shot
//! verbs, `tes daemon` without NATS) or a NATS server (`tes daemon --nats`).
//! Also how any verb reaches NATS.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use tes_bus::jetstream::{CheckpointStream, CommandStream, EventStream};
use tes_bus::typed::{self, CallError};
use tes_bus::{Bus, InProcessBus, NatsBus, NatsConfig};
use tes_keyring::{KeyStore, Keyring};
use tes_proto::command::Status;
use tes_proto::reply::StatusReply;
use tes_proto::{CommandBody, ContentType, Fingerprint, KeyVersion, ThreadId};
use tes_supervisor::actor::SupervisorConfig;
use tes_version_management::actor::{self, ActorConfig, Running};
use tes_version_management::catch_up;
use tes_version_management::engine::system_clock;
use tes_version_management::replica::{self, Replica, ReplicaConfig};
use tes_version_management::{Engine, EngineConfig, Request};
use tokio::task::JoinHandle;

use crate::cli::{
    ActorSet, BundleOptions, Global, HttpOptions, ObserveOptions, Role, RunOptions, Wire,
};
use crate::failure::{Failure, Result};
use tes_alert::actor::AlertConfig;
use tes_alert::Rules;
use tes_bundles::{S3Config, StoreConfig};
use tes_gateway::csrf::Csrf;
use tes_gateway::GatewayConfig;
use tes_keyring::Secret;
use tes_monitoring::actor::MonitoringConfig;
use tes_monitoring::feed::{self, Source};
use tes_telemetry::actor::{Telemetry, TelemetryConfig};

/// Whether starting Version Management may generate keys: only `tes init`
/// and `tes demo` do; everything else refuses and says to run `tes init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    Given,
    Generate,
}

/// What the actors talk over.
pub enum Transport {
    /// The in-process bus: every actor in this process.
    Embedded,
    /// A NATS server: also JetStream (the KV rotation signal).
    Nats(NatsBus),
}

pub struct Actors {
    bus: Arc<dyn Bus>,
    version: Option<VersionActor>,
    /// Version Management as a signer replica (`--role signer`).
    replica: Option<Replica>,
    /// The Supervisor's tasks: its command subscription and, on NATS, the
    /// KV signal watch.
    supervisor: Vec<JoinHandle<()>>,
    /// Monitoring and Alert.
    observers: Vec<JoinHandle<()>>,
    telemetry: Option<tes_telemetry::actor::Telemetry>,
    gateway: Option<tes_gateway::Gateway>,
    /// The NATS connection, when there is one (the gateway's CSRF store).
    nats: Option<NatsBus>,
    key_store: KeyStore,
    wire: ContentType,
    pub ledger_path: PathBuf,
}

/// Version Management and what it was started with.
struct VersionActor {
    running: Running,
    /// The writer lease's keeper (on NATS): renews it, gives it up at stop.
    lease: Option<LeaseKeeper>,
    /// Its bundle worker (none with `--bundle-store none`).
    bundles: Option<tes_bundles::Worker>,
    /// How long the worker may take at stop to write what is committed: a
    /// daemon waits longer than a one-shot verb (the rest is written at the
    /// next start either way).
    flush: std::time::Duration,
    env: Vec<(String, String)>,
    /// The versions (and fingerprints) it was last given.
    held: BTreeMap<KeyVersion, Fingerprint>,
}

/// [`nats`] for a daemon: a server that does not answer yet (a cluster
/// restarting, a compose stack starting in another order) is tried again
/// for up to `wait`; a refused password is not.
pub async fn nats_waiting(
    global: &Global,
    name: &str,
    wait: std::time::Duration,
) -> Result<Option<NatsBus>> {
    let deadline = std::time::Instant::now() + wait;
    let unreachable = |f: &Failure| {
        f.exit == crate::failure::Exit::CheckFailed && !f.to_string().contains("uthorization")
    };
    let bus = retrying(
        "NATS does not answer yet",
        wait,
        std::time::Duration::from_secs(1),
        unreachable,
        || nats(global, name),
    )
    .await?;
    // A cluster (re)starting takes clients before JetStream has a leader;
    // the streams are made or opened right after this, so wait for it too.
    if let Some(bus) = &bus {
        let client = bus.client();
        if client.server_info().jetstream {
            while std::time::Instant::now() < deadline {
                let request = async_nats::Request::new()
                    .payload(Vec::new().into())
                    .timeout(Some(std::time::Duration::from_secs(2)));
                let ready = client
                    .send_request("$JS.API.INFO", request)
                    .await
                    .ok()
                    .and_then(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).ok())
                    .is_some_and(|v| v.get("error").is_none());
                if ready {
                    break;
                }
                tracing::warn!(
                    "JetStream does not answer yet (a cluster electing its leader?); waiting"
                );
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
    Ok(bus)
}

/// Runs `step` again (every `every`) while it fails in a way `transient`
/// accepts, for up to `wait`; says each failure as `what`. One mechanism for
/// everything a starting writer asks a cluster that may still be electing
/// leaders (streams, the lease).
async fn retrying<T, E, F, Fut>(
    what: &str,
    wait: std::time::Duration,
    every: std::time::Duration,
    transient: impl Fn(&E) -> bool,
    mut step: F,
) -> std::result::Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, E>>,
{
    let deadline = std::time::Instant::now() + wait;
    loop {
        match step().await {
            Err(e) if transient(&e) && std::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "{what}; trying again");
                tokio::time::sleep(every).await;
            }
            other => return other,
        }
    }
}

/// Runs a JetStream setup step (making or opening a stream), tried again
/// for up to a minute while the answer says the cluster is not ready (a
/// time-out, "temporarily unavailable", no responders): a cluster that
/// restarts elects a leader for each stream after it takes clients.
async fn while_starting<T, E, F, Fut>(step: F) -> Result<T>
where
    E: std::fmt::Display + Into<anyhow::Error>,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, E>>,
{
    retrying_jetstream(step).await.map_err(Failure::check)
}

/// What JetStream answers while a cluster elects a leader (or before it
/// has one): worth asking again.
fn not_ready_yet(error: &impl std::fmt::Display) -> bool {
    let text = error.to_string();
    [
        "timed out",
        "temporarily unavailable",
        "no responders",
        "503",
    ]
    .iter()
    .any(|t| text.contains(t))
}

/// `step` tried again, once a second for up to a minute, while JetStream
/// is [`not_ready_yet`]; its own error type kept.
async fn retrying_jetstream<T, E, F, Fut>(step: F) -> std::result::Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, E>>,
{
    let second = std::time::Duration::from_secs(1);
    retrying(
        "JetStream is not ready yet",
        60 * second,
        second,
        not_ready_yet,
        step,
    )
    .await
}

/// Connects to the NATS server of `--nats`, if one was given.
pub async fn nats(global: &Global, name: &str) -> Result<Option<NatsBus>> {
    let Some(url) = &global.nats else {
        return Ok(None);
    };
    let password = match (&global.nats_password, &global.nats_password_file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file).map_err(|e| {
                Failure::input(anyhow::anyhow!(
                    "cannot read TES_NATS_PASSWORD_FILE {}: {e}",
                    file.display()
                ))
            })?;
            Some(text.trim_end_matches(['\n', '\r']).to_string())
        }
        (None, None) => None,
    };
    if global.nats_user.is_some() && password.is_none() {
        return Err(Failure::input(anyhow::anyhow!(
            "--nats-user needs a password: --nats-password, TES_NATS_PASSWORD or TES_NATS_PASSWORD_FILE"
        )));
    }
    let config = NatsConfig {
        url: url.clone(),
        user: global.nats_user.clone(),
        password,
        name: name.to_string(),
    };
    NatsBus::connect(&config)
        .await
        .map(Some)
        .map_err(Failure::check)
}

/// The process environment, read once: key secrets come from here.
pub fn environment() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

pub fn wire(w: Wire) -> ContentType {
    match w {
        Wire::Binary => ContentType::Binary,
        Wire::Json => ContentType::Json,
    }
}

impl Actors {
    /// Supervisor and Version Management in this process, on the
    /// in-process bus: the embedded default of the demo and the one-shot
    /// verbs (the observers belong to the daemon: they serve a port and
    /// write a log).
    pub async fn embedded(global: &Global, run: &RunOptions) -> Result<Actors> {
        Actors::embedded_with(global, run, Keys::Given).await
    }

    /// The same for `tes demo`, which may generate v1 and the audit key.
    pub async fn embedded_generating(global: &Global, run: &RunOptions) -> Result<Actors> {
        Actors::embedded_with(global, run, Keys::Generate).await
    }

    async fn embedded_with(global: &Global, run: &RunOptions, keys: Keys) -> Result<Actors> {
        let (transport, which) = (Transport::Embedded, ActorSet::CORE);
        Actors::start_with(global, run, None, transport, which, Role::Writer, keys).await
    }

    /// Starts the actors of `which` on `transport`. Version Management opens
    /// the ledger (taking the writer lock) and loads the keys; the Supervisor
    /// needs neither, and on NATS also watches the KV rotation signal.
    pub async fn start(
        global: &Global,
        run: &RunOptions,
        observe: Option<&ObserveOptions>,
        transport: Transport,
        which: ActorSet,
        role: Role,
    ) -> Result<Actors> {
        Actors::start_with(global, run, observe, transport, which, role, Keys::Given).await
    }

    async fn start_with(
        global: &Global,
        run: &RunOptions,
        observe: Option<&ObserveOptions>,
        transport: Transport,
        which: ActorSet,
        role: Role,
        keys: Keys,
    ) -> Result<Actors> {
        // `--wire` is the form others read on NATS. On the in-process bus
        // no message leaves this process (a control-socket client or the
        // console decodes either form), so it is always postcard: the
        // gateway's hop to Version Management then costs no JSON.
        let wire = match &transport {
            Transport::Embedded => ContentType::Binary,
            Transport::Nats(_) => wire(run.wire),
        };
        let key_store = global.key_store();
        let bus: Arc<dyn Bus> = match &transport {
            Transport::Embedded => Arc::new(InProcessBus::new()),
            Transport::Nats(nats) => Arc::new(nats.clone()),
        };
        let (mut version, mut replica) = (None, None);
        match (which.version, role, &transport) {
            (false, _, _) => {}
            (true, Role::Writer, _) => {
                let (event_stream, checkpoint_stream) = match &transport {
                    Transport::Embedded => (None, None),
                    Transport::Nats(nats) => (
                        Some(while_starting(|| EventStream::ensure(nats.client().clone())).await?),
                        Some(
                            while_starting(|| CheckpointStream::ensure(nats.client().clone()))
                                .await?,
                        ),
                    ),
                };
                // On a cluster (a stream with more than one copy) a reply
                // waits until the stream's quorum stores its events too, so
                // a standby that takes over has every acknowledged one.
                let ack_after_stream = match &transport {
                    Transport::Nats(nats) => tes_bus::jetstream::replicas(nats.client()) > 1,
                    Transport::Embedded => false,
                };
                // On a cluster the replicated, fenced ledger (TES_LEDGER):
                // an append another writer got to first stops this one.
                let (ledger_stream, on_fenced) = match &transport {
                    Transport::Nats(nats) if ack_after_stream => (
                        Some(
                            while_starting(|| {
                                tes_bus::ledger_stream::LedgerStream::ensure(nats.client().clone())
                            })
                            .await?,
                        ),
                        Some(actor::StepDown(Arc::new(|reason: &str| {
                            tracing::error!(%reason, "stopping at once: this writer was fenced off the replicated ledger");
                            stop_at_once();
                        }))),
                    ),
                    _ => (None, None),
                };
                let config = ActorConfig {
                    wire,
                    event_stream,
                    checkpoint_stream,
                    ack_after_stream,
                    ledger_stream,
                    on_fenced,
                    ..ActorConfig::default()
                };
                // Archiving on its own belongs to the daemon; a one-shot
                // verb's actors live for one command.
                let auto_archive = observe.is_some() && !run.bundles.no_auto_archive;
                let log_dir = observe.map(|o| o.log_dir.clone());
                let nats = match &transport {
                    Transport::Nats(n) => Some(n.client().clone()),
                    Transport::Embedded => None,
                };
                version = Some(
                    start_version(
                        global,
                        run,
                        bus.clone(),
                        &key_store,
                        config,
                        auto_archive,
                        keys,
                        log_dir,
                        nats,
                    )
                    .await?,
                );
            }
            (true, Role::Signer, Transport::Nats(nats)) => {
                replica = Some(start_replica(run, nats, bus.clone(), &key_store, wire).await?);
            }
            (true, Role::Signer, Transport::Embedded) => {
                return Err(Failure::input(anyhow::anyhow!(
                    "a signer replica needs NATS (--nats)"
                )));
            }
        }
        let mut supervisor = Vec::new();
        if which.supervisor {
            let durable = matches!(transport, Transport::Nats(_));
            let config = SupervisorConfig {
                wire,
                durable,
                ..SupervisorConfig::default()
            };
            supervisor.push(
                tes_supervisor::actor::start(bus.clone(), config.clone())
                    .await
                    .context("starting the Supervisor (0x1001)")?,
            );
            if let Transport::Nats(nats) = &transport {
                let with = |what: &'static str| {
                    move |f: Failure| Failure {
                        error: f.error.context(what),
                        ..f
                    }
                };
                supervisor.push(
                    while_starting(|| {
                        tes_supervisor::durable::start(
                            nats.client().clone(),
                            bus.clone(),
                            config.clone(),
                        )
                    })
                    .await
                    .map_err(with("reading the durable commands"))?,
                );
                supervisor.push(
                    while_starting(|| {
                        tes_supervisor::kv_signal::start(
                            nats.client().clone(),
                            bus.clone(),
                            config.clone(),
                        )
                    })
                    .await
                    .map_err(with("watching the KV rotation signal"))?,
                );
            }
        }
        let (observers, telemetry) = match observe {
            Some(o) => start_observers(global, o, wire, &bus, &transport, which).await?,
            None => (Vec::new(), None),
        };
        Ok(Actors {
            bus,
            version,
            replica,
            supervisor,
            observers,
            telemetry,
            gateway: None,
            nats: match &transport {
                Transport::Nats(n) => Some(n.clone()),
                Transport::Embedded => None,
            },
            key_store,
            wire,
            ledger_path: global.ledger_path(),
        })
    }

    /// The HTTP gateway, on this process's bus; its CSRF tokens in NATS KV
    /// on NATS, else in a file beside the ledger.
    pub async fn start_gateway(
        &mut self,
        global: &Global,
        http: &HttpOptions,
        admin_token: Option<Arc<Secret>>,
    ) -> Result<()> {
        let csrf = match &self.nats {
            Some(nats) => Csrf::on_nats(nats.client().clone(), http.csrf_ttl)
                .await
                .map_err(Failure::check)?,
            None => Csrf::in_file(&global.data_dir, http.csrf_ttl).map_err(Failure::input)?,
        };
        let rate = std::num::NonZeroU32::new(http.http_rate.max(1)).expect("at least 1");
        let mut config = GatewayConfig::new(http.http_addr);
        config.trusted = http.proxy_ips.clone();
        config.admin_token = admin_token;
        config.rate = rate;
        config.burst = rate.saturating_mul(std::num::NonZeroU32::new(2).expect("2"));
        config.wire = self.wire;
        match &self.nats {
            Some(nats) => {
                let client = nats.client().clone();
                config.transport = "nats";
                config.durable = Some((CommandStream::sender(client.clone()), nats.clone()));
                config.connected = Arc::new(move || {
                    client.connection_state() == async_nats::connection::State::Connected
                });
            }
            None => config.transport = "embedded",
        }
        self.gateway = Some(
            tes_gateway::start(self.bus.clone(), csrf, config)
                .await
                .map_err(Failure::input)?,
        );
        Ok(())
    }

    /// The bus these actors are on (to watch their events).
    pub fn bus(&self) -> Arc<dyn Bus> {
        self.bus.clone()
    }

    pub fn key_store(&self) -> &KeyStore {
        &self.key_store
    }

    /// Sends a command to an actor over the bus, as any client would.
    pub async fn call<C: CommandBody>(
        &self,
        thread: ThreadId,
        body: C,
    ) -> Result<C::Reply, CallError> {
        let envelope = typed::command(thread, body);
        typed::call::<C>(
            &*self.bus,
            thread,
            self.wire,
            &envelope,
            typed::DEFAULT_TIMEOUT,
        )
        .await
    }

    pub async fn status(&self) -> Result<StatusReply> {
        self.call(ThreadId::VersionManagement, Status::default())
            .await
            .map_err(crate::failure::from_call)
    }

    /// Reloads the keyring (environment + key store) and, if the versions or
    /// their material changed, hands it to Version Management, which records
    /// newly provisioned versions. Returns whether anything changed (always
    /// false where Version Management does not run).
    pub async fn rekey(&mut self) -> Result<bool> {
        let Some(version) = &mut self.version else {
            return Ok(false);
        };
        let keyring =
            Keyring::load(version.env.clone(), &self.key_store, false).map_err(Failure::input)?;
        if keyring.held() == version.held {
            return Ok(false);
        }
        version.held = keyring.held();
        version
            .running
            .handle()
            .call(Request::Rekey(keyring))
            .await
            .map_err(|e| Failure::check(anyhow::anyhow!(e.message)))?;
        Ok(true)
    }

    /// Stops the actors, letting work in flight finish; releases the ledger.
    pub async fn stop(self) {
        if let Some(gateway) = self.gateway {
            gateway.stop().await;
        }
        for task in self.observers {
            task.abort();
            let _ = task.await;
        }
        if let Some(telemetry) = self.telemetry {
            telemetry.stop().await;
        }
        for task in self.supervisor {
            task.abort();
            let _ = task.await;
        }
        if let Some(replica) = self.replica {
            replica.stop().await;
        }
        if let Some(version) = self.version {
            // The worker first: it writes the bundles of what was committed.
            if let Some(worker) = version.bundles {
                worker.stop(version.flush).await;
            }
            drop(version.running.stop().await);
            if let Some(lease) = version.lease {
                lease.release().await;
            }
        }
    }
}

/// The admin credential of the HTTP gateway: `TES_ADMIN_TOKEN`, or the
/// file `TES_ADMIN_TOKEN_FILE` names. Never logged; compared in constant time.
pub fn admin_token() -> Result<Option<Arc<Secret>>> {
    let value = std::env::var_os("TES_ADMIN_TOKEN");
    let file = std::env::var_os("TES_ADMIN_TOKEN_FILE");
    let (name, bytes) = match (value, file) {
        (Some(_), Some(_)) => {
            return Err(Failure::input(anyhow::anyhow!(
                "both TES_ADMIN_TOKEN and TES_ADMIN_TOKEN_FILE are set: set one"
            )))
        }
        (None, None) => return Ok(None),
        (Some(v), None) => ("TES_ADMIN_TOKEN".to_string(), v.into_encoded_bytes()),
        (None, Some(path)) => {
            let bytes = std::fs::read(&path).map_err(|e| {
                Failure::input(anyhow::anyhow!(
                    "TES_ADMIN_TOKEN_FILE: cannot read {}: {e}",
                    std::path::Path::new(&path).display()
                ))
            })?;
            ("TES_ADMIN_TOKEN_FILE".to_string(), bytes)
        }
    };
    Secret::from_text(&name, bytes)
        .map(|s| Some(Arc::new(s)))
        .map_err(Failure::input)
}

/// Where the observers read the ledger's events: the ledger file on the
/// embedded bus, `TES_EVENTS` on NATS (they may run on another host).
async fn feed_source(global: &Global, transport: &Transport) -> Result<Source> {
    Ok(match transport {
        Transport::Embedded => Source::Ledger(global.ledger_path()),
        Transport::Nats(nats) => Source::Stream(Box::new(
            EventStream::ensure(nats.client().clone())
                .await
                .map_err(Failure::check)?,
        )),
    })
}

/// The alert rules: the file's, refused at start-up if it has a mistake.
pub fn alert_rules(observe: &ObserveOptions) -> Result<Rules> {
    match &observe.alert_rules {
        Some(path) => Rules::load(path).map_err(Failure::input),
        None => Ok(Rules::default()),
    }
}

/// The ledger's events of `threads`, from the start.
async fn ledger_feed(
    source: &Source,
    threads: &[ThreadId],
) -> Result<tokio::sync::mpsc::Receiver<feed::Item>> {
    feed::start(source.clone(), threads, 0)
        .await
        .map_err(Failure::check)
}

/// Monitoring (0x5000), Alert (0x5003) and Telemetry (0x5002), as `which` says.
async fn start_observers(
    global: &Global,
    observe: &ObserveOptions,
    wire: ContentType,
    bus: &Arc<dyn Bus>,
    transport: &Transport,
    which: ActorSet,
) -> Result<(Vec<JoinHandle<()>>, Option<Telemetry>)> {
    let mut tasks = Vec::new();
    if !(which.monitoring || which.alert || which.telemetry) {
        return Ok((tasks, None));
    }
    let source = feed_source(global, transport).await?;
    if which.monitoring {
        let feed = ledger_feed(&source, &tes_monitoring::actor::FOLLOWS).await?;
        let config = MonitoringConfig {
            wire,
            window: observe.metrics_window,
            publish_every: observe.metrics_every,
            clock: tes_proto::envelope::system_clock(),
        };
        tasks.push(
            tes_monitoring::actor::start(bus.clone(), feed, config)
                .await
                .context("starting Monitoring (0x5000)")?,
        );
    }
    if which.alert {
        let rules = alert_rules(observe)?;
        let feed = ledger_feed(&source, &tes_alert::actor::FOLLOWS).await?;
        let config = AlertConfig {
            wire,
            rules,
            ..AlertConfig::default()
        };
        tasks.push(
            tes_alert::actor::start(bus.clone(), feed, config)
                .await
                .context("starting Alert (0x5003)")?,
        );
    }
    let telemetry = if which.telemetry {
        let config = TelemetryConfig {
            listen: observe.metrics_addr,
            log_dir: observe.log_dir.clone(),
            log_max_bytes: observe.log_max_bytes,
            ..TelemetryConfig::default()
        };
        Some(
            tes_telemetry::actor::start(bus.clone(), source, config)
                .await
                .map_err(Failure::input)?,
        )
    } else {
        None
    };
    Ok((tasks, telemetry))
}

/// A signer replica: its own keys (never generated: a replica must hold the
/// versions the writer has), the writer's events from TES_EVENTS.
async fn start_replica(
    run: &RunOptions,
    nats: &NatsBus,
    bus: Arc<dyn Bus>,
    key_store: &KeyStore,
    wire: ContentType,
) -> Result<Replica> {
    let keyring = Keyring::load(environment(), key_store, false).map_err(Failure::input)?;
    if keyring.is_empty() {
        return Err(Failure::input(anyhow::anyhow!(
            "a signer replica needs key material: set VERSION_SIGNING_KEY (and _V2, …) as on the writer"
        )));
    }
    // A replica started with its cluster waits, like a writer, while
    // JetStream elects the stream's leader (it exited on a 503).
    let stream = while_starting(|| EventStream::ensure(nats.client().clone())).await?;
    let config = ReplicaConfig {
        name: format!("signer-{}", std::process::id()),
        wire,
        policy: run.policy(),
        timeout: typed::DEFAULT_TIMEOUT,
    };
    retrying_jetstream(|| {
        replica::start(stream.clone(), bus.clone(), keyring.clone(), config.clone())
    })
    .await
    .context("starting the signer replica")
    .map_err(Failure::check)
}

#[allow(clippy::too_many_arguments)]
async fn start_version(
    global: &Global,
    run: &RunOptions,
    bus: Arc<dyn Bus>,
    key_store: &KeyStore,
    mut actor_config: ActorConfig,
    auto_archive: bool,
    keys: Keys,
    log_dir: Option<PathBuf>,
    nats: Option<async_nats::Client>,
) -> Result<VersionActor> {
    let store_config = bundle_store(global, &run.bundles)?;
    let worker_config = worker_config(global, &run.bundles, auto_archive)?;
    let archiver = actor_config.archiver.clone();
    let env = environment();
    let fresh = !global.ledger_path().exists();
    let configured = configured_audit_key(&env, key_store)?;
    // On NATS, one writer per deployment: the lease before anything is
    // written. A ledger that is behind TES_EVENTS (restored from a backup)
    // first takes back what the stream holds past its head, before the
    // engine decides anything (a new key's provisioning, say) on top of it.
    let mut lease = None;
    let mut fresh = fresh;
    if let (Some(client), Some(stream)) = (&nats, &actor_config.event_stream) {
        let path = global.ledger_path();
        let holder = lease_holder(&path);
        let live = lease_now(client).await?;
        // Another writer holds the lease: stand by. On a cluster every
        // writer follows the replicated ledger (TES_LEDGER) into its file
        // before it writes, even one restarted on its own lease.
        let other = live.filter(|v| v.holder != holder);
        if other.is_some() || actor_config.ledger_stream.is_some() {
            if keys != Keys::Generate
                && Keyring::load(env.clone(), key_store, false)
                    .map_err(Failure::input)?
                    .is_empty()
            {
                return Err(Failure::input(anyhow::anyhow!(
                    "a standby writer needs the writer's key material to take over: set VERSION_SIGNING_KEY (and _V2, …) as on the writer"
                )));
            }
            match &other {
                Some(other) => {
                    tracing::info!(writer = %other.holder, ledger = %path.display(), "another writer holds the writer lease: standing by, following the stream into this ledger")
                }
                None => {
                    tracing::info!(ledger = %path.display(), "on a cluster: following TES_LEDGER into this ledger before writing")
                }
            }
            let ledger_stream = actor_config.ledger_stream.as_ref();
            let (ledger, keeper) = stand_by(client, stream, ledger_stream, &path, &holder).await?;
            fresh = ledger.head().seq == 0;
            lease = Some(keeper);
        }
    }
    if let (Some(client), Some(stream), false, None) =
        (&nats, &actor_config.event_stream, fresh, &lease)
    {
        let path = global.ledger_path();
        let mut ledger = tes_ledger::Ledger::open_writer(&path)
            .map_err(Failure::input)
            .map_err(|f| Failure {
                error: f.error.context("cannot open Version Management"),
                ..f
            })?;
        lease = Some(hold_lease(client.clone(), &ledger, &path).await?);
        let taken = catch_up::from_stream(&mut ledger, stream, actor::OUTBOX)
            .await
            .map_err(Failure::check)?;
        if taken > 0 {
            tracing::warn!(
                taken,
                head = ledger.head().seq,
                "the ledger was behind TES_EVENTS (restored from a backup?): took back the events the stream held past its head"
            );
        }
    }
    // The ledger first: a file that is not one is refused before anything
    // (the bundle store's directory included) is made beside it.
    let (engine, held) = open_engine(global, run, key_store, &env, keys, None)?;
    // Every event it publishes names its ledger.
    if let Some(identity) = engine.ledger().identity().map_err(Failure::check)? {
        actor_config.event_stream = actor_config
            .event_stream
            .map(|s| s.for_ledger(tes_ledger::chain::to_hex(&identity)));
    }
    if let (None, Some(client)) = (&lease, nats) {
        lease = Some(hold_lease(client, engine.ledger(), &global.ledger_path()).await?);
    }
    let store = match store_config {
        Some(config) => Some(tes_bundles::Store::new(&config).map_err(Failure::input)?),
        None => None,
    };
    let mut witnesses: Vec<Arc<dyn tes_audit::Witness>> = Vec::new();
    if let Some(store) = &store {
        witnesses.push(Arc::new(store.clone()));
    }
    if let Some(dir) = log_dir {
        witnesses.push(Arc::new(tes_audit::DirWitness::new(&dir)));
    }
    let may_generate = keys == Keys::Generate || fresh;
    actor_config.auditor = audit_key(configured, key_store, engine.ledger(), may_generate)?
        .map(|key| actor::Auditor { key, witnesses });
    if actor_config.auditor.is_none() {
        tracing::warn!("no audit key: checkpoints of this ledger are not signed; run `tes init` once (it adds one to an older ledger) or set TES_AUDIT_KEY_FILE");
    }
    // On a cluster a writer that cannot write its ledger hands over.
    if let (Some(keeper), true) = (&lease, actor_config.ack_after_stream) {
        actor_config.may_append = Some(keeper.may_append.clone());
        let tx = keeper.step_down.clone();
        let watchdog = std::sync::Once::new();
        actor_config.on_storage_failure = Some(actor::StepDown(Arc::new(move |reason| {
            let _ = tx.send(reason.to_string());
            // The lease task gives the lease up and ends the process; if
            // the runtime cannot get to it (a stepping-down writer was
            // seen never to end), the process ends anyway and the lease
            // lapses on its own.
            watchdog.call_once(|| {
                std::thread::spawn(|| {
                    std::thread::sleep(STEP_DOWN_WITHIN);
                    tracing::error!("the writer lease could not be given up within {STEP_DOWN_WITHIN:?}; stopping anyway (it lapses on its own)");
                    stop_at_once();
                });
            });
        })));
    }
    let running = actor::start(engine, bus, actor_config)
        .await
        .context("starting Version Management (0x6001)")?;
    let bundles = match store {
        Some(store) => {
            // A store that does not answer is reported, not fatal (and not
            // waited for): signing goes on, the worker writes the bundles
            // when it is back.
            let probe = store.clone();
            tokio::spawn(async move {
                if let Err(error) = probe.check().await {
                    tracing::error!(%error, "bundles will wait until the store answers; signing goes on");
                }
            });
            let worker =
                tes_bundles::Worker::start(store, running.handle(), worker_config, system_clock())
                    .map_err(Failure::input)?;
            let _ = archiver.set(Arc::new(worker.handle()));
            Some(worker)
        }
        None => None,
    };
    Ok(VersionActor {
        running,
        lease,
        bundles,
        flush: std::time::Duration::from_secs(if auto_archive { 10 } else { 3 }),
        env,
        held,
    })
}

/// Opens the ledger writer with the keys of the environment and the key
/// store. Generates v1 only with [`Keys::Generate`] (`tes init`, `tes demo`);
/// otherwise no keys at all is an input error that says to run `tes init`.
pub fn open_engine(
    global: &Global,
    run: &RunOptions,
    key_store: &KeyStore,
    env: &[(String, String)],
    keys: Keys,
    replace: Option<KeyVersion>,
) -> Result<(Engine, BTreeMap<KeyVersion, Fingerprint>)> {
    let keyring =
        Keyring::load(env.to_vec(), key_store, keys == Keys::Generate).map_err(Failure::input)?;
    let held = keyring.held();
    let config = EngineConfig {
        ledger_path: global.ledger_path(),
        policy: run.policy(),
        snapshot_every: run.snapshot_every,
        replace,
    };
    let engine = Engine::open(config, keyring, system_clock())
        .map_err(Failure::input)
        .map_err(|f| Failure {
            error: f.error.context("cannot open Version Management"),
            ..f
        })?;
    Ok((engine, held))
}

/// Renews the writer lease in the background; at stop, gives it up.
pub struct LeaseKeeper {
    stop: tokio::sync::oneshot::Sender<()>,
    task: JoinHandle<()>,
    /// Gives the lease up at once and ends the process (the reason logged).
    step_down: tokio::sync::mpsc::UnboundedSender<String>,
    /// True while the lease is renewed recently enough that this writer
    /// may append to the replicated ledger (see [`keep_lease`]).
    may_append: tokio::sync::watch::Receiver<bool>,
}

impl LeaseKeeper {
    async fn release(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Takes the writer lease for this ledger (refused, naming the holder, when
/// another writer has it) and keeps it. A renewal refused because another
/// writer took it ends this process at once: it must not write on.
async fn hold_lease(
    client: async_nats::Client,
    ledger: &tes_ledger::Ledger,
    path: &std::path::Path,
) -> Result<LeaseKeeper> {
    use tes_bus::lease::{Lease, LeaseError};
    let identity = ledger
        .identity()
        .map_err(Failure::check)?
        .map(|h| tes_ledger::chain::to_hex(&h))
        .unwrap_or_default();
    let holder = lease_holder(path);
    let fence = tes_bus::jetstream::replicas(&client) > 1;
    // A cluster just started may not answer for the bucket yet: retried.
    let lease = retrying(
        "the writer lease cannot be taken yet",
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(500),
        |e| matches!(e, LeaseError::Nats(_)),
        || Lease::acquire(client.clone(), &identity, &holder),
    )
    .await
    .map_err(|e| match e {
        LeaseError::Held { .. } => Failure::input(e),
        other => Failure::check(other),
    })?;
    Ok(keep_lease(lease, fence))
}

/// The writer lease as it stands. Retried for a while: on a cluster that
/// has just started, the bucket's stream may have no leader yet ("no
/// responders") for a few seconds.
async fn lease_now(client: &async_nats::Client) -> Result<Option<tes_bus::lease::LeaseValue>> {
    retrying(
        "the writer lease cannot be read yet",
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(500),
        |_| true,
        || tes_bus::lease::Lease::live(client.clone()),
    )
    .await
    .map_err(Failure::check)
}

/// Follows the ledger's stream into the file at `path` until this writer
/// takes the lease: `TES_LEDGER` on a cluster (from the first seq this
/// file has not matched against it yet), else `TES_EVENTS`. On a cluster,
/// a file whose rows go another way than the stream's from seq 2 on (this
/// writer's tail that never reached it, never acknowledged) is set aside
/// and the following starts again from an empty one.
async fn stand_by(
    client: &async_nats::Client,
    stream: &EventStream,
    ledger_stream: Option<&tes_bus::ledger_stream::LedgerStream>,
    path: &std::path::Path,
    holder: &str,
) -> Result<(tes_ledger::Ledger, LeaseKeeper)> {
    use tes_version_management::standby::{follow_until_leader, StandbyError};
    loop {
        let ledger = tes_ledger::Ledger::open_writer(path).map_err(Failure::input)?;
        // Rows up to the cursor of TES_LEDGER are known to be its own.
        let matched = match ledger_stream {
            Some(_) => tes_ledger::Outbox::open(path, actor::LEDGER_OUTBOX)
                .and_then(|o| o.cursor())
                .map_err(Failure::check)?,
            None => 0,
        };
        let (events, cursor) = match ledger_stream {
            Some(ledger_stream) => {
                // Asked again while a restarting cluster elects the
                // stream's leader (a standby that starts with its cluster
                // would otherwise exit on a 503).
                let events = while_starting(|| ledger_stream.follow_from(matched + 1)).await?;
                (events, actor::LEDGER_OUTBOX)
            }
            None => {
                let registered = stream.registered_ledger().await;
                let events = while_starting(|| {
                    stream.follow_ledger(
                        &[ThreadId::VersionManagement, ThreadId::Alert],
                        registered.clone(),
                    )
                })
                .await?;
                (events, actor::OUTBOX)
            }
        };
        match follow_until_leader(ledger, events, cursor, |progress| {
            try_lease(client.clone(), progress, holder.to_string())
        })
        .await
        {
            Ok((mut ledger, keeper, followed)) => {
                // The follower may have fallen behind (its consumer lost
                // with a server): read what the stream holds past it
                // directly before writing, or the first append is fenced.
                if let Some(ledger_stream) = ledger_stream {
                    match take_rest(&mut ledger, ledger_stream, followed.max(matched)).await {
                        Ok(()) => {}
                        Err(StandbyError::Forked { seq, theirs }) if seq > 1 => {
                            keeper.release().await;
                            let aside = set_aside(ledger, seq)?;
                            tracing::warn!(seq, %theirs, aside = %aside.display(), "this ledger's rows from seq {seq} on never reached TES_LEDGER (never acknowledged): the file was set aside, following the stream from an empty one");
                            continue;
                        }
                        Err(e) => return Err(Failure::check(e)),
                    }
                }
                tracing::warn!(
                    head = ledger.head().seq,
                    "this writer holds the writer lease now and writes from the last event the stream stored"
                );
                if ledger_stream.is_some() {
                    // TES_EVENTS goes on from where the last writer left it
                    // (it may have stopped between the two streams).
                    let identity = ledger
                        .identity()
                        .map_err(Failure::check)?
                        .map(|h| tes_ledger::chain::to_hex(&h))
                        .unwrap_or_default();
                    // Asked while the cluster may still be electing the
                    // leaders the last writer's server held: tried again.
                    let last = while_starting(|| stream.last_ledger_seq(&identity))
                        .await?
                        .min(ledger.head().seq);
                    let outbox =
                        tes_ledger::Outbox::open(path, actor::OUTBOX).map_err(Failure::check)?;
                    if outbox.cursor().map_err(Failure::check)? < last {
                        outbox.advance(last).map_err(Failure::check)?;
                    }
                }
                return Ok((ledger, keeper));
            }
            Err(StandbyError::Forked { seq, theirs }) if ledger_stream.is_some() && seq > 1 => {
                let ledger = tes_ledger::Ledger::open_writer(path).map_err(Failure::input)?;
                let aside = set_aside(ledger, seq)?;
                tracing::warn!(seq, %theirs, aside = %aside.display(), "this ledger's rows from seq {seq} on never reached TES_LEDGER (never acknowledged: on a cluster a reply waits for the stream), and another writer went on from there: the file was set aside, following the stream from an empty one");
            }
            Err(e) => return Err(Failure::check(e)),
        }
    }
}

/// Brings `ledger` (followed up to `followed`) level with what
/// `TES_LEDGER` holds: its own rows past `followed` must be the stream's
/// (else [`StandbyError::Forked`]), and the stream's past its head are
/// appended, with the outbox cursor of `TES_LEDGER` moved up to them.
async fn take_rest(
    ledger: &mut tes_ledger::Ledger,
    stream: &tes_bus::ledger_stream::LedgerStream,
    followed: u64,
) -> std::result::Result<(), tes_version_management::standby::StandbyError> {
    use tes_version_management::standby::StandbyError;
    // Right after a failover the stream may have no leader yet.
    let last = retrying_jetstream(|| stream.last_seq()).await?;
    let head = ledger.head().seq;
    let theirs = retrying_jetstream(|| stream.range(followed + 1, last)).await?;
    let ours = if followed < head.min(last) {
        ledger.events_from(followed + 1)?
    } else {
        Vec::new()
    };
    for ((seq, ours), (_, theirs, _)) in ours.iter().zip(&theirs) {
        if *theirs != ours.id.to_string() {
            return Err(StandbyError::Forked {
                seq: *seq,
                theirs: theirs.clone(),
            });
        }
    }
    // What was read and checked (the read may have ended short).
    let read_to = theirs.last().map_or(followed, |(seq, _, _)| *seq);
    let past_head = theirs.into_iter().filter(|(seq, _, _)| *seq > head);
    let mut rest = Vec::new();
    for (expected, (seq, _, event)) in (head + 1..).zip(past_head) {
        if seq != expected {
            return Err(StandbyError::Gap {
                head: expected - 1,
                found: seq,
            });
        }
        rest.push(event);
    }
    // Every row up to `read_to` is now the stream's, checked id for id:
    // the cursor says so, or this writer's outbox would send them again.
    ledger.append_published(&rest, actor::LEDGER_OUTBOX, read_to)?;
    if last > head {
        tracing::info!(
            from = head + 1,
            to = last,
            "took the events the follower had not delivered yet straight from TES_LEDGER"
        );
    }
    Ok(())
}

/// Sets `ledger` aside as `<file>.set-aside-<unix seconds>-from-<seq>`.
fn set_aside(ledger: tes_ledger::Ledger, seq: u64) -> Result<PathBuf> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    ledger
        .set_aside(&format!("{now}-from-{seq}"))
        .map_err(Failure::check)
}

/// Who holds a lease: `host:ledger file`.
fn lease_holder(path: &std::path::Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let file = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    format!("{host}:{}", file.display())
}

/// Where this process's standby writer is (the head seq it followed to),
/// while it stands by: `tes health` reports a standby that follows as
/// ready (it does its job), though its actors have not started.
static STANDING_BY: std::sync::Mutex<Option<u64>> = std::sync::Mutex::new(None);

/// The head seq this process's standby writer followed to, while it
/// stands by; `None` once it leads (or it never stood by).
pub fn standing_by() -> Option<u64> {
    *STANDING_BY.lock().unwrap_or_else(|e| e.into_inner())
}

fn set_standing_by(at: Option<u64>) {
    *STANDING_BY.lock().unwrap_or_else(|e| e.into_inner()) = at;
}

/// A standby's turn: it says where it is (`tes status` and the health
/// endpoint list it) and, once caught up, tries the lease: kept when
/// taken, `None` while another writer holds it (or NATS did not answer:
/// tried again).
async fn try_lease(
    client: async_nats::Client,
    progress: tes_version_management::standby::Progress,
    holder: String,
) -> Option<LeaseKeeper> {
    use tes_bus::lease::{Lease, LeaseError};
    set_standing_by(Some(progress.head_seq));
    if let Err(error) =
        tes_bus::lease::announce_standby(client.clone(), &holder, progress.head_seq).await
    {
        tracing::warn!(%error, "standby: could not announce itself");
    }
    if !progress.caught_up {
        return None;
    }
    let fence = tes_bus::jetstream::replicas(&client) > 1;
    let identity = progress.identity.unwrap_or_default();
    match Lease::acquire(client.clone(), &identity, &holder).await {
        Ok(lease) => {
            tes_bus::lease::retire_standby(client, &holder).await;
            set_standing_by(None);
            Some(keep_lease(lease, fence))
        }
        Err(LeaseError::Held { .. }) => None,
        Err(error) => {
            tracing::warn!(%error, "standby: the writer lease could not be read; trying again");
            None
        }
    }
}

/// Renews `lease` in the background until stopped.
///
/// `fence` (on a cluster, where a standby takes over a lapsed lease): a
/// writer that has not renewed for [`FENCE_AFTER`] pauses its appends to
/// the replicated ledger (and the replies that wait for them) before its
/// lease can lapse, so it never appends once a standby may have taken
/// over. It goes on trying: renewed at the revision it holds, nobody took
/// the lease meanwhile and it appends again; refused, another writer has
/// it and this one ends. It does not end on the timeout alone: when the
/// bucket's own stream is electing a leader (one NATS server of three
/// lost, up to ~9 s of raft election timeout) nobody can take the lease,
/// and a lone writer that ended there would stop signing for good. On a
/// lone server a NATS outage only pauses renewal (signing waits for the
/// ledger, never for NATS; nobody stands by to take over).
fn keep_lease(mut lease: tes_bus::lease::Lease, fence: bool) -> LeaseKeeper {
    use tes_bus::lease::{LeaseError, RENEW_EVERY};
    let (identity, holder) = (lease.value().ledger.clone(), lease.value().holder.clone());
    tracing::info!(ledger = %&identity[..16.min(identity.len())], %holder, "holding the writer lease");
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let (step_down, mut stepping_down) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (appending, may_append) = tokio::sync::watch::channel(true);
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(RENEW_EVERY);
        tick.tick().await;
        let mut renewed = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = &mut stopped => {
                    lease.release().await;
                    return;
                }
                Some(reason) = stepping_down.recv() => {
                    tracing::error!(%reason, "stopping: this writer cannot write its ledger (disk full?); the writer lease is given up so that a standby takes over at once");
                    lease.release().await;
                    stop_at_once();
                }
                _ = tick.tick() => match lease.renew().await {
                    Ok(()) => {
                        if !*appending.borrow() {
                            tracing::warn!(unrenewed = ?renewed.elapsed(), "the writer lease is renewed again and nobody took it meanwhile: appending to the replicated ledger again");
                            appending.send_replace(true);
                        }
                        renewed = std::time::Instant::now();
                    }
                    Err(e @ LeaseError::Lost(_)) => {
                        tracing::error!(error = %e, "stopping at once: another writer holds the ledger lease");
                        stop_at_once();
                    }
                    Err(e) if fence && renewed.elapsed() >= FENCE_AFTER => {
                        if *appending.borrow() {
                            tracing::error!(error = %e, "the writer lease could not be renewed for {:?} and may lapse, after which a standby may take over: appends to the replicated ledger (and the replies waiting for them) are paused until it is renewed; trying again", renewed.elapsed());
                            appending.send_replace(false);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "the writer lease could not be renewed; trying again"),
                },
            }
        }
    });
    LeaseKeeper {
        stop,
        task,
        step_down,
        may_append,
    }
}

/// Ends a writer that must not write on, at once: no exit handlers, no
/// thread-local destructors, no task finishing. `std::process::exit`
/// called on a tokio worker runs that thread's thread-local destructors,
/// and was seen to hang there for good (a writer stepping down on a full
/// disk never ended: its publisher went on appending after its lease was
/// given up, and the successor was fenced by those rows). Everything it
/// committed is durable in SQLite, its log lines are already on stderr
/// (unbuffered), and the stream fences anything still in flight.
fn stop_at_once() -> ! {
    // SAFETY: _exit(2) takes an int and never returns; it is
    // async-signal-safe and touches no state of this process.
    unsafe { libc::_exit(1) }
}

/// How long a writer that cannot write its ledger may take to give its
/// lease up before it ends regardless.
const STEP_DOWN_WITHIN: std::time::Duration = std::time::Duration::from_secs(3);

/// How long a writer on a cluster appends without renewing its lease: two
/// renewals short of its time to live.
const FENCE_AFTER: std::time::Duration = std::time::Duration::from_secs(
    tes_bus::lease::LEASE_TTL.as_secs() - 2 * tes_bus::lease::RENEW_EVERY.as_secs(),
);

/// The name a generated audit key gets: the checkpoints' origin, unique to
/// this ledger (its genesis hash).
pub fn origin_for(identity: &tes_ledger::Hash) -> String {
    format!("tes-ledger/{}", &tes_ledger::chain::to_hex(identity)[..16])
}

/// The audit key that is configured: `TES_AUDIT_KEY[_FILE]`, else the key
/// store's. Read before the ledger is opened, so a bad source stops a start
/// before anything is created.
pub fn configured_audit_key(
    env: &[(String, String)],
    key_store: &KeyStore,
) -> Result<Option<tes_audit::AuditKey>> {
    if let Some(key) = tes_audit::AuditKey::from_env(env.to_vec()).map_err(Failure::input)? {
        return Ok(Some(key));
    }
    match key_store.audit_key().map_err(Failure::input)? {
        Some(secret) => tes_audit::AuditKey::parse(&key_store.describe(), secret.expose_str())
            .map(Some)
            .map_err(Failure::input),
        None => Ok(None),
    }
}

/// The audit key for `ledger`: the configured one, else — with
/// `may_generate` (`tes init`, `tes demo`, or a start that has just created
/// the ledger: an audit key is born with its ledger's genesis) — a new one
/// generated into the key store; an older ledger without one gets it from
/// `tes init`.
pub fn audit_key(
    configured: Option<tes_audit::AuditKey>,
    key_store: &KeyStore,
    ledger: &tes_ledger::Ledger,
    may_generate: bool,
) -> Result<Option<tes_audit::AuditKey>> {
    if configured.is_some() || !may_generate {
        return Ok(configured);
    }
    let Some(identity) = ledger.identity().map_err(Failure::check)? else {
        return Ok(None);
    };
    let key = tes_audit::AuditKey::generate(&origin_for(&identity)).map_err(Failure::check)?;
    let secret = Secret::from_text("audit key", key.to_private().as_bytes().to_vec())
        .map_err(Failure::check)?;
    key_store.put_audit_key(&secret).map_err(Failure::input)?;
    tracing::info!(vkey = %key.vkey(), "generated the ledger's audit key into the {}", key_store.describe());
    Ok(Some(key))
}

/// The bundle store `--bundle-store` names; `None`: bundles are off.
pub fn bundle_store(global: &Global, o: &BundleOptions) -> Result<Option<StoreConfig>> {
    let spec = o.bundle_store.trim();
    let bad = |why: &str| {
        Failure::input(anyhow::anyhow!(
            "--bundle-store {spec:?}: {why} (expected fs, fs:PATH, s3://BUCKET or none)"
        ))
    };
    if spec == "none" {
        return Ok(None);
    }
    if spec == "fs" {
        return Ok(Some(StoreConfig::Fs {
            root: global.data_dir.join(BUNDLES_DIR),
        }));
    }
    if let Some(path) = spec.strip_prefix("fs:") {
        if path.is_empty() {
            return Err(bad("no path after fs:"));
        }
        return Ok(Some(StoreConfig::Fs { root: path.into() }));
    }
    let Some(bucket) = spec.strip_prefix("s3://") else {
        return Err(bad("unknown kind of store"));
    };
    let bucket = bucket.trim_end_matches('/');
    if bucket.is_empty() || bucket.contains('/') {
        return Err(bad("a bucket name, without a path"));
    }
    let access_key_id = env_first(&["TES_S3_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"]).ok_or_else(|| {
        Failure::input(anyhow::anyhow!(
            "{spec} needs credentials: set TES_S3_ACCESS_KEY_ID and TES_S3_SECRET_ACCESS_KEY_FILE (or TES_S3_SECRET_ACCESS_KEY)"
        ))
    })?;
    let secret_access_key = s3_secret(spec)?;
    Ok(Some(StoreConfig::S3(S3Config {
        endpoint: o.s3_endpoint.clone(),
        bucket: bucket.to_string(),
        region: o.s3_region.clone(),
        access_key_id,
        secret_access_key,
        archive_class: o.archive_class.clone(),
    })))
}

/// Where `--bundle-store fs` keeps bundles, under the data directory.
pub const BUNDLES_DIR: &str = "bundles";

fn env_first(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
}

/// The S3 secret: from the file `TES_S3_SECRET_ACCESS_KEY_FILE` names (a
/// compose secret), else the environment. Never printed.
fn s3_secret(spec: &str) -> Result<zeroize::Zeroizing<String>> {
    if let Some(path) = std::env::var_os("TES_S3_SECRET_ACCESS_KEY_FILE") {
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Failure::input(anyhow::anyhow!(
                "cannot read TES_S3_SECRET_ACCESS_KEY_FILE {}: {e}",
                std::path::Path::new(&path).display()
            ))
        })?;
        let secret = zeroize::Zeroizing::new(text.trim().to_string());
        if secret.is_empty() {
            return Err(Failure::input(anyhow::anyhow!(
                "TES_S3_SECRET_ACCESS_KEY_FILE {} is empty",
                std::path::Path::new(&path).display()
            )));
        }
        return Ok(secret);
    }
    env_first(&["TES_S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"])
        .map(zeroize::Zeroizing::new)
        .ok_or_else(|| {
            Failure::input(anyhow::anyhow!(
                "{spec} needs a secret: set TES_S3_SECRET_ACCESS_KEY_FILE (or TES_S3_SECRET_ACCESS_KEY)"
            ))
        })
}

/// The bundle worker's settings.
pub fn worker_config(
    global: &Global,
    o: &BundleOptions,
    auto_archive: bool,
) -> Result<tes_bundles::WorkerConfig> {
    let mut ttl = tes_bundles::Ttl::default();
    for spec in &o.bundle_ttl {
        ttl.add(spec)
            .map_err(|e| Failure::input(anyhow::anyhow!(e)))?;
    }
    Ok(tes_bundles::WorkerConfig {
        ledger_path: global.ledger_path(),
        ttl,
        limits: tes_bundles::archive::Limits {
            batch: o.archive_batch.max(1),
            concurrency: o.archive_concurrency.max(1),
        },
        auto_archive,
        expiry_scan_every: o.expiry_scan_every,
    })
}
