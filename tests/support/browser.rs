//! Headless Chromium driven over WebDriver (Debian's chromium-driver, which
//! tests/run installs), for the tests that look at the admin page as a
//! person would. One browser per test, on its own profile folder; stopped
//! on drop.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// The colour scheme a browser reports to pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Light,
    Dark,
}

/// A running chromedriver and its browser's profile; both go on drop.
pub struct Chromium {
    driver: std::process::Child,
    _profile: tempfile::TempDir,
    pub client: fantoccini::Client,
}

impl Chromium {
    /// A headless browser `width` × 800 pixels.
    pub async fn start(width: u32) -> Chromium {
        Chromium::start_in(width, Scheme::Light).await
    }

    /// A headless browser `width` × 800 pixels whose pages see `scheme`
    /// as the system's colour scheme (`prefers-color-scheme`).
    pub async fn start_in(width: u32, scheme: Scheme) -> Chromium {
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
        let mut args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            format!("--user-data-dir={}", profile.path().display()),
            format!("--window-size={width},800"),
        ];
        if scheme == Scheme::Dark {
            // Blink's preferred scheme: 0 is dark.
            args.push("--blink-settings=preferredColorScheme=0".into());
            args.push("--force-dark-mode".into());
        }
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "args": args }),
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

    /// Clicks the first element `css` finds.
    pub async fn click(&self, css: &str) -> Result<(), String> {
        let found = self.client.find(fantoccini::Locator::Css(css)).await;
        found
            .map_err(|e| e.to_string())?
            .click()
            .await
            .map_err(|e| e.to_string())
    }

    /// Waits up to `within` until `css` shows text containing `needle`.
    pub async fn wait_for(
        &self,
        css: &str,
        within: Duration,
        needle: &str,
    ) -> Result<String, String> {
        self.wait_text(css, within, |t| t.contains(needle)).await
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

    /// Runs axe-core (as shipped by the PyPI package axe-selenium-python,
    /// which tests/run installs into ./.venv) on the page shown, and
    /// returns its violations of impact serious or critical, one line each.
    pub async fn axe_serious(&self) -> Result<Vec<String>, String> {
        let source = std::fs::read_to_string(axe_core_js()?).map_err(|e| e.to_string())?;
        self.client
            .execute(&format!("{source}\n;return typeof axe;"), vec![])
            .await
            .map_err(|e| e.to_string())?;
        let found = self
            .client
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, {resultTypes: ['violations']})
                    .then(r => done(r.violations
                        .filter(v => v.impact === 'serious' || v.impact === 'critical')
                        .map(v => v.impact + ' ' + v.id + ': ' + v.help + ' — ' +
                             v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(' | '))))
                    .catch(e => done(['axe failed: ' + e]));",
                vec![],
            )
            .await
            .map_err(|e| e.to_string())?;
        serde_json::from_value(found).map_err(|e| e.to_string())
    }

    /// Saves the whole page, top to bottom, `width` pixels wide, as
    /// target/test-artifacts/`name` (the window is made as tall as the page).
    pub async fn screenshot_page(&self, name: &str, width: u32) -> Result<(), String> {
        let e = |e: fantoccini::error::CmdError| e.to_string();
        self.client.set_window_size(width, 800).await.map_err(e)?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let tall = self
            .client
            .execute("return document.documentElement.scrollHeight", vec![])
            .await
            .map_err(e)?
            .as_u64()
            .unwrap_or(800);
        // The window's frame takes some of its height; a little more shows all.
        let height = u32::try_from(tall).unwrap_or(4000).min(6000) + 140;
        self.client
            .set_window_size(width, height)
            .await
            .map_err(e)?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.screenshot(name).await
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

/// axe.min.js inside the axe-selenium-python package of the Python that
/// tests/run prepared (`TES_PYTHON`).
fn axe_core_js() -> Result<PathBuf, String> {
    let python = std::env::var("TES_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .args([
            "-c",
            "import axe_selenium_python, os; print(os.path.dirname(axe_selenium_python.__file__))",
        ])
        .output()
        .map_err(|e| format!("{python}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "axe-selenium-python is not installed for {python} (tests/run installs it): {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Ok(dir.join("node_modules/axe-core/axe.min.js"))
}

/// target/test-artifacts: screenshots and logs a person looks at.
pub fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
