//! A real `nats-server` for tests: started on a free loopback port with
//! JetStream and a temporary store directory, stopped (killed) on drop —
//! never a server someone left running.
//!
//! The binary is `$TES_NATS_SERVER`, else the project's `.venv/bin/nats-server`
//! (which `./tests/run` installs, pinned), else `nats-server` on `PATH`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The users `ops/nats-server.conf` defines.
pub const OPS_USERS: &[&str] = &[
    "supervisor",
    "version",
    "monitoring",
    "telemetry",
    "alert",
    "operator",
    "client",
    "monitor",
    "gateway",
];

/// The password tests give `user` of [`OPS_USERS`].
pub fn ops_password(user: &str) -> String {
    format!("pw-{user}-test")
}

pub struct TestServer {
    child: Child,
    port: u16,
    dir: PathBuf,
    config: Option<PathBuf>,
    env: Vec<(String, String)>,
    /// More command-line arguments (a cluster member's name and routes).
    args: Vec<String>,
}

/// Where the server binary is.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TES_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/nats-server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("nats-server")
}

/// A free loopback port (see [`free_port_run`]).
pub fn free_port() -> u16 {
    free_port_run(1)
}

/// The first of `n` consecutive free loopback ports, picked at random below
/// the kernel's ephemeral range (32768 and up): a port the kernel handed out
/// for `:0` can be taken by an outgoing connection, or handed to another
/// test, between our check and the server's bind, and CI once lost a
/// cluster's route port that way (`ops/stack.sh --cluster` uses port,
/// port+1, port+2).
pub fn free_port_run(n: u16) -> u16 {
    use std::hash::{BuildHasher, RandomState};
    let state = RandomState::new();
    for attempt in 0u64..1000 {
        let base = 20_000 + (state.hash_one(attempt) % 12_000) as u16;
        if (0..n).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no run of {n} free loopback ports between 20000 and 32000")
}

impl TestServer {
    /// A plain server with JetStream.
    pub fn start() -> TestServer {
        TestServer::start_with_config(None)
    }

    /// A server reading `config` (e.g. `ops/nats-server.conf`); the port and
    /// store directory are still ours.
    pub fn start_with_config(config: Option<&str>) -> TestServer {
        TestServer::start_with(config, &[])
    }

    /// As [`TestServer::start_with_config`], with environment variables for
    /// the server process (the config's `$VAR` references).
    pub fn start_with(config: Option<&str>, env: &[(&str, &str)]) -> TestServer {
        TestServer::start_on(free_port(), config, env, Vec::new())
    }

    fn start_on(
        port: u16,
        config: Option<&str>,
        env: &[(&str, &str)],
        args: Vec<String>,
    ) -> TestServer {
        let dir = std::env::temp_dir().join(format!(
            "tes-nats-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&dir).expect("temporary store directory");
        let config = config.map(|text| {
            let path = dir.join("server.conf");
            std::fs::write(&path, text).expect("write the server config");
            path
        });
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let child = spawn(port, &dir, config.as_deref(), &env, &args);
        TestServer {
            child,
            port,
            dir,
            config,
            env,
            args,
        }
    }

    /// A server running the project's `ops/nats-server.conf`, each user's
    /// password being [`ops_password`] (the config reads them from the
    /// environment). Call [`TestServer::ready`] with one of them.
    pub fn start_with_ops_config() -> TestServer {
        let config = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../ops/nats-server.conf"
        ))
        .expect("ops/nats-server.conf");
        let vars: Vec<(String, String)> = OPS_USERS
            .iter()
            .map(|u| (format!("TES_NATS_PW_{}", u.to_uppercase()), ops_password(u)))
            .collect();
        let env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        TestServer::start_with(Some(&config), &env)
    }

    /// `nats://user:password@…` for one of the [`OPS_USERS`].
    pub fn url_as(&self, user: &str) -> String {
        self.url()
            .replace("nats://", &format!("nats://{user}:{}@", ops_password(user)))
    }

    /// Starts the server again on the same port and store (after [`kill`]):
    /// JetStream comes back with what it had stored.
    ///
    /// [`kill`]: TestServer::kill
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn(
            self.port,
            &self.dir,
            self.config.as_deref(),
            &self.env,
            &self.args,
        );
    }

    /// The server process's id (for benchmarks that read its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Waits until a client can connect (by connecting: probing the port
    /// makes the server log a parse error).
    pub async fn ready(&self, user: Option<(&str, &str)>) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut options = async_nats::ConnectOptions::new();
            if let Some((u, p)) = user {
                options = options.user_and_password(u.into(), p.into());
            }
            match options.connect(self.url()).await {
                Ok(client) => {
                    drop(client);
                    return;
                }
                Err(e) if Instant::now() > deadline => {
                    panic!("nats-server on {} never became ready: {e}", self.url())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Stops the server at once, as a crash would (kill -9).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(
    port: u16,
    dir: &std::path::Path,
    config: Option<&std::path::Path>,
    env: &[(String, String)],
    args: &[String],
) -> Child {
    let mut cmd = Command::new(binary());
    if let Some(path) = config {
        cmd.arg("-c").arg(path);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd.args(args);
    cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.join("store"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // For a long fault run: each server's own log, appended across its
    // restarts, named by its client port (the directory made if missing:
    // nats-server would exit without a word when it cannot open its log).
    if let Some(logs) = std::env::var_os("TES_NATS_LOG_DIR") {
        let logs = std::path::Path::new(&logs);
        let _ = std::fs::create_dir_all(logs);
        cmd.arg("-l").arg(logs.join(format!("nats-{port}.log")));
    }
    cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "cannot start {:?} ({e}): a nats-server >= 2.10 is needed; ./tests/run installs one into .venv, or set TES_NATS_SERVER",
            binary()
        )
    })
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a cluster member reads: the lost-connection settings of
/// `ops/nats-server.conf` (a client or route silent for two PINGs 2 s
/// apart is dropped), so faults are measured as production would see them.
pub const CLUSTER_CONFIG: &str = "ping_interval: \"2s\"\nping_max: 2\n";

/// Three (or `n`) `nats-server` processes with routes between them on
/// loopback ports: one JetStream cluster, in which a stream can keep three
/// replicas and lose one server. Each member is a [`TestServer`] (killed
/// and restarted on its own port and store); all stop on drop.
pub struct TestCluster {
    pub servers: Vec<TestServer>,
}

impl TestCluster {
    pub fn start(n: usize) -> TestCluster {
        let name = format!("tes-test-{}", uuid::Uuid::now_v7().simple());
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let route_urls = routes
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let servers = routes
            .iter()
            .enumerate()
            .map(|(i, route)| {
                let args = vec![
                    "--server_name".to_string(),
                    format!("n{}", i + 1),
                    "--cluster_name".to_string(),
                    name.clone(),
                    "--cluster".to_string(),
                    format!("nats://127.0.0.1:{route}"),
                    "--routes".to_string(),
                    route_urls.clone(),
                ];
                TestServer::start_on(free_port(), Some(CLUSTER_CONFIG), &[], args)
            })
            .collect();
        TestCluster { servers }
    }

    /// Every member's client URL, comma-separated (what a client given
    /// the whole cluster connects with).
    pub fn url(&self) -> String {
        self.servers
            .iter()
            .map(TestServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until every member takes clients and the cluster has elected
    /// its JetStream meta leader (a stream can be made).
    pub async fn ready(&self) {
        for s in &self.servers {
            s.ready(None).await;
        }
        let client = async_nats::connect(self.servers[0].url())
            .await
            .expect("connect to the cluster");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = client
                .request("$JS.API.INFO", "".into())
                .await
                .ok()
                .and_then(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).ok());
            if answer.is_some_and(|v| v.get("error").is_none()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the test cluster elected no JetStream leader within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// CPU time (user + system) used so far by the process or thread whose
/// `/proc` stat file is `stat` (`/proc/<pid>/stat`, `/proc/self/stat`,
/// `/proc/self/task/<tid>/stat`); zero when it cannot be read. What the
/// benchmarks divide by their operations to say where the time goes.
pub fn cpu_time(stat: &std::path::Path) -> Duration {
    let stat = std::fs::read_to_string(stat).unwrap_or_default();
    // Fields after the command name (which may hold spaces), 1-based 14 and 15.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let ticks: u64 = rest
        .split(' ')
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse::<u64>().ok())
        .sum();
    // Linux reports both in clock ticks of 1/100 s (USER_HZ) on every
    // architecture we run on.
    Duration::from_millis(ticks * 10)
}
