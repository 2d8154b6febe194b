//! What the end-to-end tests share: the real `tes` binary with a clean
//! environment and known secrets (so every output can be searched for
//! them), daemons that stop on drop, and a daemon on its own nats-server.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod browser;

use serde_json::Value;

pub const V1: &str = "e2e-known-secret-v1-4c9d1f0a7b3e2d56";

pub const V2: &str = "e2e-known-secret-v2-8a7f6e5d4c3b2a19";

/// `tes` with a clean environment (no secrets leak in from the developer's
/// shell) and the given data directory.
pub fn tes(data: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tes"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TES_METRICS_ADDR", "127.0.0.1:0")
        .env("TES_HTTP_ADDR", "127.0.0.1:0")
        .env("TES_LOG_DIR", data.join("logs"))
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::null());
    c
}

pub fn with_keys(mut c: Command) -> Command {
    c.env("VERSION_SIGNING_KEY", V1)
        .env("VERSION_SIGNING_KEY_V2", V2);
    c
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(mut c: Command) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = c.output().expect("tes runs");
    let r = Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    };
    for secret in [V1, V2, S3_SECRET] {
        assert!(
            !r.stdout.contains(secret) && !r.stderr.contains(secret),
            "a secret was printed"
        );
    }
    r
}

pub fn args(mut c: Command, a: &[&str]) -> Command {
    c.args(a);
    c
}

