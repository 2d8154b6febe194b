//! End to end: the HTTP gateway as the seed's users drive it — its curl
//! lines, one-time CSRF tokens under concurrency and across instances, the
//! admin checks and every bad request they refuse (changing nothing, with a
//! `rejected` event), the version WebSocket's subprotocol rule, and the
//! admin page in a real headless Chromium.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const ADMIN: &str = "e2e-admin-token-5d1c0b7e9a";

fn env(mut c: Command, pairs: &[(&str, &str)]) -> Command {
    for (k, v) in pairs {
        c.env(k, v);
    }
    c
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Waits until the gateway at `base` answers its health endpoint.
async fn ready(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http()
            .get(format!("{base}/api/dev/version-ws/health"))
            .send()
            .await
        {
            if r.status() == 200 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the gateway at {base} never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `tes daemon` on the embedded bus with its gateway on a free port.
fn embedded_gateway(dir: &Path, extra: &[(&str, &str)]) -> (Daemon, String) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut vars = vec![("TES_HTTP_ADDR", addr.as_str())];
    vars.extend_from_slice(extra);
    let daemon = Daemon::spawn(env(with_keys(tes(dir)), &vars), &[]);
    let base = format!("http://127.0.0.1:{port}");
    rt().block_on(ready(&base));
    (daemon, base)
}

async fn token(base: &str) -> String {
    let v: Value = http()
        .get(format!("{base}/api/auth/csrf-token"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["token"].as_str().unwrap().to_string()
}

fn key_rotations(dir: &Path) -> u64 {
    let c = rusqlite::Connection::open(dir.join("ledger.db")).unwrap();
    c.query_row(
        "SELECT count(*) FROM events WHERE kind = 'key_rotate'",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

#[test]
fn the_seeds_curl_lines_work_against_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, base) = embedded_gateway(dir.path(), &[]);
    let sh = |script: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("BASE", &base)
            .output()
            .expect("sh runs");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // "Trigger Rotation", with the domain this daemon serves on.
    let rotated: Value = serde_json::from_str(&sh(
        r#"curl -s -X POST $BASE/admin/rotate -H "X-CSRF-Token: $(curl -s $BASE/api/auth/csrf-token | jq -r .token)""#,
    ))
    .unwrap();
    assert_eq!(rotated["success"], true);
    assert_eq!(rotated["keyVersion"], "2");
    assert_eq!(rotated["hsl"], "#9D4EDD");
    assert_eq!(rotated["message"], "Key rotation to V2 completed");
    // "Test Dual-Key Signing": <token> is a fresh token.
    for v in ["v1", "v2"] {
        let signed: Value = serde_json::from_str(&sh(&format!(
            r#"curl -s -X POST $BASE/api/dev/bump-version -H "X-CSRF-Token: $(curl -s $BASE/api/auth/csrf-token | jq -r .token)" -H "X-Key-Version: {v}" -d '{{"scope": "patch"}}'"#
        )))
        .unwrap();
        assert_eq!(signed["keyVersion"], v);
        let secret = if v == "v1" { V1 } else { V2 };
        assert_eq!(
            signed["signature"].as_str().unwrap(),
            outside_hmac(secret, signed["payload"].as_str().unwrap())
        );
    }
    // "Verify Key Version in Response" and "Verify Rotation".
    assert_eq!(
        sh("curl -s $BASE/api/dev/bump-version | jq .keyVersion").trim(),
        "\"v2\""
    );
    assert_eq!(
        sh("curl -s $BASE/api/dev/version-ws/health | jq .keyVersion").trim(),
        "\"2\""
    );
    let health: Value =
        serde_json::from_str(&sh("curl -s $BASE/api/dev/version-ws/health")).unwrap();
    assert_eq!(health["lastSigVersion"], "v2");
    assert_eq!(health["bus"]["connected"], true);
    assert!(sh("curl -s $BASE/metrics").contains("# TYPE tes_signatures counter"));
    // Nothing to rotate to now: the seed's 500, for the next version.
    let out = sh(
        r#"curl -s -w ' %{http_code}' -X POST $BASE/admin/rotate -H "X-CSRF-Token: $(curl -s $BASE/api/auth/csrf-token | jq -r .token)""#,
    );
    assert_eq!(out, "V3 key not configured [HSL:#FF0000] 500");
    assert_no_secret_in(dir.path());
}

#[test]
fn sixteen_concurrent_posts_with_one_token_rotate_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, base) = embedded_gateway(dir.path(), &[]);
    // The token outlives the gateway that issued it.
    let t = rt().block_on(token(&base));
    drop(daemon);
    let (_daemon, base) = embedded_gateway(dir.path(), &[]);
    rt().block_on(async {
        let posts = (0..16).map(|_| {
            let (base, t) = (base.clone(), t.clone());
            tokio::spawn(async move {
                let r = http()
                    .post(format!("{base}/admin/rotate"))
                    .header("X-CSRF-Token", t)
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            })
        });
        let mut codes = Vec::new();
        for p in posts.collect::<Vec<_>>() {
            codes.push(p.await.unwrap());
        }
        assert_eq!(
            codes.iter().filter(|(c, _)| *c == 200).count(),
            1,
            "{codes:?}"
        );
        assert!(
            codes
                .iter()
                .all(|(c, body)| *c == 200 || (*c == 403 && body == "CSRF Invalid [HSL:#FF4500]")),
            "{codes:?}"
        );
    });
    assert_eq!(
        key_rotations(dir.path()),
        2,
        "the first activation and one rotation"
    );
}

#[test]
fn tokens_are_shared_by_gateways_on_one_nats_and_spent_once_across_them() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let server = tes_bus::test_server::TestServer::start();
    let url = server.url();
    block_on(server.ready(None));
    let (a, b) = (free_port(), free_port());
    let (addr_a, addr_b) = (format!("127.0.0.1:{a}"), format!("127.0.0.1:{b}"));
    let _all = Daemon::spawn(
        env(with_keys(tes(dir.path())), &[("TES_HTTP_ADDR", &addr_a)]),
        &["--nats", &url],
    );
    let _gateway = Daemon::spawn(
        env(tes(other.path()), &[("TES_HTTP_ADDR", &addr_b)]),
        &["--nats", &url, "--actors", "gateway"],
    );
    let (base_a, base_b) = (format!("http://{addr_a}"), format!("http://{addr_b}"));
    rt().block_on(async {
        ready(&base_a).await;
        ready(&base_b).await;
        // Spent at A, refused at B.
        let t = token(&base_a).await;
        let r = http()
            .post(format!("{base_a}/api/dev/bump-version"))
            .header("X-CSRF-Token", &t)
            .body(r#"{"scope":"patch"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = http()
            .post(format!("{base_b}/admin/rotate"))
            .header("X-CSRF-Token", &t)
            .send()
            .await
            .unwrap();
        assert_eq!(
            (r.status().as_u16(), r.text().await.unwrap().as_str()),
            (403, "CSRF Invalid [HSL:#FF4500]")
        );
        // Issued at B, raced at both: one rotation.
        let t = token(&base_b).await;
        let posts: Vec<_> = (0..16)
            .map(|i| {
                let base = if i % 2 == 0 {
                    base_a.clone()
                } else {
                    base_b.clone()
                };
                let t = t.clone();
                tokio::spawn(async move {
                    http()
                        .post(format!("{base}/admin/rotate"))
                        .header("X-CSRF-Token", t)
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
            .collect();
        let mut codes = Vec::new();
        for p in posts {
            codes.push(p.await.unwrap());
        }
        assert_eq!(codes.iter().filter(|c| **c == 200).count(), 1, "{codes:?}");
        assert_eq!(codes.iter().filter(|c| **c == 403).count(), 15, "{codes:?}");
    });
    assert!(
        !other.path().join("ledger.db").exists(),
        "a gateway keeps no ledger"
    );
}

/// `rejected` events from the Supervisor's thread (the gateway's), as seen on NATS.
fn collect_rejections(
    url: &str,
) -> (
    std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    std::thread::JoinHandle<()>,
) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (sink, url) = (seen.clone(), url.to_string());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        block_on(async move {
            let client = async_nats::connect(url.as_str()).await.unwrap();
            let mut sub = client.subscribe("tes.evt.0x1001.rejected").await.unwrap();
            client.flush().await.unwrap();
            ready_tx.send(()).unwrap();
            while let Ok(Some(m)) = tokio::time::timeout(
                Duration::from_secs(30),
                futures_util::StreamExt::next(&mut sub),
            )
            .await
            {
                // Published in the binary form by default; the JSON form is asked for below.
                if let Ok(v) = serde_json::from_slice::<Value>(&m.payload) {
                    sink.lock().unwrap().push(v);
                }
            }
        })
    });
    ready_rx.recv().unwrap();
    (seen, handle)
}

#[test]
fn bad_requests_get_the_right_4xx_change_nothing_and_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let far = tempfile::tempdir().unwrap();
    let server = tes_bus::test_server::TestServer::start();
    let url = server.url();
    block_on(server.ready(None));
    let (port, strict_port) = (free_port(), free_port());
    let addr = format!("127.0.0.1:{port}");
    let strict = format!("127.0.0.1:{strict_port}");
    let log = dir.path().join("daemon.log");
    let mut c = env(
        with_keys(tes(dir.path())),
        &[
            ("TES_HTTP_ADDR", &addr),
            ("TES_ADMIN_TOKEN", ADMIN),
            ("TES_PROXY_IPS", "127.0.0.1/32"),
        ],
    );
    c.args([
        "--nats",
        &url,
        "daemon",
        "--csrf-ttl",
        "2s",
        "--wire",
        "json",
    ])
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap());
    let _daemon = Daemon(c.spawn().unwrap());
    // A second gateway that trusts only 10.0.0.0/8: loopback is outside.
    let _strict = Daemon::spawn(
        env(
            tes(far.path()),
            &[
                ("TES_HTTP_ADDR", &strict),
                ("TES_ADMIN_TOKEN", ADMIN),
                ("TES_PROXY_IPS", "10.0.0.0/8"),
            ],
        ),
        &["--nats", &url, "--actors", "gateway", "--wire", "json"],
    );
    let (base, strict) = (format!("http://{addr}"), format!("http://{strict}"));
    let (rejections, watcher) = collect_rejections(&url);
    let bearer = format!("Bearer {ADMIN}");
    rt().block_on(async {
        ready(&base).await;
        ready(&strict).await;
        let head = || async {
            let h: Value = http()
                .get(format!("{base}/api/dev/version-ws/health"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            h["headSeq"].as_u64().unwrap()
        };
        let before = head().await;
        let post =
            |path: &str, headers: Vec<(&'static str, String)>, body: Option<Vec<u8>>, on: &str| {
                let mut r = http().post(format!("{on}{path}"));
                for (k, v) in headers {
                    r = r.header(k, v);
                }
                if let Some(b) = body {
                    r = r.body(b);
                }
                async move {
                    let r = r.send().await.unwrap();
                    (r.status().as_u16(), r.text().await.unwrap())
                }
            };
        let csrf = |t: String| ("X-CSRF-Token", t);
        let auth = ("Authorization", bearer.clone());

        // No CSRF token.
        assert_eq!(
            post("/admin/rotate", vec![auth.clone()], None, &base).await,
            (403, "CSRF Invalid [HSL:#FF4500]".into())
        );
        // No admin credential, a wrong one.
        let r = post("/admin/rotate", vec![csrf(token(&base).await)], None, &base).await;
        assert_eq!(r.0, 401, "{r:?}");
        let r = post(
            "/admin/rotate",
            vec![
                csrf(token(&base).await),
                ("Authorization", "Bearer not-it".into()),
            ],
            None,
            &base,
        )
        .await;
        assert_eq!(r, (401, "Admin credential required [HSL:#FF4500]".into()));
        // A token spent, then reused.
        let t = token(&base).await;
        assert_eq!(
            post(
                "/api/dev/bump-version",
                vec![csrf(t.clone())],
                Some(br#"{"scope":"minor"}"#.to_vec()),
                &base
            )
            .await
            .0,
            200
        );
        let after_bump = head().await;
        assert_eq!(
            post("/admin/rotate", vec![auth.clone(), csrf(t)], None, &base)
                .await
                .0,
            403
        );
        // A token that expired (2 s here).
        let t = token(&base).await;
        tokio::time::sleep(Duration::from_millis(2200)).await;
        assert_eq!(
            post("/admin/rotate", vec![auth.clone(), csrf(t)], None, &base)
                .await
                .0,
            403
        );
        // Through our proxy, for a client outside: untrusted.
        let r = post(
            "/admin/rotate",
            vec![
                auth.clone(),
                csrf(token(&base).await),
                ("X-Forwarded-For", "203.0.113.7".into()),
            ],
            None,
            &base,
        )
        .await;
        assert_eq!(r, (403, "Untrusted address [HSL:#FF4500]".into()));
        // A peer that is not a proxy claims a trusted address: ignored.
        let r = post(
            "/admin/rotate",
            vec![
                auth.clone(),
                csrf(token(&strict).await),
                ("X-Forwarded-For", "10.1.2.3".into()),
            ],
            None,
            &strict,
        )
        .await;
        assert_eq!(r, (403, "Untrusted address [HSL:#FF4500]".into()));
        // Bodies and headers that make no sense.
        let bump = |body: &[u8], key: Option<&str>| {
            let mut h = vec![];
            if let Some(k) = key {
                h.push(("X-Key-Version", k.to_string()));
            }
            post("/api/dev/bump-version", h, Some(body.to_vec()), &base)
        };
        let r = bump(b"{not json", None).await;
        assert!(r.0 == 400 && r.1.contains("scope"), "{r:?}");
        let r = bump(br#"{"scope":"huge"}"#, None).await;
        assert!(r.0 == 400 && r.1.contains("huge"), "{r:?}");
        assert_eq!(bump(&vec![b' '; 64 * 1024], None).await.0, 413);
        let r = bump(br#"{"scope":"patch"}"#, Some("v99")).await;
        assert!(r.0 == 400 && r.1.contains("v99"), "{r:?}");
        let r = bump(br#"{"scope":"patch"}"#, Some("latest")).await;
        assert!(r.0 == 400 && r.1.contains("latest"), "{r:?}");
        // A WebSocket asking for a subprotocol that is not ours.
        let ws = format!("ws://{addr}/api/dev/version-ws").into_client_request_with("chat");
        match tokio_tungstenite::connect_async(ws).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 400),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            head().await,
            after_bump,
            "nothing but the one good bump changed the ledger"
        );
        assert_eq!(
            after_bump,
            before + 2,
            "the bump: its signature and its version_bump"
        );
        // With everything right, it goes through.
        let r = post(
            "/admin/rotate",
            vec![auth.clone(), csrf(token(&base).await)],
            None,
            &base,
        )
        .await;
        assert_eq!(r.0, 200, "{r:?}");
    });
    std::thread::sleep(Duration::from_millis(300));
    let seen = rejections.lock().unwrap().clone();
    let reasons: Vec<String> = seen
        .iter()
        .map(|v| {
            v["body"]["rejected"]["reason"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    for expected in [
        "no X-CSRF-Token",
        "bearer",
        "already used",
        "expired",
        "203.0.113.7 is not in TES_PROXY_IPS",
        "127.0.0.1 is not in TES_PROXY_IPS",
        "unknown subprotocol",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "no rejected event saying {expected:?}: {reasons:#?}"
        );
    }
    drop(watcher);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("tes_gateway::access"), "access log lines");
    for secret in [ADMIN, V1, V2] {
        assert!(!logged.contains(secret), "a secret in the log");
        assert!(
            !seen.iter().any(|v| v.to_string().contains(secret)),
            "a secret in an event"
        );
    }
}

trait WithProtocol {
    fn into_client_request_with(
        self,
        protocol: &str,
    ) -> tokio_tungstenite::tungstenite::handshake::client::Request;
}

impl WithProtocol for String {
    fn into_client_request_with(
        self,
        protocol: &str,
    ) -> tokio_tungstenite::tungstenite::handshake::client::Request {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut r = self.into_client_request().unwrap();
        r.headers_mut()
            .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
        r
    }
}

#[test]
fn a_tes_ui_v2_websocket_is_refused_before_rotation_and_accepted_after() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, base) = embedded_gateway(dir.path(), &[]);
    let ws_url = base.replace("http://", "ws://") + "/api/dev/version-ws";
    rt().block_on(async {
        match tokio_tungstenite::connect_async(ws_url.clone().into_client_request_with("tes-ui-v2"))
            .await
        {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), 403);
                let body = String::from_utf8(r.body().clone().unwrap_or_default()).unwrap();
                assert_eq!(body, "Deprecate V1 [HSL:#FF4500]");
            }
            other => panic!("expected 403, got {other:?}"),
        }
        // v1 clients are fine.
        let (ws, _) =
            tokio_tungstenite::connect_async(ws_url.clone().into_client_request_with("tes-ui-v1"))
                .await
                .unwrap();
        drop(ws);
        let t = token(&base).await;
        let r = http()
            .post(format!("{base}/admin/rotate"))
            .header("X-CSRF-Token", t)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let (mut ws, response) =
            tokio_tungstenite::connect_async(ws_url.into_client_request_with("tes-ui-v2"))
                .await
                .unwrap();
        assert_eq!(response.headers()["sec-websocket-protocol"], "tes-ui-v2");
        use futures_util::StreamExt;
        let first: Value =
            serde_json::from_str(ws.next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
        assert_eq!(
            (
                first["type"].as_str(),
                first["status"]["keyVersion"].as_str()
            ),
            (Some("status"), Some("2"))
        );
        // Events stream as they happen.
        bump_patch(&base).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let v: Value = serde_json::from_str(next.to_text().unwrap()).unwrap();
            if v["event"]["body"]["version_bump"].is_object() {
                break;
            }
            assert!(Instant::now() < deadline);
        }
    });
    drop(daemon);
}

/// The admin console's reads: the ledger's last events (filtered, paged),
/// the signers and the gate, the audit view and a full verification that
/// finds a row someone rewrote in the file. None of them writes.
#[test]
fn the_consoles_reads_answer_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, base) = embedded_gateway(dir.path(), &[]);
    rt().block_on(async {
        for _ in 0..3 {
            bump_patch(&base).await;
        }
        let b = base.as_str();
        let get = |path: String| async move {
            let r = http().get(format!("{b}{path}")).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        };
        let json = |body: &str| serde_json::from_str::<Value>(body).unwrap();
        let head = |body: &str| json(body)["headSeq"].as_u64().unwrap();
        let (_, health) = get("/api/dev/version-ws/health".into()).await;
        let head_seq = head(&health);

        let (status, body) = get("/api/events?limit=5".into()).await;
        assert_eq!(status, 200, "{body}");
        let page = json(&body);
        let seqs: Vec<u64> = page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, ((head_seq - 4)..=head_seq).collect::<Vec<_>>());
        // A bump: its version_bump, then its signature.
        let newest = &page["events"][4];
        assert_eq!(newest["label"], "signature:generated", "{newest}");
        assert!(
            page["events"][3]["event"]["body"]["version_bump"].is_object(),
            "{page}"
        );
        assert!(newest["hsl"].as_str().unwrap().starts_with('#'));
        assert_eq!(page["nextBefore"].as_u64(), Some(head_seq - 4));

        let (_, body) =
            get("/api/events?kind=key_rotate,key_provisioned&thread=0x6001".into()).await;
        let kinds: Vec<String> = json(&body)["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                e["event"]["body"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .next()
                    .unwrap()
                    .clone()
            })
            .collect();
        assert_eq!(
            kinds,
            ["key_provisioned", "key_provisioned", "key_rotate"],
            "{body}"
        );

        for (query, says) in [
            ("kind=key_rotated", "unknown event kind"),
            ("thread=0x9999", "unknown thread"),
            ("limit=5000", "out of range"),
            ("limit=ten", "limit"),
            ("colour=red", "unknown field"),
        ] {
            let (status, body) = get(format!("/api/events?{query}")).await;
            assert_eq!(status, 400, "{query}: {body}");
            assert!(body.contains(says), "{query}: {body}");
        }

        let (status, body) = get("/api/signers".into()).await;
        assert_eq!(status, 200, "{body}");
        let signers = json(&body);
        assert_eq!(signers["next"], "v2");
        assert_eq!(signers["refusal"], Value::Null, "{body}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, body) = get("/api/signers".into()).await;
            let names: Vec<String> = json(&body)["signers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["name"].as_str().unwrap().to_string())
                .collect();
            if names.contains(&"writer".to_string()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the writer's heartbeat never showed: {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        let (status, body) = get("/api/audit".into()).await;
        assert_eq!(status, 200, "{body}");
        let audit = json(&body);
        assert!(audit["vkey"].as_str().unwrap().contains('+'), "{body}");
        assert!(!audit["witnesses"].as_array().unwrap().is_empty(), "{body}");
        assert_eq!(audit["verification"], Value::Null);

        let verify = || async move {
            let r = http()
                .post(format!("{b}/api/audit/verify"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        };
        let verified = verify().await;
        assert_eq!(verified["verification"]["ok"], true, "{verified}");
        assert_eq!(verified["verification"]["events"].as_u64(), Some(head_seq));
        let (_, health) = get("/api/dev/version-ws/health".into()).await;
        assert_eq!(head(&health), head_seq, "the reads wrote nothing");

        // The adversary with the file rewrites an old row: the button finds it.
        rusqlite::Connection::open(dir.path().join("ledger.db"))
            .unwrap()
            .execute_batch(
                "DROP TRIGGER events_append_only_update;
                 UPDATE events SET ts = ts + 1 WHERE seq = 2;",
            )
            .unwrap();
        let found = verify().await;
        assert_eq!(found["verification"]["ok"], false, "{found}");
        assert_eq!(
            found["verification"]["firstBadSeq"].as_u64(),
            Some(2),
            "{found}"
        );
    });
}

/// A chromedriver on a free port, killed on drop.
#[test]
fn the_admin_page_in_headless_chromium_rotates_and_shows_it_live() {
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, base) = embedded_gateway(dir.path(), &[]);
    rt().block_on(async move {
        let browser = support::browser::Chromium::start(1280).await;
        let outcome = drive(&browser.client, &base).await;
        browser.close().await;
        outcome.unwrap();
    });
}

/// `POST /api/dev/bump-version {"scope":"patch"}`, which must succeed.
async fn bump_patch(base: &str) {
    let r = http()
        .post(format!("{base}/api/dev/bump-version"))
        .body(r#"{"scope":"patch"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// The ledger's events of `kind`, as `GET /api/events?kind=` lists them.
async fn ledger_events(base: &str, kind: &str) -> Result<Value, String> {
    let r = http()
        .get(format!("{base}/api/events?kind={kind}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    r.json().await.map_err(|e| e.to_string())
}

/// Signs `n` manifests in one `POST /api/sign/batch` (a CSRF token each time).
async fn sign_many(base: &str, n: usize, tag: &str) {
    let items: Vec<Value> = (0..n)
        .map(|i| serde_json::json!({"payload": format!("{tag}-{i}")}))
        .collect();
    let r = http()
        .post(format!("{base}/api/sign/batch"))
        .header("X-CSRF-Token", token(base).await)
        .json(&serde_json::json!({ "items": items }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// The console during a rotation, as an operator watches it: traffic moves
/// from v1 to v2 and the chart's lines cross, the timeline shows v1
/// verifying until its grace end, the feed starts with what happened before
/// the page loaded and filters by kind, the verify button checks the chain,
/// a grace change lands in the ledger. At 1280 and 375 px, light and dark,
/// axe-core finds nothing serious and the page loads nothing from outside.
#[test]
fn the_admin_console_shows_the_migration_as_it_happens() {
    use support::browser::{artifacts, Chromium, Scheme};
    let dir = tempfile::tempdir().unwrap();
    // A two-minute window: one-second buckets, so a scripted rotation
    // spans many of them.
    let (_daemon, base) = embedded_gateway(dir.path(), &[("TES_METRICS_WINDOW", "2m")]);
    rt().block_on(async move {
        sign_many(&base, 40, "before-the-page").await;
        let browser = Chromium::start(1280).await;
        let outcome = console(&browser, &base).await;
        if outcome.is_err() {
            let _ = browser.screenshot("admin-console-failed.png").await;
        }
        browser.close().await;
        outcome.unwrap();
        // Dark, as a phone set to dark shows it.
        let dark = Chromium::start_in(375, Scheme::Dark).await;
        let outcome = async {
            dark.client
                .goto(&format!("{base}/admin"))
                .await
                .map_err(|e| e.to_string())?;
            dark.wait_text("#active", Duration::from_secs(10), |t| t == "v2")
                .await?;
            let background = dark
                .client
                .execute(
                    "return getComputedStyle(document.documentElement).backgroundColor",
                    vec![],
                )
                .await
                .map_err(|e| e.to_string())?;
            if background != "rgb(20, 17, 25)" {
                return Err(format!("not the dark scheme: page background {background}"));
            }
            tokio::time::sleep(Duration::from_millis(1500)).await;
            dark.screenshot_page("admin-console-375-dark.png", 375)
                .await?;
            let serious = dark.axe_serious().await?;
            if !serious.is_empty() {
                return Err(format!("axe-core, dark, 375 px:\n{}", serious.join("\n")));
            }
            Ok::<(), String>(())
        }
        .await;
        dark.close().await;
        outcome.unwrap();
    });
    assert!(artifacts().join("admin-console-1280.png").exists());
}

async fn console(browser: &support::browser::Chromium, base: &str) -> Result<(), String> {
    use fantoccini::Locator;
    let client = &browser.client;
    let e = |e: fantoccini::error::CmdError| e.to_string();
    let within = Duration::from_secs(15);
    client.goto(&format!("{base}/admin")).await.map_err(e)?;
    browser.wait_text("#active", within, |t| t == "v1").await?;
    browser
        .wait_text("#feed-state", within, |t| t.eq_ignore_ascii_case("live"))
        .await?;
    // The feed starts with the ledger's last events, from before the load.
    client
        .wait()
        .at_most(within)
        .for_element(Locator::Css("#feed li.past[data-kind=signature_generated]"))
        .await
        .map_err(e)?;
    // Traffic on v1 for a few buckets, the rotation from the page, then v2.
    for i in 0..3 {
        sign_many(base, 20, &format!("v1-{i}")).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    browser.click("#rotate").await?;
    browser.wait_text("#active", within, |t| t == "v2").await?;
    for i in 0..5 {
        sign_many(base, 20, &format!("v2-{i}")).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    browser
        .wait_for("#chart-legend li[data-version=v2]", within, "100.0%")
        .await?;
    // The lines cross: v1 from all to none, v2 from none to all (the y of
    // a point grows downwards).
    let ends = client
        .execute(
            "const ends = (v) => { const lines = [...document.querySelectorAll(`#chart polyline[data-version=${v}]`)];
                 if (!lines.length) return null;
                 const pts = lines.flatMap(p => p.getAttribute('points').trim().split(' ').map(xy => parseFloat(xy.split(',')[1])));
                 return [pts[0], pts[pts.length - 1]]; };
             return [ends('v1'), ends('v2')];",
            vec![],
        )
        .await
        .map_err(e)?;
    let y = |v: usize, end: usize| ends[v][end].as_f64();
    match (y(0, 0), y(0, 1), y(1, 0), y(1, 1)) {
        (Some(v1_first), Some(v1_last), Some(v2_first), Some(v2_last))
            if v1_first < v1_last && v2_first > v2_last && v2_last < v1_last => {}
        _ => return Err(format!("the lines do not cross: {ends}")),
    }
    // The rotation is marked on the time axis.
    client
        .find(Locator::Css("#chart line.marker[data-kind=key_rotate]"))
        .await
        .map_err(e)?;
    // The timeline: v1 verifying until its grace end.
    browser
        .wait_for(
            "#timeline-list li[data-version=v1]",
            within,
            "verifying until",
        )
        .await?;
    browser
        .wait_for("#timeline-list li[data-version=v2]", within, "active since")
        .await?;
    // Signers and the gate: nothing after v2 to promote.
    browser
        .wait_for("#gate", within, "Nothing to promote")
        .await?;
    browser
        .wait_for("#signers tbody tr[data-signer=writer]", within, "v2")
        .await?;
    // Audit: the checkpoint, then the chain verified from the page.
    browser
        .wait_text("#checkpoint", within, |t| t.starts_with("tree size"))
        .await?;
    browser.click("#verify").await?;
    browser
        .wait_text("#verify-result", within, |t| {
            t.starts_with("Chain verified")
        })
        .await?;
    browser
        .wait_for("#witnesses tbody tr[data-agrees=true]", within, "yes")
        .await?;
    // A grace change from the page, in place, and in the ledger.
    browser.click("#grace-box summary").await?;
    let field = client
        .find(Locator::Css("#grace-version"))
        .await
        .map_err(e)?;
    field.send_keys("v1").await.map_err(e)?;
    let extend = client
        .find(Locator::Css("#grace-extend"))
        .await
        .map_err(e)?;
    extend.clear().await.map_err(e)?;
    extend.send_keys("2h").await.map_err(e)?;
    browser.click("#grace").await?;
    browser
        .wait_text("#result", within, |t| {
            t.contains("v1") && !t.contains("refused") && !t.ends_with('…')
        })
        .await?;
    let grace = ledger_events(base, "grace_changed").await?;
    if grace["events"].as_array().is_none_or(|a| a.len() != 1) {
        return Err(format!("the grace change is not in the ledger: {grace}"));
    }
    // Filtered by kind: the feed shows only rotations, from the ledger.
    browser.click("#feed-kind option[value=key_rotate]").await?;
    let deadline = Instant::now() + within;
    loop {
        let kinds = client
            .execute(
                "return [...document.querySelectorAll('#feed li[data-kind]')].map(li => li.dataset.kind)",
                vec![],
            )
            .await
            .map_err(e)?;
        let kinds: Vec<String> = serde_json::from_value(kinds).map_err(|e| e.to_string())?;
        if !kinds.is_empty() && kinds.iter().all(|k| k == "key_rotate") && kinds.len() == 2 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("the kind filter shows {kinds:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The keyboard alone: Tab from the top reaches the verify button (past
    // every control before it), and Enter presses it.
    client
        .execute(
            "document.getElementById('verify-result').textContent = ''",
            vec![],
        )
        .await
        .map_err(e)?;
    keyboard_reaches_and_presses(client, "verify").await?;
    browser
        .wait_text("#verify-result", within, |t| {
            t.starts_with("Chain verified")
        })
        .await?;
    browser
        .screenshot_page("admin-console-1280.png", 1280)
        .await?;
    let serious = browser.axe_serious().await?;
    if !serious.is_empty() {
        return Err(format!("axe-core, light, 1280 px:\n{}", serious.join("\n")));
    }
    // Nothing from anywhere but the gateway.
    let outside = client
        .execute(
            "return performance.getEntriesByType('resource').map(r => r.name).filter(n => !n.startsWith(location.origin) && !n.startsWith('ws://' + location.host))",
            vec![],
        )
        .await
        .map_err(e)?;
    if outside.as_array().is_none_or(|a| !a.is_empty()) {
        return Err(format!("loaded from outside the gateway: {outside}"));
    }
    // A phone: nothing wider than the screen, and still no serious finding.
    client.set_window_size(375, 812).await.map_err(e)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let overflow = overflow_px(client).await?;
    if overflow > 0 {
        return Err(format!(
            "the page is {overflow} px wider than a 375 px phone"
        ));
    }
    browser
        .screenshot_page("admin-console-375.png", 375)
        .await?;
    let serious = browser.axe_serious().await?;
    if !serious.is_empty() {
        return Err(format!("axe-core, light, 375 px:\n{}", serious.join("\n")));
    }
    Ok(())
}

/// How many pixels the page is wider than the window (0: it fits).
async fn overflow_px(client: &fantoccini::Client) -> Result<i64, String> {
    let wider = client
        .execute(
            "return document.documentElement.scrollWidth - window.innerWidth",
            vec![],
        )
        .await
        .map_err(|e| e.to_string())?;
    wider.as_i64().ok_or(format!("not a width: {wider}"))
}

/// Presses Tab from the top of the page until the element with `id` has the
/// focus, then Enter; fails if Tab never gets there.
async fn keyboard_reaches_and_presses(client: &fantoccini::Client, id: &str) -> Result<(), String> {
    use fantoccini::actions::{InputSource, KeyAction, KeyActions};
    use fantoccini::key::Key;
    let e = |e: fantoccini::error::CmdError| e.to_string();
    let press = |key: Key| {
        KeyActions::new("keyboard".into())
            .then(KeyAction::Down { value: key.into() })
            .then(KeyAction::Up { value: key.into() })
    };
    client
        .execute(
            "document.activeElement.blur(); window.scrollTo(0, 0);",
            vec![],
        )
        .await
        .map_err(e)?;
    let mut path = Vec::new();
    for _ in 0..120 {
        client.perform_actions(press(Key::Tab)).await.map_err(e)?;
        let focused = client
            .execute(
                "return document.activeElement.id || document.activeElement.tagName",
                vec![],
            )
            .await
            .map_err(e)?;
        let focused = focused.as_str().unwrap_or_default().to_string();
        if focused == id {
            return client.perform_actions(press(Key::Enter)).await.map_err(e);
        }
        path.push(focused);
    }
    Err(format!("Tab never reached #{id}: {path:?}"))
}

async fn drive(client: &fantoccini::Client, base: &str) -> Result<(), String> {
    use fantoccini::Locator;
    let e = |e: fantoccini::error::CmdError| e.to_string();
    let text_of = |css: &'static str| async move {
        client
            .find(Locator::Css(css))
            .await
            .map_err(e)?
            .text()
            .await
            .map_err(e)
    };
    let wait_text = |css: &'static str, want: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // As shown: the page's CSS may upper-case a label.
            if text_of(css)
                .await
                .is_ok_and(|t| t.trim().eq_ignore_ascii_case(want))
            {
                return Ok::<(), String>(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{css} never showed {want:?} (shows {:?})",
                    text_of(css).await
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let click = |css: &'static str| async move {
        client
            .find(Locator::Css(css))
            .await
            .map_err(e)?
            .click()
            .await
            .map_err(e)
    };
    client.goto(&format!("{base}/admin")).await.map_err(e)?;
    wait_text("#active", "v1").await?;
    wait_text("#feed-state", "live").await?;
    wait_text("#keys tbody tr[data-version=v2] .pill", "provisioned").await?;
    click("#rotate").await?;
    // Without a reload: the active version, the key states and the feed.
    wait_text("#active", "v2").await?;
    wait_text("#keys tbody tr[data-version=v1] .pill", "verifying").await?;
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#feed li[data-kind=key_rotate]"))
        .await
        .map_err(e)?;
    let result = text_of("#result").await?;
    if !result.contains("v2 is active") {
        return Err(format!("the result line says {result:?}"));
    }
    std::fs::write(
        support::browser::artifacts().join("admin-page.png"),
        client.screenshot().await.map_err(e)?,
    )
    .map_err(|e| e.to_string())?;
    // A second rotation has nothing to rotate to: the error is shown, not swallowed.
    click("#rotate").await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = text_of("#result").await?;
        if r.contains("V3 key not configured") {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("no error shown: {r:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Revoke from the page: only with the version typed a second time.
    let fill = |css: &'static str, value: &'static str| async move {
        let field = client.find(Locator::Css(css)).await.map_err(e)?;
        field.clear().await.map_err(e)?;
        field.send_keys(value).await.map_err(e)
    };
    click("#revoke-box summary").await?;
    fill("#revoke-version", "v1").await?;
    fill("#revoke-reason", "leaked in a browser test").await?;
    fill("#revoke-confirm", "v2").await?;
    click("#revoke").await?;
    let r = text_of("#result").await?;
    if !r.contains("not sent") {
        return Err(format!("a mistyped confirmation must stop it: {r:?}"));
    }
    fill("#revoke-confirm", "v1").await?;
    click("#revoke").await?;
    wait_text("#keys tbody tr[data-version=v1] .pill", "revoked").await?;
    let r = text_of("#result").await?;
    if !r.contains("v1 revoked") {
        return Err(format!("the revocation's result: {r:?}"));
    }
    // Once, in the ledger, with the reason typed into the page (the
    // mistyped confirmation sent nothing).
    let revoked = ledger_events(base, "key_revoked").await?;
    let reasons: Vec<&str> = revoked["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["event"]["body"]["key_revoked"]["reason"].as_str())
        .collect();
    if reasons != ["leaked in a browser test"] {
        return Err(format!("the ledger's revocations: {revoked}"));
    }
    // A phone's width: nothing wider than the screen.
    client.set_window_size(390, 844).await.map_err(e)?;
    let overflow = overflow_px(client).await?;
    if overflow > 0 {
        return Err(format!("the page is {overflow} px wider than a phone"));
    }
    std::fs::write(
        support::browser::artifacts().join("admin-page-phone.png"),
        client.screenshot().await.map_err(e)?,
    )
    .map_err(|e| e.to_string())?;
    Ok(())
}

#[test]
fn a_client_that_asks_too_fast_is_slowed_down() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _daemon = Daemon::spawn(
        env(with_keys(tes(dir.path())), &[("TES_HTTP_ADDR", &addr)]),
        &["--http-rate", "2"],
    );
    let base = format!("http://{addr}");
    rt().block_on(async {
        ready(&base).await;
        let mut codes = Vec::new();
        for _ in 0..20 {
            codes.push(
                http()
                    .get(format!("{base}/api/auth/csrf-token"))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16(),
            );
        }
        assert!(codes.contains(&429), "{codes:?}");
        assert!(
            codes.iter().filter(|c| **c == 200).count() <= 6,
            "a burst of twice the rate at most: {codes:?}"
        );
        // A 429 says when to come back; health and metrics are never limited.
        let r = http()
            .get(format!("{base}/api/auth/csrf-token"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "1");
        for _ in 0..30 {
            let r = http()
                .get(format!("{base}/api/dev/version-ws/health"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "health is outside the rate limit");
        }
    });
}

#[test]
fn errors_are_problem_json_for_json_clients_and_pages_carry_security_headers() {
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, base) = embedded_gateway(dir.path(), &[]);
    rt().block_on(async {
        // A refused admin rotation (no CSRF token), asked for as JSON.
        let r = http()
            .post(format!("{base}/admin/rotate"))
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["status"], 403);
        assert_eq!(p["title"], "Forbidden");
        assert_eq!(p["detail"], "CSRF Invalid");
        assert_eq!(p["hsl"], "#FF4500");
        assert_eq!(p["instance"], "/admin/rotate");
        // The seed's curl (no Accept) still gets its line of text.
        let r = http()
            .post(format!("{base}/admin/rotate"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), "CSRF Invalid [HSL:#FF4500]");
        // An X-Key-Version that is not a version: a 400 that says why.
        let r = http()
            .post(format!("{base}/api/dev/bump-version"))
            .header("X-Key-Version", "v2\u{e9}")
            .body(r#"{"scope":"patch"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert!(
            !r.text().await.unwrap().trim().is_empty(),
            "no empty error body"
        );
        // Every page: CSP, no framing, no sniffing, no referrer.
        for path in [
            "/admin",
            "/admin/app.js",
            "/api/dev/version-ws/health",
            "/nope",
        ] {
            let r = http().get(format!("{base}{path}")).send().await.unwrap();
            let h = r.headers();
            assert!(
                h["content-security-policy"]
                    .to_str()
                    .unwrap()
                    .contains("frame-ancestors 'none'"),
                "{path}"
            );
            assert_eq!(h["x-frame-options"], "DENY", "{path}");
            assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
            assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
            if r.status() == 404 {
                assert!(!r.text().await.unwrap().is_empty(), "a 404 says so");
            }
        }
    });
}

#[test]
fn revoke_and_grace_over_http_take_the_admin_checks_of_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    const ADMIN: &str = "e2e-admin-token-for-revoke-5b1c";
    let (_daemon, base) = embedded_gateway(dir.path(), &[("TES_ADMIN_TOKEN", ADMIN)]);
    rt().block_on(async {
        let post = |path: &str, t: Option<String>, admin: bool, body: &str| {
            let mut r = http()
                .post(format!("{base}{path}"))
                .header("Content-Type", "application/json")
                .body(body.to_string());
            if let Some(t) = t {
                r = r.header("X-CSRF-Token", t);
            }
            if admin {
                r = r.header("Authorization", format!("Bearer {ADMIN}"));
            }
            async move {
                let r = r.send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }
        };
        let body = r#"{"version":"v1","reason":"leaked in a screenshot"}"#;
        // Without a CSRF token, without the admin credential: refused.
        assert_eq!(post("/admin/revoke", None, true, body).await.0, 403);
        assert_eq!(
            post("/admin/revoke", Some(token(&base).await), false, body)
                .await
                .0,
            401
        );
        // A body that is not a revocation: 400, naming the shape.
        let r = post("/admin/revoke", Some(token(&base).await), true, "{}").await;
        assert_eq!(r.0, 400, "{r:?}");
        assert!(r.1.contains("reason"), "{r:?}");
        // Rotate first, so v1 is verifying; then change its grace, then revoke it.
        let t = token(&base).await;
        let r = http()
            .post(format!("{base}/admin/rotate"))
            .header("X-CSRF-Token", t)
            .header("Authorization", format!("Bearer {ADMIN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = post(
            "/admin/grace",
            Some(token(&base).await),
            true,
            r#"{"version":"v1","extend":"2h"}"#,
        )
        .await;
        assert_eq!(r.0, 200, "{r:?}");
        let t = token(&base).await;
        let r = post("/admin/revoke", Some(t.clone()), true, body).await;
        assert_eq!(r.0, 200, "{r:?}");
        let reply: Value = serde_json::from_str(&r.1).unwrap();
        assert_eq!(reply["version"], "v1");
        assert_eq!(reply["active"], "v2");
        assert_eq!(reply["reason"], "leaked in a screenshot");
        // The spent token does not work twice; a second revocation is a conflict.
        assert_eq!(post("/admin/revoke", Some(t), true, body).await.0, 403);
        let r = post("/admin/revoke", Some(token(&base).await), true, body).await;
        assert_eq!(r.0, 409, "{r:?}");
        assert!(r.1.contains("revoked at"), "{r:?}");
    });
    let c = rusqlite::Connection::open(dir.path().join("ledger.db")).unwrap();
    let kinds: Vec<String> = c
        .prepare(
            "SELECT kind FROM events WHERE kind IN ('key_revoked','grace_changed') ORDER BY seq",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(kinds, ["grace_changed", "key_revoked"]);
}

#[test]
fn batches_over_http_sign_with_the_admin_checks_verify_openly_and_refuse_what_is_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, base) = embedded_gateway(dir.path(), &[("TES_ADMIN_TOKEN", ADMIN)]);
    rt().block_on(async {
        let items = serde_json::json!({"items": [
            {"payload": "m1"}, {"payload": "m2", "keyVersion": "v9"}, {"payload": "m3"}
        ]});
        let sign = |csrf: Option<String>, key: &'static str, body: Value| {
            let base = base.clone();
            async move {
                let mut r = http()
                    .post(format!("{base}/api/sign/batch"))
                    .header("Authorization", format!("Bearer {ADMIN}"))
                    .header("Idempotency-Key", key)
                    .header("Accept", "application/json")
                    .json(&body);
                if let Some(t) = csrf {
                    r = r.header("X-CSRF-Token", t);
                }
                let r = r.send().await.unwrap();
                let status = r.status().as_u16();
                (status, r.text().await.unwrap())
            }
        };
        const KEY: &str = "0192a3b4-c5d6-7e8f-9a0b-1c2d3e4f5a6b";
        // Signing hands out signatures: the admin checks apply.
        let (status, body) = sign(None, KEY, items.clone()).await;
        assert_eq!(status, 403, "{body}");

        let (status, body) = sign(Some(token(&base).await), KEY, items.clone()).await;
        assert_eq!(status, 200, "{body}");
        let first: Value = serde_json::from_str(&body).unwrap();
        let results = first["results"].as_array().unwrap();
        assert_eq!(results.len(), 3);
        assert_eq!(
            results[0]["ok"]["signature"],
            outside_hmac(V1, "m1").as_str()
        );
        assert_eq!(results[1]["err"]["code"], "unknown_version");
        assert_eq!(
            results[2]["ok"]["signature"],
            outside_hmac(V1, "m3").as_str()
        );

        // The same Idempotency-Key again: the same signatures and seqs,
        // marked replayed; nothing signed twice.
        let (status, body) = sign(Some(token(&base).await), KEY, items.clone()).await;
        assert_eq!(status, 200, "{body}");
        let again: Value = serde_json::from_str(&body).unwrap();
        for i in [0, 2] {
            assert_eq!(again["results"][i]["ok"]["seq"], results[i]["ok"]["seq"]);
            assert_eq!(again["results"][i]["ok"]["replayed"], true);
        }

        // Too many items, or too many bytes: 413, and nothing is signed.
        let many: Vec<Value> = (0..1001)
            .map(|i| serde_json::json!({"payload": format!("p{i}")}))
            .collect();
        let (status, body) = sign(
            Some(token(&base).await),
            "0192a3b4-c5d6-7e8f-9a0b-1c2d3e4f5a6c",
            serde_json::json!({"items": many}),
        )
        .await;
        assert_eq!(status, 413, "{body}");
        assert!(body.contains("at most 1000 items"), "{body}");
        let big = "x".repeat(1100 * 1024);
        let (status, _) = sign(
            Some(token(&base).await),
            "0192a3b4-c5d6-7e8f-9a0b-1c2d3e4f5a6d",
            serde_json::json!({"items": [{"payload": big}]}),
        )
        .await;
        assert_eq!(status, 413);

        // Verifying hands out nothing: no admin checks; one result each.
        let r = http()
            .post(format!("{base}/api/verify/batch"))
            .json(&serde_json::json!({"items": [
                {"payload": "m1", "signature": results[0]["ok"]["signature"], "keyVersion": "v1"},
                {"payload": "m1", "signature": "00".repeat(32), "keyVersion": "v1"}
            ]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["results"][0]["ok"]["valid"], true, "{v}");
        assert_eq!(v["results"][1]["ok"]["valid"], false, "{v}");
    });
    // Two signatures (m1, m3) in the ledger, each its own event, none twice.
    let ledger = rusqlite::Connection::open_with_flags(
        dir.path().join("ledger.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let signed: u64 = ledger
        .query_row(
            "SELECT count(*) FROM events WHERE kind = 'signature_generated'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(signed, 2);
}
