//! The local stack: docker-compose.yml parses (with a compose that needs no
//! engine) and has a twin in ops/stack.sh for every service; ops/stack.sh
//! brings the same topology up as processes, a rotation goes through the
//! gateway and is seen on the bus, and `down` leaves nothing running.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn output(c: &mut Command) -> (i32, String, String) {
    let o = c.output().expect("runs");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The services of `docker-compose config` (normalised YAML) that are not
/// behind a profile.
fn compose_services_without_profile(config: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_services = false;
    let mut current: Option<(String, bool)> = None;
    for line in config.lines() {
        if line.trim().is_empty() {
            continue; // inside a multi-line string
        }
        if !line.starts_with(' ') {
            in_services = line == "services:";
            continue;
        }
        if !in_services {
            continue;
        }
        if let Some(name) = line.strip_prefix("  ").filter(|l| !l.starts_with(' ')) {
            if let Some((s, profiled)) = current.take() {
                if !profiled {
                    out.push(s);
                }
            }
            current = Some((name.trim_end_matches(':').to_string(), false));
        } else if line.starts_with("    profiles:") {
            if let Some(c) = current.as_mut() {
                c.1 = true;
            }
        }
    }
    if let Some((s, false)) = current {
        out.push(s);
    }
    out.sort();
    out
}

#[test]
fn the_compose_file_is_valid_and_every_service_has_a_process_twin() {
    let compose = || {
        let mut c = Command::new("docker-compose");
        c.current_dir(root()).args(["-f", "docker-compose.yml"]);
        c
    };
    let (code, _, err) = output(compose().args(["config", "-q"]));
    assert_eq!(code, 0, "docker-compose config -q: {err}");
    let (code, config, err) = output(compose().arg("config"));
    assert_eq!(code, 0, "{err}");
    let services = compose_services_without_profile(&config);
    assert!(services.contains(&"version".to_string()), "{services:?}");
    let (code, twins, err) = output(Command::new(root().join("ops/stack.sh")).arg("services"));
    assert_eq!(code, 0, "{err}");
    let mut twins: Vec<String> = twins.lines().map(str::to_string).collect();
    twins.sort();
    assert_eq!(
        services, twins,
        "docker-compose.yml services vs ops/stack.sh"
    );
    // Every actor runs as its own NATS user, with its password from a secret.
    for actor in [
        "supervisor",
        "version",
        "monitoring",
        "telemetry",
        "alert",
        "gateway",
    ] {
        assert!(
            config.contains(&format!(
                "TES_NATS_PASSWORD_FILE: /run/secrets/nats_pw_{actor}"
            )),
            "{actor} has no NATS password secret"
        );
        assert!(
            config.contains(&format!("TES_ACTORS: {actor}")),
            "{actor}: TES_ACTORS tells the daemon and `tes health` which actors"
        );
    }
    // A healthcheck on every service, and the tes image checks itself.
    let (code, all, err) = output(compose().args(["--profile", "s3", "config"]));
    assert_eq!(code, 0, "{err}");
    let services: Vec<&str> = all
        .split("\nservices:\n")
        .nth(1)
        .unwrap_or("")
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with(' '))
        .filter(|l| l.starts_with("  ") && !l.starts_with("   ") && l.ends_with(':'))
        .collect();
    assert!(services.len() >= 9, "{services:?}");
    let healthchecks = all.matches("healthcheck:").count();
    assert!(
        healthchecks >= services.len(),
        "{healthchecks} healthchecks for {} services",
        services.len()
    );
    assert!(
        config.contains("      - tes\n      - health"),
        "the tes services check themselves with `tes health`"
    );
    let dockerfile = std::fs::read_to_string(root().join("ops/Dockerfile")).unwrap();
    assert!(
        dockerfile.starts_with("# syntax="),
        "the syntax line comes first"
    );
}

#[test]
fn the_ha_overlay_adds_the_cluster_twins_and_a_second_writer_like_the_first() {
    // docker-compose.yml + ops/compose.ha.yml, profile `ha`, as a user runs
    // it: the services are ops/stack.sh's `up --cluster`, and `version2` is
    // `version` on another host and volume (nothing else may drift).
    let (code, config, err) = output(Command::new("docker-compose").current_dir(root()).args([
        "-f",
        "docker-compose.yml",
        "-f",
        "ops/compose.ha.yml",
        "--profile",
        "ha",
        "config",
    ]));
    assert_eq!(code, 0, "docker-compose config: {err}");
    let check = r#"
import json, sys, yaml
services = yaml.safe_load(sys.stdin)["services"]
a, b = dict(services["version"]), dict(services["version2"])
drift = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)
               and k not in ("hostname", "volumes", "profiles", "build"))
urls = {n: s["environment"].get("TES_NATS_URL") for n, s in services.items()
        if s.get("command", [""])[0] == "daemon"}
