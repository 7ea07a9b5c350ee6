//! S8: an operator runs a whole rollout from the dashboard in a real browser (Debian's Chromium,
//! headless, through chromedriver) against a real `update-server` process, while a fleet of
//! machines checks in over Omaha: log in; create a group; publish a package by upload and point
//! the channel at it; set 25 % and see the preview; watch counts and the version chart change as
//! machines update; pause and see machines held; an auto-halt appears as a banner with its
//! reason; retry a refused version from the instance page; a hostile alias renders as text; the
//! read-only login shows no control. Screenshots of the main pages go to
//! `target/dashboard-screenshots/`.
//!
//! Without Chromium the test is reported as skipped (a banner on stderr), unless
//! `PLATTE_REQUIRE_BROWSER=1` (set by `.ci/run`), which makes it fail instead.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use platte_e2e::browser::{self, Browser};
use platte_e2e::http::Http;
use platte_e2e::{APP, World};
use serde_json::{Value, json};

/// Established machines of group `stable` (they check in before the release).
const FLEET: usize = 40;
/// What a hostile client reports as its alias.
const HOSTILE: &str = r#"<img src=x id=pwned onerror="document.title='pwned'">"#;

/// The alias machine `m` reports.
fn alias_of(m: &str) -> &'static str {
    if m == "node-evil" { HOSTILE } else { "" }
}

/// The fleet: `node-00` … and one machine reporting a hostile alias.
fn fleet() -> Vec<String> {
    (0..FLEET)
        .map(|i| format!("node-{i:02}"))
        .chain(["node-evil".to_owned()])
        .collect()
}

/// An Omaha client for the fleet: one request per call, as update_engine or the agent sends.
struct Omaha {
    http: Http,
    url: String,
}

impl Omaha {
    /// Sends `body` inside `<app>` for `machine` running `version`; returns the answer.
    fn send(&self, machine: &str, alias: &str, version: &str, body: &str) -> String {
        let alias = alias
            .replace('&', "&amp;")
            .replace('"', "&quot;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        let xml = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<request protocol="3.0" version="platte-agent-0.1.0" ismachine="1">
<os version="Chateau" platform="CoreOS" sp="1_x86_64"></os>
<app appid="{{{APP}}}" version="{version}" track="stable" machineid="{machine}" machinealias="{alias}" board="amd64-usr">{body}</app>
</request>"#
        );
        let a = self.http.post_text(&self.url, "text/xml", xml).unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
        a.body
    }

