//! A real browser for the dashboard scenarios: Debian's Chromium, headless, driven through
//! `chromedriver` (the WebDriver protocol, with the `fantoccini` client), with a fresh profile
//! and every background-networking feature off (the network here is closed, and a test must not
//! depend on it).
//!
//! The harness is blocking, so a [`Browser`] owns a small tokio runtime and each method waits
//! for its WebDriver command. Waiting for an element is WebDriver's own wait (polling the page,
//! with a deadline), never a sleep.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

use crate::error::{Error, Result, io};
use crate::process::{Proc, poll_until};

/// How long a page or an element may take to appear.
const WAIT: Duration = Duration::from_secs(15);

/// Chromium's flags: headless, no sandbox (tests run as root), and nothing that reaches out.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
];

/// The Chromium and chromedriver executables: `PLATTE_CHROMIUM` / `PLATTE_CHROMEDRIVER`, else
/// Debian's `/usr/bin/chromium` and `/usr/bin/chromedriver`. `None` when either is missing.
pub fn executables() -> Option<(PathBuf, PathBuf)> {
    let pick = |var: &str, default: &str| {
        let p = std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
        p.is_file().then_some(p)
    };
    Some((
        pick("PLATTE_CHROMIUM", "/usr/bin/chromium")?,
        pick("PLATTE_CHROMEDRIVER", "/usr/bin/chromedriver")?,
    ))
}

/// A headless Chromium session.
pub struct Browser {
    rt: tokio::runtime::Runtime,
    client: Client,
    /// chromedriver; killed on drop (it ends Chromium).
    _driver: Proc,
    /// The profile directory (`--user-data-dir`), fresh for each browser.
    _profile: tempfile::TempDir,
    shots: PathBuf,
}

fn browser_error(what: &str) -> impl FnOnce(fantoccini::error::CmdError) -> Error + '_ {
    move |e| Error::Browser {
        what: what.to_owned(),
        detail: e.to_string(),
    }
}