/// Runs `c` with `input` on its stdin.
pub fn run_with_stdin(mut c: Command, input: &str) -> Run {
    use std::io::Write;
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `examples/python/<script>` with `script_args` (nats-py: a client
/// that is not ours); it must succeed. Its one JSON summary line.
pub fn python_example(script: &str, script_args: &[&str]) -> Value {
    let example = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/python")
        .join(script);
    let out = Command::new(python())
        .arg(&example)
        .args(script_args)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap()
}

/// `tes secret put --key-version v2` with `secret` piped on stdin; must succeed.
pub fn secret_put(c: Command, secret: &str) {
    secret_put_as(c, &["--version", "2"], secret)
}

/// `tes secret put ARGS` with `secret` piped on stdin; must succeed.
pub fn secret_put_as(mut c: Command, put_args: &[&str], secret: &str) {
    c.args(["secret", "put"]).args(put_args);
    let r = run_with_stdin(c, secret);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

pub fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// HMAC-SHA256 the way an outside checker computes it: `openssl dgst`
/// where openssl exists, the RustCrypto crates otherwise.
pub fn outside_hmac(secret: &str, payload: &str) -> String {
    if let Ok(mut child) = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(payload.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        return text.trim().rsplit(' ').next().unwrap().to_string();
    }
    fast_hmac(secret, payload)
}

/// HMAC-SHA256 in-process (RustCrypto, independent of the project's
/// keyring), for checking thousands of signatures without a process each.
pub fn fast_hmac(secret: &str, payload: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(payload.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

pub fn assert_no_secret_in(dir: &Path) {
    for entry in walk(dir) {
        let bytes = std::fs::read(&entry).unwrap();
        for secret in [V1, V2, S3_SECRET] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "secret found in {entry:?}"
            );
        }
    }
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.is_file() {
            // Files only: a daemon's control socket holds nothing to read.
            out.push(p);
        }
    }
    out
}

/// The active key version of the daemon on NATS `url` (`""` if none answers).
pub fn key_version_on(dir: &Path, url: &str) -> String {
    let r = run(args(tes(dir), &["--nats", url, "status", "--json"]));
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap_or(Value::Null);
    v["keyVersion"].as_str().unwrap_or("").to_string()
}

pub fn wait_for_key_version(dir: &Path, url: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while key_version_on(dir, url) != want {
        assert!(Instant::now() < deadline, "keyVersion never became {want}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `tes daemon` child process, stopped with SIGTERM on drop.
pub struct Daemon(pub std::process::Child);

impl Daemon {
    /// `c` (global options) `daemon` `daemon_args`.
    pub fn spawn(mut c: Command, daemon_args: &[&str]) -> Daemon {
        c.arg("daemon")
            .args(daemon_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Daemon(c.spawn().unwrap())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

pub fn wait_until_ok(c: impl Fn() -> Command) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while run(c()).code != 0 {
        assert!(
            Instant::now() < deadline,
            "the daemon never answered on NATS"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A `tes daemon --nats` (all actors) on its own real nats-server.
pub struct NatsDaemon {
    pub daemon: Daemon,
    pub server: tes_bus::test_server::TestServer,
    pub url: String,
}

impl NatsDaemon {
    pub fn start(dir: &Path) -> NatsDaemon {
        let server = tes_bus::test_server::TestServer::start();
        let url = server.url();
        block_on(server.ready(None));
        let daemon = Daemon::spawn(args(with_keys(tes(dir)), &["--nats", &url]), &[]);
        wait_until_ok(|| args(tes(dir), &["--nats", &url, "status"]));
        NatsDaemon {
            daemon,
            server,
            url,
        }
    }

    pub fn client(&self, dir: &Path) -> Command {
        args(tes(dir), &["--nats", &self.url])
    }
}

// Ports nothing listens on right now.
#[allow(unused_imports)] // not every test binary uses both
pub use tes_bus::test_server::{free_port, free_port_run};

/// The project's Python (a venv `tests/run` fills with moto and boto3).
pub fn python() -> PathBuf {
    match std::env::var_os("TES_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python"),
    }
}

/// A real S3-protocol server on loopback (moto from PyPI), killed on drop,
/// with one bucket; read back with boto3 (`tests/support/s3.py`).
pub struct S3Server {
    child: std::process::Child,
    pub endpoint: String,
    pub bucket: String,
    /// The credentials it accepts (any, unless started authenticated).
    pub key_id: String,
    pub secret: String,
}

pub const S3_KEY_ID: &str = "AKIDE2ETESTKEY";
pub const S3_SECRET: &str = "e2e-s3-secret-never-printed-5f4e3d2c";

impl S3Server {
    pub fn start() -> S3Server {
        S3Server::spawn(free_port(), false)
    }

    /// On a given port (a store that comes up after its clients).
    pub fn start_on(port: u16) -> S3Server {
        S3Server::spawn(port, false)
    }

    /// A server that checks signatures (moto's IAM mode), with a user
    /// whose keys become this server's credentials.
    pub fn start_authenticated() -> S3Server {
        let mut server = S3Server::spawn(free_port(), true);
        let keys = json_lines(&server.boto(&["mkuser"])).remove(0);
        server.key_id = keys["id"].as_str().unwrap().to_string();
        server.secret = keys["secret"].as_str().unwrap().to_string();
        server
    }

    fn spawn(port: u16, auth: bool) -> S3Server {
        let moto = python().with_file_name("moto_server");
        let mut c = Command::new(&moto);
        c.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if auth {
            c.env("INITIAL_NO_AUTH_ACTION_COUNT", "4");
        }
        let child = c.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {} ({e}); ./tests/run installs moto into .venv",
                moto.display()
            )
        });
        let server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: "tes-bundles".to_string(),
            key_id: S3_KEY_ID.to_string(),
            secret: S3_SECRET.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto never listened");
            std::thread::sleep(Duration::from_millis(100));
        }
        if !auth {
            server.boto(&["mkbucket"]);
        }
        server
    }

    fn try_boto(&self, a: &[&str]) -> Result<String, String> {
        let out = Command::new(python())
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/support/s3.py"))
            .arg(&self.endpoint)
            .arg(&self.bucket)
            .args(a)
            .env("AWS_ACCESS_KEY_ID", &self.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .output()
            .expect("python runs");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// boto3 `verb args…`; panics on failure.
    pub fn boto(&self, a: &[&str]) -> String {
        self.try_boto(a)
            .unwrap_or_else(|e| panic!("s3.py {a:?}: {e}"))
    }

    /// Every object under `prefix`, as boto3 sees it.
    pub fn ls(&self, prefix: &str) -> Vec<Value> {
        json_lines(&self.boto(&["ls", prefix]))
    }

    /// `tes` options and credentials for this store.
    pub fn configure(&self, mut c: Command) -> Command {
        c.env("TES_BUNDLE_STORE", format!("s3://{}", self.bucket))
            .env("TES_S3_ENDPOINT", &self.endpoint)
            .env("TES_S3_ACCESS_KEY_ID", &self.key_id)
            .env("TES_S3_SECRET_ACCESS_KEY", &self.secret);
        c
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