    /// An update check; whether the server offered an update.
    fn check(&self, machine: &str, version: &str) -> bool {
        let x = self.send(
            machine,
            alias_of(machine),
            version,
            "<updatecheck></updatecheck>",
        );
        x.contains(r#"<updatecheck status="ok""#)
    }

    /// Reports a finished update (download, install, reboot into `to`).
    fn complete(&self, machine: &str, from: &str, to: &str) {
        for (t, r) in [(13, 1), (14, 1), (3, 1)] {
            self.send(
                machine,
                alias_of(machine),
                from,
                &format!(r#"<event eventtype="{t}" eventresult="{r}"></event>"#),
            );
        }
        self.send(
            machine,
            alias_of(machine),
            to,
            &format!(r#"<event eventtype="3" eventresult="2" previousversion="{from}"></event>"#),
        );
    }

    /// Reports that `machine` fell back from `failed` (a rollback: the version is refused).
    fn rolled_back(&self, machine: &str, running: &str, failed: &str) {
        self.send(
            machine,
            alias_of(machine),
            running,
            &format!(
                r#"<event eventtype="3" eventresult="0" errorcode="44" previousversion="{failed}"></event>"#
            ),
        );
    }
}

fn screenshots() -> PathBuf {
    platte_e2e::bins::profile_dir()
        .unwrap()
        .parent()
        .unwrap()
        .join("dashboard-screenshots")
}

#[test]
fn an_operator_runs_a_rollout_from_the_dashboard_in_a_real_browser() {
    if browser::executables().is_none() {
        assert!(
            std::env::var_os("PLATTE_REQUIRE_BROWSER").is_none_or(|v| v != "1"),
            "PLATTE_REQUIRE_BROWSER=1 but Chromium or chromedriver is missing"
        );
        eprintln!(
            "\n==== SKIPPED: the dashboard browser test needs Debian's chromium and \
             chromium-driver (apt-get install chromium chromium-driver) ====\n"
        );
        return;
    }
    let w = World::new().unwrap();
    w.setup_app().unwrap();
    // The operator starts from a closed rollout: nothing is offered until the policy opens it.
    w.set_policy(&json!({"percentage": 0})).unwrap();
    let base = w.server.url();
    let omaha = Omaha {
        http: Http::new().unwrap(),
        url: w.server.omaha_url(),
    };
    // The fleet checks in on 1.0.0 before anything is released; one reports a hostile alias.
    for m in fleet() {
        assert!(!omaha.check(&m, "1.0.0"));
    }

    let b = Browser::start(w.path(), &screenshots()).unwrap();

    // Log in: the dashboard sends a visitor without a session to the login page.
    b.goto(&format!("{base}/")).unwrap();
    b.find("#login-form").unwrap();
    b.fill("#token", w.server.token()).unwrap();
    b.submit("#login-form button[type=submit]").unwrap();
    b.find(&format!("#app-{APP}")).unwrap();
    assert_eq!(b.text("#role").unwrap(), "admin");

    // Create a group following `stable`.
    let channel = w
        .server
        .get(&format!("/apps/{APP}/channels/stable"))
        .unwrap();
    let channel_id = channel["id"].as_str().unwrap().to_owned();
    b.submit(&format!("#new-group-{APP}")).unwrap();
    b.fill("#group-name", "canary").unwrap();
    b.select("#group-channel", &channel_id).unwrap();
    b.submit("#create-group").unwrap();
    b.find("#policy-form").unwrap();
    let groups = w.server.get(&format!("/apps/{APP}/groups")).unwrap();
    assert!(
        platte_e2e::server::items(&groups)
            .iter()
            .any(|g| g["name"] == "canary"),
        "{groups}"
    );

    // Publish 2.0.0 by upload, with the same verification as the CLI, and point `stable` at it.
    let image = platte_e2e::release::os_image("2.0.0", 256 << 10);
    let img = w.path().join("usr-2.0.0.img");
    std::fs::write(&img, &image).unwrap();
    let payload = w.path().join("platte-2.0.0.payload");
    w.publisher.build(APP, "2.0.0", &img, &payload).unwrap();
    b.goto(&format!("{base}/ui/packages")).unwrap();
    b.choose_file("#publish-file", &payload).unwrap();
    b.submit("#publish-submit").unwrap();
    b.find("#notice").unwrap();
    let packages = w.server.get("/packages").unwrap();
    let pkg: Value = platte_e2e::server::items(&packages)
        .into_iter()
        .find(|p| p["version"] == "2.0.0")
        .unwrap_or_else(|| panic!("2.0.0 not published: {packages}"));
    let pkg_id = pkg["id"].as_str().unwrap().to_owned();
    b.select(&format!("#point-channel-{pkg_id}"), &channel_id)
        .unwrap();
    b.click(&format!("#point-confirm-{pkg_id}")).unwrap();
    b.submit(&format!("#point-{pkg_id}")).unwrap();
    b.find("#notice").unwrap();
    let channel = w
        .server
        .get(&format!("/apps/{APP}/channels/stable"))
        .unwrap();
    assert_eq!(channel["packages"]["amd64"], json!(pkg_id), "{channel}");
    b.screenshot("packages").unwrap();

    // Set 25 % in the policy editor and preview it before saving.
    let group_page = format!("{base}/ui/apps/{APP}/groups/stable");
    b.goto(&group_page).unwrap();
    b.submit("#edit-policy").unwrap();
    b.fill("#policy-percentage", "25").unwrap();
    b.submit("#preview-button").unwrap();
    let now: u64 = b.text("#preview-now").unwrap().trim().parse().unwrap();
    let api = w
        .server
        .get(&format!(
            "/apps/{APP}/groups/stable/rollout/preview?percent=25"
        ))
        .unwrap();
    assert_eq!(
        Some(now),
        api["added"].as_u64(),
        "the preview's count is the engine's: {api}"
    );
    assert!(now > 0 && now < FLEET as u64, "{now}");
    b.screenshot("policy-preview").unwrap();
    b.submit("#save-button").unwrap();
    b.find("#notice").unwrap();
    let policy = w.server.get(&format!("/apps/{APP}/groups/stable")).unwrap();
    assert_eq!(policy["policy"]["percentage"], json!(25.0), "{policy}");

    // The fleet checks in: the machines inside 25 % are offered 2.0.0 and complete it.
    let mut updated = Vec::new();
    for m in fleet() {
        if omaha.check(&m, "1.0.0") {
            omaha.complete(&m, "1.0.0", "2.0.0");
            updated.push(m);
        }
    }
    assert_eq!(updated.len() as u64, now, "exactly the previewed machines");
    b.goto(&group_page).unwrap();
    let versions = b.text("#versions").unwrap();
    assert!(versions.contains("2.0.0"), "{versions}");
    // The chart is drawn from the same counts and ends with "now".
    b.goto(&format!(
        "{base}/ui/apps/{APP}/groups/stable/versions.svg?range=24h"
    ))
    .unwrap();
    let svg = b.source().unwrap();
    assert!(svg.contains(&format!("2.0.0 ({})", updated.len())), "{svg}");
    b.goto(&group_page).unwrap();
    b.screenshot("group").unwrap();

    // Pause (with its confirmation): a machine checking in now is held.
    b.click("#pause-confirm").unwrap();
    b.submit("#pause").unwrap();
    assert!(
        b.text("#banners")
            .unwrap()
            .to_lowercase()
            .contains("paused")
    );
    let held = fleet().into_iter().find(|m| !updated.contains(m)).unwrap();
    assert!(!omaha.check(&held, "1.0.0"));
    let inst = w.server.instance(APP, &held).unwrap().unwrap();
    assert_eq!(inst["status"], "on_hold", "{inst}");
    assert_eq!(inst["status_detail"], "paused", "{inst}");

    // Resume, then an auto-halt: a machine rolls back from 2.0.0 and the rollout halts itself.
    b.click("#resume-confirm").unwrap();
    b.submit("#resume").unwrap();
    w.set_policy(&json!({
        "percentage": 25,
        "auto_halt": {"max_failure_rate": 0.01, "min_attempts": 1, "new_machine_weight": 1}
    }))
    .unwrap();
    let victim = updated[0].clone();
    omaha.rolled_back(&victim, "1.0.0", "2.0.0");
    b.goto(&group_page).unwrap();
    let banners = b.text("#banners").unwrap();
    assert!(banners.to_lowercase().contains("halted"), "{banners}");
    assert!(
        banners.contains("2.0.0"),
        "the banner names the halt's reason: {banners}"
    );

    // The machine refused 2.0.0; its instance page retries it.
    b.goto(&format!("{base}/ui/instances/{victim}")).unwrap();
    b.find("form.retry").unwrap();
    b.screenshot("instance").unwrap();
    b.submit("form.retry button[type=submit]").unwrap();
    b.find("#notice").unwrap();
    assert!(!b.has("form.retry").unwrap(), "the refusal is gone");

    // The hostile alias is text on the instance list: no element was injected.
    b.goto(&format!("{base}/ui/instances?search=node-evil"))
        .unwrap();
    let list = b.text("#main").unwrap();
    assert!(list.contains(HOSTILE), "{list}");
    assert!(!b.has("#pwned").unwrap());

    b.goto(&format!("{base}/")).unwrap();
    b.screenshot("overview").unwrap();

    // The read-only login shows no control anywhere.
    b.submit("#logout").unwrap();
    b.find("#login-form").unwrap();
    let read_only = std::fs::read_to_string(w.server.data_dir().join("read-only-token")).unwrap();
    b.fill("#token", read_only.trim()).unwrap();
    b.submit("#login-form button[type=submit]").unwrap();
    assert_eq!(b.text("#role").unwrap(), "read-only");
    b.goto(&group_page).unwrap();
    for control in ["#pause", "#resume", "#edit-policy"] {
        assert!(!b.has(control).unwrap(), "{control} shown to read-only");
    }
    b.goto(&format!("{base}/ui/packages")).unwrap();
    assert!(!b.has("#publish-file").unwrap());
    b.goto(&format!("{base}/ui/instances/{victim}")).unwrap();
    assert!(!b.has("form.retry button").unwrap());
}