impl Browser {
    /// Starts chromedriver on a free loopback port (its log in `dir/chromedriver.log`) and a
    /// Chromium session through it; screenshots go to `shots`.
    pub fn start(dir: &Path, shots: &Path) -> Result<Browser> {
        let (chromium, chromedriver) = executables().ok_or_else(|| Error::Browser {
            what: "finding Chromium".into(),
            detail: "install Debian's chromium and chromium-driver".into(),
        })?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io("finding a free port", "127.0.0.1:0"))?
            .port();
        let mut cmd = Command::new(&chromedriver);
        cmd.arg(format!("--port={port}"));
        let mut driver = Proc::spawn("chromedriver", cmd, &dir.join("chromedriver.log"))?;
        driver.wait_for_line("started successfully", WAIT)?;
        let profile = tempfile::Builder::new()
            .prefix("platte-chromium-")
            .tempdir()
            .map_err(io("creating a browser profile", std::env::temp_dir()))?;
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| (*a).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"binary": chromium, "args": args}),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io("starting the browser's runtime", "tokio"))?;
        let url = format!("http://127.0.0.1:{port}");
        // chromedriver said it listens; the session may still take a moment to start Chromium.
        let client = poll_until(
            "a Chromium session",
            WAIT,
            || {
                rt.block_on(
                    ClientBuilder::new(HttpConnector::new())
                        .capabilities(caps.clone())
                        .connect(&url),
                )
                .ok()
            },
            || driver.log_tail(20),
        )?;
        std::fs::create_dir_all(shots).map_err(io("creating the screenshot directory", shots))?;
        Ok(Browser {
            rt,
            client,
            _driver: driver,
            _profile: profile,
            shots: shots.to_path_buf(),
        })
    }

    /// Opens `url` and waits for its page.
    pub fn goto(&self, url: &str) -> Result<()> {
        self.rt
            .block_on(self.client.goto(url))
            .map_err(browser_error(url))
    }

    /// The page's URL now.
    pub fn url(&self) -> Result<String> {
        self.rt
            .block_on(self.client.current_url())
            .map(|u| u.to_string())
            .map_err(browser_error("reading the URL"))
    }

    /// Waits for the element `css` and returns it.
    pub fn find(&self, css: &str) -> Result<Element> {
        self.rt
            .block_on(
                self.client
                    .wait()
                    .at_most(WAIT)
                    .for_element(Locator::Css(css)),
            )
            .map_err(browser_error(css))
    }

    /// Whether an element `css` is on the page now (no waiting).
    pub fn has(&self, css: &str) -> Result<bool> {
        self.rt
            .block_on(self.client.find_all(Locator::Css(css)))
            .map(|v| !v.is_empty())
            .map_err(browser_error(css))
    }

    /// The elements `css` on the page now.
    pub fn all(&self, css: &str) -> Result<Vec<Element>> {
        self.rt
            .block_on(self.client.find_all(Locator::Css(css)))
            .map_err(browser_error(css))
    }

    /// The visible text of element `css`.
    pub fn text(&self, css: &str) -> Result<String> {
        let e = self.find(css)?;
        self.rt.block_on(e.text()).map_err(browser_error(css))
    }

    /// The visible text of a found element.
    pub fn text_of(&self, e: &Element) -> Result<String> {
        self.rt
            .block_on(e.text())
            .map_err(browser_error("reading text"))
    }

    /// An attribute of element `css`.
    pub fn attr(&self, css: &str, name: &str) -> Result<Option<String>> {
        let e = self.find(css)?;
        self.rt.block_on(e.attr(name)).map_err(browser_error(css))
    }

    /// The page's HTML as the browser holds it.
    pub fn source(&self) -> Result<String> {
        self.rt
            .block_on(self.client.source())
            .map_err(browser_error("reading the page"))
    }

    /// Clicks element `css` (a link or a submit button loads the next page).
    pub fn click(&self, css: &str) -> Result<()> {
        let e = self.find(css)?;
        self.rt.block_on(e.click()).map_err(browser_error(css))
    }

    /// Clicks the submit button (or link) `css` and waits until the browser has left the page
    /// (the old page's root element is gone: WebDriver calls it stale) and the next one has
    /// loaded. A click alone may return before the form's answer replaced the page.
    pub fn submit(&self, css: &str) -> Result<()> {
        let e = self.find(css)?;
        let root = self.find("html")?;
        self.rt.block_on(e.click()).map_err(browser_error(css))?;
        poll_until(
            "the next page",
            WAIT,
            || self.rt.block_on(root.tag_name()).is_err().then_some(()),
            || format!("still on the page of {css}"),
        )?;
        self.find("body").map(|_| ())
    }

    /// Replaces the value of the input `css` with `text`.
    pub fn fill(&self, css: &str, text: &str) -> Result<()> {
        let e = self.find(css)?;
        self.rt
            .block_on(async {
                e.clear().await?;
                e.send_keys(text).await
            })
            .map_err(browser_error(css))
    }

    /// Chooses the option `value` of the `<select>` `css`.
    pub fn select(&self, css: &str, value: &str) -> Result<()> {
        let e = self.find(css)?;
        self.rt
            .block_on(e.select_by_value(value))
            .map_err(browser_error(css))
    }

    /// Sets the file of the `<input type=file>` `css` to `path` (as a user picking it).
    pub fn choose_file(&self, css: &str, path: &Path) -> Result<()> {
        let e = self.find(css)?;
        self.rt
            .block_on(e.send_keys(&path.display().to_string()))
            .map_err(browser_error(css))
    }

    /// Saves a PNG screenshot of the whole page (the window grown to the page's height for it)
    /// as `<shots>/<name>.png` and returns its path.
    pub fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let png = self
            .rt
            .block_on(async {
                let (w, h) = self.client.get_window_size().await?;
                let height = self
                    .client
                    .execute("return document.documentElement.scrollHeight;", vec![])
                    .await?
                    .as_u64()
                    .unwrap_or(h);
                // The window is a little taller than its page area: leave room for the page.
                let grown = u32::try_from(height.max(h) + 120).unwrap_or(8000).min(8000);
                let (w, h) = (
                    u32::try_from(w).unwrap_or(1280),
                    u32::try_from(h).unwrap_or(1000),
                );
                self.client.set_window_size(w, grown).await?;
                let png = self.client.screenshot().await;
                self.client.set_window_size(w, h).await?;
                png
            })
            .map_err(browser_error("taking a screenshot"))?;
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).map_err(io("writing a screenshot", &path))?;
        Ok(path)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let client = self.client.clone();
        let _ = self.rt.block_on(client.close());
    }
}
