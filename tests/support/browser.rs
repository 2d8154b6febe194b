//! Headless Chromium driven over WebDriver (Debian's chromium-driver, which
//! tests/run installs), for the tests that look at the admin page as a
//! person would. One browser per test, on its own profile folder; stopped
//! on drop.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// A running chromedriver and its browser's profile; both go on drop.
pub struct Chromium {
    driver: std::process::Child,
    _profile: tempfile::TempDir,
    pub client: fantoccini::Client,
}

impl Chromium {
    /// A headless browser `width` × 800 pixels.
    pub async fn start(width: u32) -> Chromium {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (tests/run installs Debian's chromium-driver)");
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), "chrome".into());
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({"args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", format!("--user-data-dir={}", profile.path().display()),
                format!("--window-size={width},800")
            ]}),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match fantoccini::ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(c) => break c,
                Err(e) => {
                    assert!(Instant::now() < deadline, "chromedriver: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        Chromium {
            driver,
            _profile: profile,
            client,
        }
    }

    /// The text of the first element `css` finds.
    pub async fn text(&self, css: &str) -> Result<String, String> {
        let found = self.client.find(fantoccini::Locator::Css(css)).await;
        found
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())
    }

    /// Waits up to `within` until `css` shows text for which `want` holds.
    pub async fn wait_text(
        &self,
        css: &str,
        within: Duration,
        want: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + within;
        loop {
            let shown = self.text(css).await;
            if let Ok(t) = &shown {
                if want(t.trim()) {
                    return Ok(t.clone());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("{css} never showed what was wanted: {shown:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a screenshot as target/test-artifacts/`name`.
    pub async fn screenshot(&self, name: &str) -> Result<(), String> {
        let png = self.client.screenshot().await.map_err(|e| e.to_string())?;
        std::fs::write(artifacts().join(name), png).map_err(|e| e.to_string())
    }

    /// Closes the session (the driver stops on drop).
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// target/test-artifacts: screenshots and logs a person looks at.
pub fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