print(json.dumps({"services": sorted(services), "drift": drift, "urls": urls,
                  "hosts": [a.get("hostname"), b.get("hostname")],
                  "volumes": [sorted(a["volumes"]), sorted(b["volumes"])]}))
"#;
    let mut py = Command::new(python())
        .args(["-c", check])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the project's Python (tests/run makes .venv)");
    std::io::Write::write_all(py.stdin.as_mut().unwrap(), config.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (code, twins, _) = output(Command::new(root().join("ops/stack.sh")).arg("services"));
    assert_eq!(code, 0);
    let mut expected: Vec<String> = twins.lines().map(str::to_string).collect();
    expected.extend(["nats2", "nats3", "version2"].map(String::from));
    expected.sort();
    let services: Vec<String> = serde_json::from_value(v["services"].clone()).unwrap();
    let services: Vec<String> = services
        .into_iter()
        .filter(|s| !s.starts_with("s3"))
        .collect();
    assert_eq!(
        services, expected,
        "the ha services vs ops/stack.sh up --cluster"
    );
    assert_eq!(
        v["drift"],
        serde_json::json!([]),
        "version2 drifted from version"
    );
    assert_eq!(v["hosts"], serde_json::json!(["writer-a", "writer-b"]));
    assert_ne!(
        v["volumes"][0], v["volumes"][1],
        "the writers share a volume"
    );
    for (service, url) in v["urls"].as_object().unwrap() {
        assert_eq!(
            url, "nats://nats:4222,nats://nats2:4222,nats://nats3:4222",
            "{service} is not given every server"
        );
    }
}

/// ops/stack.sh on its own directory and free ports.
struct Stack {
    dir: tempfile::TempDir,
    nats: u16,
    http: u16,
    metrics: u16,
    monitor: u16,
    routes: u16,
}

impl Stack {
    fn new() -> Stack {
        Stack {
            dir: tempfile::tempdir().unwrap(),
            // A cluster takes three of each from the first.
            nats: free_port_run(3),
            http: free_port(),
            metrics: free_port(),
            monitor: free_port_run(3),
            routes: free_port_run(3),
        }
    }

    fn run(&self, verb: &str) -> (i32, String, String) {
        self.run_args(&[verb])
    }

    fn run_args(&self, a: &[&str]) -> (i32, String, String) {
        output(
            Command::new(root().join("ops/stack.sh"))
                .args(a)
                .env("TES_STACK_ROUTE_PORT", self.routes.to_string())
                .env("TES_BIN", env!("CARGO_BIN_EXE_tes"))
                .env("TES_STACK_DIR", self.dir.path())
                .env("TES_STACK_NATS_PORT", self.nats.to_string())
                .env("TES_STACK_HTTP_PORT", self.http.to_string())
                .env("TES_STACK_METRICS_PORT", self.metrics.to_string())
                .env("TES_STACK_NATS_MONITOR_PORT", self.monitor.to_string()),
        )
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // A failed assertion must not leave the stack running.
        let _ = self.run("down");
    }
}

