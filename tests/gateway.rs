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
        let r = http()
            .post(format!("{base}/api/dev/bump-version"))
            .body(r#"{"scope":"patch"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
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
    // A phone's width: nothing wider than the screen.
    client.set_window_size(390, 844).await.map_err(e)?;
    let overflow = client
        .execute(
            "return document.documentElement.scrollWidth - window.innerWidth",
            vec![],
        )
        .await
        .map_err(e)?;
    if overflow.as_i64().unwrap_or(1) > 0 {
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