#[test]
fn the_stack_comes_up_rotates_through_the_gateway_and_goes_down_clean() {
    let stack = Stack::new();
    let d = stack.dir.path().to_path_buf();
    let (code, out, err) = stack.run("up");
    assert_eq!(code, 0, "up: {out}{err}");
    let pids: Vec<String> = std::fs::read_dir(d.join("pids"))
        .unwrap()
        .map(|e| {
            std::fs::read_to_string(e.unwrap().path())
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    assert_eq!(pids.len(), 7, "nats and six actors");

    let url = format!("nats://127.0.0.1:{}", stack.nats);
    let as_user = |user: &str| {
        let mut c = tes(&d.join("data"));
        c.args(["--nats", &url]).env("TES_NATS_USER", user).env(
            "TES_NATS_PASSWORD_FILE",
            d.join(format!("secrets/nats_pw_{user}")),
        );
        c
    };
    // Watch the bus as the read-only user while rotating over HTTP.
    let mut watch = as_user("monitor");
    watch
        .args(["--json", "watch", "--kind", "key_rotate"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let watch = watch.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(700));

    let base = format!("http://127.0.0.1:{}", stack.http);
    let admin = std::fs::read_to_string(d.join("secrets/admin_token")).unwrap();
    let script = format!(
        r#"curl -s -X POST {base}/admin/rotate -H "Authorization: Bearer {}" -H "X-CSRF-Token: $(curl -s {base}/api/auth/csrf-token | jq -r .token)""#,
        admin.trim()
    );
    let (code, body, err) = output(Command::new("sh").args(["-c", &script]));
    assert_eq!(code, 0, "{err}");
    assert!(body.contains("Key rotation to V2 completed"), "{body}");

    let r = run(args(as_user("operator"), &["--json", "status"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("\"keyVersion\":\"2\""), "{}", r.stdout);
    let r = run(args(as_user("client"), &["--json", "bump", "patch"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("\"keyVersion\":\"v2\""), "{}", r.stdout);

    // The event reached the watcher (give it a moment), then stop it.
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(watch.id().to_string())
        .status();
    let seen = watch.wait_with_output().unwrap();
    let seen = String::from_utf8_lossy(&seen.stdout);
    assert!(
        seen.contains("\"key_rotate\""),
        "tes watch saw the rotation on the bus: {seen}"
    );

    let (code, out, err) = stack.run("down");
    assert_eq!(code, 0, "down: {out}{err}");
    for pid in &pids {
        // Gone, or a zombie no one has reaped yet (it runs no more).
        let (_, stat, _) = output(Command::new("ps").args(["-o", "stat=", "-p", pid]));
        assert!(
            stat.trim().is_empty() || stat.trim().starts_with('Z'),
            "pid {pid} still runs after down ({stat})"
        );
    }
    let (code, out, _) = stack.run("status");
    assert_eq!(code, 1, "status after down says stopped: {out}");
    // The logs are in one folder, without a secret in them.
    let logs = std::fs::read_to_string(d.join("logs/version.log")).unwrap();
    assert!(logs.contains("tes daemon ready"), "{logs}");
    for f in walk(&d.join("logs")) {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for secret in [
            "version_signing_key",
            "version_signing_key_v2",
            "admin_token",
            "nats_pw_version",
        ] {
            let value = std::fs::read_to_string(d.join("secrets").join(secret)).unwrap();
            assert!(!text.contains(value.trim()), "{secret} in {f:?}");
        }
    }
}

#[test]
fn the_cluster_stack_fails_over_to_its_standby_writer() {
    let stack = Stack::new();
    let d = stack.dir.path().to_path_buf();
    let (code, out, err) = stack.run_args(&["up", "--cluster"]);
    assert_eq!(code, 0, "up --cluster: {out}{err}");
    let (code, out, _) = stack.run("status");
    assert_eq!(code, 0, "{out}");
    for s in ["nats2", "nats3", "version2"] {
        assert!(out.contains(&format!("{s:<11} running")), "{s}: {out}");
    }
    let url = (0..3)
        .map(|i| format!("nats://127.0.0.1:{}", stack.nats + i))
        .collect::<Vec<_>>()
        .join(",");
    let as_user = |user: &str| {
        let mut c = tes(&d.join("data"));
        c.args(["--nats", &url]).env("TES_NATS_USER", user).env(
            "TES_NATS_PASSWORD_FILE",
            d.join(format!("secrets/nats_pw_{user}")),
        );
        c
    };
    let sign = |payload: &str| {
        let r = run(args(as_user("client"), &["--json", "sign", payload]));
        (r.code == 0).then(|| serde_json::from_str::<serde_json::Value>(r.stdout.trim()).unwrap())
    };
    let before = sign("before-the-failover").expect("signs on the cluster");
    // The standby is listed, caught up.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, out, _) = stack.run("status");
        if out.contains("Standby:") && out.contains("(0 behind)") {
            break;
        }
        assert!(Instant::now() < deadline, "no standby in status: {out}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // The admin page shows them too: the writer's lease, the standby's lag.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let page = format!("http://127.0.0.1:{}/admin", stack.http);
    let browser = rt.block_on(async {
        let b = support::browser::Chromium::start(1280).await;
        b.client.goto(&page).await.unwrap();
        let writer = b
            .wait_text("#writers tr.writer", Duration::from_secs(10), |t| {
                t.contains("/data/ledger.db") && t.contains("lease")
            })
            .await;
        let standby = b
            .wait_text("#writers tr.standby", Duration::from_secs(10), |t| {
                t.contains("/data2/ledger.db") && t.contains("0 behind")
            })
            .await;
        b.screenshot("admin-writers.png").await.unwrap();
        writer.unwrap();
        standby.unwrap();
        b
    });
    // The writer's host is lost (SIGKILL): the standby takes over.
    let pid = std::fs::read_to_string(d.join("pids/version.pid")).unwrap();
    output(Command::new("kill").args(["-KILL", pid.trim()]));
    let killed = Instant::now();
    let after = loop {
        if let Some(s) = sign("after-the-failover") {
            break s;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "nothing signs 30 s after the writer was killed"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(after["seq"].as_u64() > before["seq"].as_u64(), "{after}");
    // Without a reload, the page names the new writer.
    rt.block_on(async {
        let shown = browser
            .wait_text("#writers tr.writer", Duration::from_secs(10), |t| {
                t.contains("/data2/ledger.db")
            })
            .await;
        browser
            .screenshot("admin-writers-after-failover.png")
            .await
            .unwrap();
        browser.close().await;
        shown.unwrap();
    });
    let (code, out, err) = stack.run("down");
    assert_eq!(code, 0, "down: {out}{err}");
    let r = run(args(tes(&d.join("data2")), &["audit", "verify"]));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
}
