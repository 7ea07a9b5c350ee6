//! The web dashboard over real HTTP, each test on SQLite and on PostgreSQL: logging in with
//! either token (and not with a wrong one), the session cookie's attributes, logout, the
//! redirect without a session, CSRF refusals, the read-only role, pause / resume / retry through
//! the same operations as the admin API, the security headers of every page, hostile values
//! from Omaha clients rendered as text, and the instance list's pages.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use update_server::server::{RunningServer, start};

#[path = "../common/mod.rs"]
mod common;
#[path = "../support/db.rs"]
pub mod support_db;
mod support {
    pub use super::support_db as db;
}
// One module per part of the dashboard (each its own owner); they share `Env` and `Page`.
mod activity;
mod chart;
mod packages;
mod policy;
use support::db::TestDb;

const APP: &str = "e96281a6-d1af-4bde-9a0a-97b76e56dc57";
const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

struct Env {
    dir: tempfile::TempDir,
    server: RunningServer,
    /// A client that does not follow redirects and keeps no cookies (the tests carry them).
    http: reqwest::Client,
    base: String,
    key: payloads::SigningKey,
}

/// An answer: status, headers, body text.
struct Page {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Page {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The `Set-Cookie` headers.
    fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    /// The CSRF token of the page's first form.
    fn csrf(&self) -> String {
        self.field("csrf")
    }

    /// The value of the page's first hidden field `name`.
    fn field(&self, name: &str) -> String {
        let mark = format!(r#"name="{name}" value=""#);
        let at = self
            .body
            .find(&mark)
            .unwrap_or_else(|| panic!("no {name} field in {}", self.body));
        let rest = &self.body[at + mark.len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    }
}

impl Env {
    async fn new(db: &TestDb) -> Self {
        Self::with(db, |s| s.proxy_header = Some("x-forwarded-for".into())).await
    }

    /// A server on `db` whose settings `tweak` adjusted.
    async fn with(db: &TestDb, tweak: impl FnOnce(&mut update_server::config::Settings)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = common::trusted_key(dir.path(), "release");
        let mut s = db.settings(&dir.path().join("data"));
        s.trusted_keys = Some(dir.path().join("keys"));
        tweak(&mut s);
        let server = start(s).await.unwrap();
        let base = format!("http://{}", server.addr);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self {
            dir,
            server,
            http,
            base,
            key,
        }
    }

    async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        common::api(
            &self.http,
            &self.base,
            &self.server.admin_token,
            method.parse().unwrap(),
            path,
            body,
        )
        .await
    }

    /// An admin request that must succeed.
    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (st, v) = self.api(method, path, body).await;
        assert!(st.is_success(), "{method} {path}: {st} {v}");
        v
    }

    /// App `OS`, channel `stable` (no package yet), groups `stable` and `beta` following it,
    /// with `policy` on `stable`.
    async fn seed(&self, policy: Value) {
        self.admin("POST", "/apps", Some(json!({"id": APP, "name": "OS"})))
            .await;
        self.admin(
            "POST",
            &format!("/apps/{APP}/channels"),
            Some(json!({"name": "stable"})),
        )
        .await;
        self.admin(
            "POST",
            &format!("/apps/{APP}/groups"),
            Some(json!({"name": "stable", "channel": "stable", "policy": policy})),
        )
        .await;
        self.admin(
            "POST",
            &format!("/apps/{APP}/groups"),
            Some(json!({"name": "beta", "channel": "stable"})),
        )
        .await;
    }

    /// Publishes `payload` through the admin API (must succeed).
    async fn publish_api(&self, payload: Vec<u8>) -> Value {
        let (st, pkg) = common::publish(
            &self.http,
            &self.base,
            &self.server.admin_token,
            "update.payload",
            payload,
        )
        .await;
        assert_eq!(st, StatusCode::CREATED, "{pkg}");
        pkg
    }

    /// Publishes `version` and points channel `stable` at it.
    async fn release(&self, version: &str) {
        let payload = common::signed_payload(&self.key, APP, version, &common::image(50_000));
        let pkg = self.publish_api(payload).await;
        self.admin(
            "PATCH",
            &format!("/apps/{APP}/channels/stable"),
            Some(json!({"packages": {"amd64": pkg["id"]}})),
        )
        .await;
    }

    /// A group as the admin API shows it.
    async fn group(&self, name: &str) -> Value {
        self.admin("GET", &format!("/apps/{APP}/groups/{name}"), None)
            .await
    }

    /// The activity kinds, newest first.
    async fn activity_kinds(&self) -> Vec<String> {
        let v = self.admin("GET", "/activity", None).await;
        v.as_array()
            .unwrap()
            .iter()
            .map(|a| a["kind"].as_str().unwrap().to_owned())
            .collect()
    }

    /// An Omaha check-in (XML-escaped values are the test's business).
    async fn omaha(&self, machine: &str, alias: &str, version: &str, body: &str) -> String {
        let xml = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<request protocol="3.0" version="platte-agent-0.1.0" ismachine="1">
<os version="Chateau" platform="CoreOS" sp="1_x86_64"></os>
<app appid="{{{APP}}}" version="{version}" track="stable" machineid="{machine}" machinealias="{alias}" board="amd64-usr">{body}</app>
</request>"#
        );
        let (st, text) = common::omaha_post(&self.http, &self.base, xml, &[]).await;
        assert_eq!(st, StatusCode::OK, "{text}");
        text
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> Page {
        let resp = r.send().await.unwrap();
        Page {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: resp.text().await.unwrap(),
        }
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> Page {
        let mut r = self.http.get(format!("{}{path}", self.base));
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        self.send(r).await
    }

    async fn post(&self, path: &str, cookie: Option<&str>, fields: &[(&str, &str)]) -> Page {
        let mut r = self.http.post(format!("{}{path}", self.base)).form(fields);
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        self.send(r).await
    }

    /// Logs in with `token` (which must be accepted); returns the cookie to send back.
    async fn login(&self, token: &str) -> String {
        let p = self.post("/ui/login", None, &[("token", token)]).await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
        assert_eq!(p.header("location"), "/");
        let set = p.set_cookies();
        assert_eq!(set.len(), 1, "{set:?}");
        set[0].split(';').next().unwrap().to_owned()
    }

    fn group_path(&self, group_id: &str) -> String {
        format!("/ui/apps/{APP}/groups/{group_id}")
    }
}

async fn login_takes_either_token_and_sets_a_strict_cookie(db: TestDb) {
    let env = Env::new(&db).await;
    // The admin token: a session cookie, HttpOnly, SameSite=Strict, Path=/, with an expiry,
    // not Secure over plain HTTP.
    let p = env
        .post("/ui/login", None, &[("token", &env.server.admin_token)])
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    let cookie = &p.set_cookies()[0];
    assert!(cookie.starts_with("platte_session=v1.admin."), "{cookie}");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(cookie.split("; ").any(|a| a == attr), "{attr} in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "{cookie}");
    let admin = cookie.split(';').next().unwrap();
    let home = env.get("/", Some(admin)).await;
    assert_eq!(home.status, StatusCode::OK);
    assert!(
        home.body.contains(r#"<span id="role">admin</span>"#),
        "{}",
        home.body
    );

    // Behind the trusted proxy, over HTTPS: Secure too.
    let p = env
        .send(
            env.http
                .post(format!("{}/ui/login", env.base))
                .header("x-forwarded-proto", "https")
                .form(&[("token", env.server.admin_token.as_str())]),
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert!(p.set_cookies()[0].split("; ").any(|a| a == "Secure"));

    // The read-only token.
    let reader = env.login(&env.server.read_only_token).await;
    assert!(reader.starts_with("platte_session=v1.read."), "{reader}");
    let home = env.get("/", Some(&reader)).await;
    assert_eq!(home.status, StatusCode::OK);
    assert!(home.body.contains(r#"<span id="role">read-only</span>"#));

    // A wrong token, an empty one, a token with a changed character: no cookie.
    let mut near = env.server.admin_token.clone();
    near.pop();
    near.push('x');
    for wrong in ["wrong-token-0123456789", "", near.as_str()] {
        let p = env.post("/ui/login", None, &[("token", wrong)]).await;
        assert_eq!(p.status, StatusCode::UNAUTHORIZED, "{wrong:?}");
        assert!(p.set_cookies().is_empty());
        assert!(p.body.contains("id=\"login-error\""));
    }
    // A forged cookie (role changed) is no session.
    let forged = admin.replacen(".admin.", ".read.", 1);
    let p = env.get("/", Some(&forged)).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    // The session key is kept in the data directory, private.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let f = env.dir.path().join("data/dashboard-session-key");
        assert_eq!(
            std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    env.server.shutdown().await.unwrap();
}
both_databases!(login_takes_either_token_and_sets_a_strict_cookie);

/// `Secure` comes from the server's own settings: an `https://` public URL, or a proxy it was
/// told to trust saying HTTPS; a client's `X-Forwarded-Proto` alone changes nothing.
/// Whether a login to `env` (with `X-Forwarded-Proto: forwarded`, if given) sets a `Secure`
/// cookie.
async fn secure_login(env: &Env, forwarded: Option<&str>) -> bool {
    let mut r = env.http.post(format!("{}/ui/login", env.base));
    if let Some(proto) = forwarded {
        r = r.header("x-forwarded-proto", proto);
    }
    let p = env
        .send(r.form(&[("token", env.server.admin_token.as_str())]))
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    p.set_cookies()[0].split("; ").any(|a| a == "Secure")
}

/// `Secure` comes from the server's own settings: an `https://` public URL, or a proxy it was
/// told to trust saying HTTPS; a client's `X-Forwarded-Proto` alone changes nothing.
async fn the_cookie_is_secure_only_as_the_settings_say(db: TestDb) {
    // No trusted proxy: a client claiming HTTPS is not believed.
    let plain = Env::with(&db, |_| {}).await;
    assert!(!secure_login(&plain, Some("https")).await);
    plain.server.shutdown().await.unwrap();
    // Served as https:// by its public URL: always Secure.
    let public = Env::with(&db, |s| {
        s.public_url = Some("https://updates.example".into());
    })
    .await;
    assert!(secure_login(&public, None).await);
    public.server.shutdown().await.unwrap();
}
both_databases!(the_cookie_is_secure_only_as_the_settings_say);

async fn pages_need_a_session_and_logout_clears_it(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed(json!({})).await;
    for path in ["/", "/ui/instances", "/ui/instances/m1"] {
        let p = env.get(path, None).await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(p.header("location"), "/ui/login", "{path}");
    }
    let p = env.get("/ui/login", None).await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(
        p.body
            .contains(r#"<form id="login-form" method="post" action="/ui/login">"#)
    );

    let cookie = env.login(&env.server.admin_token).await;
    // Logged in, the login page leads home.
    assert_eq!(
        env.get("/ui/login", Some(&cookie)).await.status,
        StatusCode::SEE_OTHER
    );
    let home = env.get("/", Some(&cookie)).await;
    // Logout needs the session's CSRF token.
    let p = env.post("/ui/logout", Some(&cookie), &[]).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    assert!(p.set_cookies().is_empty());
    let p = env
        .post("/ui/logout", Some(&cookie), &[("csrf", &home.csrf())])
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(p.header("location"), "/ui/login?out=1");
    let cleared = &p.set_cookies()[0];
    assert!(cleared.starts_with("platte_session=;"), "{cleared}");
    assert!(cleared.contains("Max-Age=0") && cleared.contains("HttpOnly"));
    let p = env.get("/ui/login?out=1", None).await;
    assert!(p.body.contains("id=\"logged-out\""));
    // The other endpoints keep their paths and behaviour.
    assert_eq!(env.get("/healthz", None).await.status, StatusCode::OK);
    assert_eq!(env.get("/metrics", None).await.status, StatusCode::OK);
    let p = env.get("/api/v1/apps", None).await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED);
    let (st, apps) = env.api("GET", "/apps", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(apps[0]["name"], "OS");
    env.server.shutdown().await.unwrap();
}
both_databases!(pages_need_a_session_and_logout_clears_it);

async fn every_page_is_sent_with_the_security_headers(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed(json!({})).await;
    env.release("2.0.0").await;
    env.omaha("m1", "web-1", "1.0.0", "<updatecheck></updatecheck>")
        .await;
    let stable = env.group("stable").await["id"].as_str().unwrap().to_owned();
    let cookie = env.login(&env.server.admin_token).await;
    let home = env.get("/", Some(&cookie)).await;
    let css = home
        .body
        .split('"')
        .find(|s| s.starts_with("/ui/static/dashboard-") && s.ends_with(".css"))
        .unwrap()
        .to_owned();
    let js = home
        .body
        .split('"')
        .find(|s| s.starts_with("/ui/static/dashboard-") && s.ends_with(".js"))
        .unwrap()
        .to_owned();
    let group = env.group_path(&stable);
    let pages = [
        ("/ui/login", None, StatusCode::OK),
        ("/", Some(&cookie), StatusCode::OK),
        (group.as_str(), Some(&cookie), StatusCode::OK),
        ("/ui/instances", Some(&cookie), StatusCode::OK),
        ("/ui/instances/m1", Some(&cookie), StatusCode::OK),
        ("/ui/instances/nobody", Some(&cookie), StatusCode::NOT_FOUND),
        ("/", None, StatusCode::SEE_OTHER),
        (css.as_str(), None, StatusCode::OK),
        (js.as_str(), None, StatusCode::OK),
        ("/ui/static/dashboard.css", None, StatusCode::NOT_FOUND),
    ];
    for (path, cookie, status) in pages {
        let p = env.get(path, cookie.map(String::as_str)).await;
        assert_eq!(p.status, status, "{path}: {}", p.body);
        assert_eq!(p.header("content-security-policy"), CSP, "{path}");
        assert_eq!(p.header("x-frame-options"), "DENY", "{path}");
        assert_eq!(p.header("referrer-policy"), "no-referrer", "{path}");
        assert_eq!(p.header("x-content-type-options"), "nosniff", "{path}");
        if p.header("content-type").starts_with("text/html") {
            assert_eq!(p.header("cache-control"), "no-store", "{path}");
            // No inline script or style: every <script> has a src, no style attribute or element.
            assert!(!p.body.contains("style="), "{path}");
            assert!(!p.body.contains("<style"), "{path}");
            assert_eq!(
                p.body.matches("<script").count(),
                p.body.matches("<script src=\"/ui/static/").count(),
                "{path}"
            );
        }
    }
    // A POST refused is sent with them too.
    let p = env
        .post(&format!("{group}/pause"), Some(&cookie), &[])
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    assert_eq!(p.header("content-security-policy"), CSP);
    // The assets: their types, cached for a year.
    let p = env.get(&css, None).await;
    assert_eq!(p.header("content-type"), "text/css; charset=utf-8");
    assert_eq!(
        p.header("cache-control"),
        "public, max-age=31536000, immutable"
    );
    let p = env.get(&js, None).await;
    assert_eq!(p.header("content-type"), "text/javascript; charset=utf-8");
    env.server.shutdown().await.unwrap();
}
both_databases!(every_page_is_sent_with_the_security_headers);

async fn forms_without_their_sessions_csrf_token_are_refused(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed(json!({})).await;
    let stable = env.group("stable").await["id"].as_str().unwrap().to_owned();
    let pause = format!("{}/pause", env.group_path(&stable));
    let cookie = env.login(&env.server.admin_token).await;
    let other = env.login(&env.server.admin_token).await;
    let page = env.get(&env.group_path(&stable), Some(&cookie)).await;
    let token = page.csrf();
    let other_token = env.get("/", Some(&other)).await.csrf();
    assert_ne!(token, other_token);
    let refused = [
        // No token, a wrong one, another session's.
        env.post(&pause, Some(&cookie), &[("confirm", "yes")]).await,
        env.post(
            &pause,
            Some(&cookie),
            &[("confirm", "yes"), ("csrf", "00ff")],
        )
        .await,
        env.post(
            &pause,
            Some(&cookie),
            &[("confirm", "yes"), ("csrf", &other_token)],
        )
        .await,
        // No session at all, with the token.
        env.post(&pause, None, &[("confirm", "yes"), ("csrf", &token)])
            .await,
        // The right token, but the browser says another site sent it.
        env.send(
            env.http
                .post(format!("{}{pause}", env.base))
                .header("cookie", &cookie)
                .header("sec-fetch-site", "cross-site")
                .form(&[("confirm", "yes"), ("csrf", token.as_str())]),
        )
        .await,
    ];
    for p in refused {
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{}", p.body);
    }
    assert_eq!(env.group("stable").await["policy"]["paused"], false);
    assert!(
        !env.activity_kinds()
            .await
            .contains(&"rollout_paused".to_owned())
    );
    // The same form with its token goes through.
    let p = env
        .post(
            &pause,
            Some(&cookie),
            &[("confirm", "yes"), ("csrf", &token)],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(env.group("stable").await["policy"]["paused"], true);
    env.server.shutdown().await.unwrap();
}
both_databases!(forms_without_their_sessions_csrf_token_are_refused);

/// A machine that rolled back from the target halts the rollout (auto-halt, any machine
/// counting fully); `m-rb`'s refusal of 2.0.0 is listed on its page.
async fn halt_with_a_rollback(env: &Env) {
    env.release("2.0.0").await;
    let x = env
        .omaha("m-rb", "rb", "1.0.0", "<updatecheck></updatecheck>")
        .await;
    assert!(x.contains(r#"status="ok""#), "{x}");
    env.omaha(
        "m-rb",
        "rb",
        "1.0.0",
        r#"<event eventtype="3" eventresult="0" errorcode="44" previousversion="2.0.0"></event>"#,
    )
    .await;
    let st = env
        .admin("GET", &format!("/apps/{APP}/groups/stable/rollout"), None)
        .await;
    assert!(st["halted"]["reason"].is_string(), "{st}");
}

const HALT_POLICY: &str =
    r#"{"auto_halt": {"max_failure_rate": 0.5, "min_attempts": 1, "new_machine_weight": 1}}"#;

async fn read_only_sees_no_controls_and_cannot_change_anything(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed(serde_json::from_str(HALT_POLICY).unwrap()).await;
    halt_with_a_rollback(&env).await;
    let stable = env.group("stable").await;
    let group = env.group_path(stable["id"].as_str().unwrap());
    let reader = env.login(&env.server.read_only_token).await;
    let page = env.get(&group, Some(&reader)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("class=\"banner halted\""),
        "{}",
        page.body
    );
    for control in ["pause-form", "resume-form", "id=\"actions\""] {
        assert!(!page.body.contains(control), "{control}");
    }
    let machine = env.get("/ui/instances/m-rb", Some(&reader)).await;
    assert!(
        machine.body.contains("data-version=\"2.0.0\""),
        "{}",
        machine.body
    );
    assert!(!machine.body.contains("/retry"), "{}", machine.body);
    // Its own valid CSRF token does not make its posts writes.
    let token = page.csrf();
    for (path, fields) in [
        (
            format!("{group}/resume"),
            vec![("confirm", "yes"), ("csrf", token.as_str())],
        ),
        (
            format!("{group}/pause"),
            vec![("confirm", "yes"), ("csrf", token.as_str())],
        ),
        (
            "/ui/instances/m-rb/retry".to_owned(),
            vec![("app", APP), ("version", "2.0.0"), ("csrf", token.as_str())],
        ),
    ] {
        let p = env.post(&path, Some(&reader), &fields).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{path}");
        assert!(p.body.contains("read-only"), "{}", p.body);
    }
    assert_eq!(env.group("stable").await, stable, "nothing changed");
    let inst = env.admin("GET", "/instances/m-rb", None).await;
    assert_eq!(inst["apps"][0]["refused_versions"][0]["version"], "2.0.0");
    env.server.shutdown().await.unwrap();
}
both_databases!(read_only_sees_no_controls_and_cannot_change_anything);

/// The group JSON without what differs between two groups by construction.
fn comparable(mut g: Value) -> Value {
    for k in ["id", "name", "track", "created_at"] {
        g.as_object_mut().unwrap().remove(k);
    }
    g
}

async fn pause_and_resume_change_the_group_as_the_admin_api_does(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed(json!({"percentage": 25})).await;
    env.admin(
        "PATCH",
        &format!("/apps/{APP}/groups/beta"),
        Some(json!({"policy": {"percentage": 25}})),
    )
    .await;
    let stable = env.group("stable").await["id"].as_str().unwrap().to_owned();
    let group = env.group_path(&stable);
    let cookie = env.login(&env.server.admin_token).await;
    let page = env.get(&group, Some(&cookie)).await;
    assert!(page.body.contains("id=\"pause-form\""), "{}", page.body);
    assert!(!page.body.contains("id=\"resume-form\""));
    let token = page.csrf();

    // Without the confirmation box: nothing changes.
    let p = env
        .post(
            &format!("{group}/pause"),
            Some(&cookie),
            &[("csrf", &token)],
        )
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    assert_eq!(env.group("stable").await["policy"]["paused"], false);

    // Paused from the dashboard, `beta` through the admin API: the same group, the same entry.
    let p = env
        .post(
            &format!("{group}/pause"),
            Some(&cookie),
            &[("csrf", &token), ("confirm", "yes")],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(p.header("location"), format!("{group}?done=paused"));
    env.admin(
        "POST",
        &format!("/apps/{APP}/groups/beta/rollout/pause"),
        None,
    )
    .await;
    let (s, b) = (env.group("stable").await, env.group("beta").await);
    assert_eq!(s["policy"]["paused"], true);
    assert_eq!(comparable(s), comparable(b));
    let acts = env.admin("GET", "/activity", None).await;
    let paused: Vec<&str> = acts
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "rollout_paused")
        .map(|a| a["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        paused,
        [
            "rollout of group beta paused",
            "rollout of group stable paused"
        ]
    );
    // The pages show it: the notice, the banner, the resume form, the timeline entry.
    let page = env
        .get(&format!("{group}?done=paused"), Some(&cookie))
        .await;
    for shown in [
        "id=\"notice\"",
        "class=\"banner paused\"",
        "id=\"resume-form\"",
        "data-kind=\"rollout_paused\"",
    ] {
        assert!(page.body.contains(shown), "{shown}: {}", page.body);
    }
    assert!(!page.body.contains("id=\"pause-form\""));
    assert!(
        !page.body.contains("rollout of group beta paused"),
        "only this group's timeline"
    );
    let home = env.get("/", Some(&cookie)).await;
    assert!(home.body.contains("class=\"banner paused\""));

    // Resumed the same way, from the page's form.
    let p = env
        .post(
            &format!("{group}/resume"),
            Some(&cookie),
            &[
                ("csrf", &token),
                ("confirm", "yes"),
                ("shown", &page.field("shown")),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    env.admin(
        "POST",
        &format!("/apps/{APP}/groups/beta/rollout/resume"),
        None,
    )
    .await;
    let (s, b) = (env.group("stable").await, env.group("beta").await);
    assert_eq!(s["policy"]["paused"], false);
    assert_eq!(comparable(s), comparable(b));
    assert_eq!(
        env.activity_kinds().await[..2],
        ["rollout_resumed".to_owned(), "rollout_resumed".to_owned()]
    );
    // An unknown group is the admin API's 404.
    let p = env
        .post(
            &format!("/ui/apps/{APP}/groups/nope/pause"),
            Some(&cookie),
            &[("csrf", &token), ("confirm", "yes")],
        )
        .await;
    assert_eq!(p.status, StatusCode::NOT_FOUND);
    env.server.shutdown().await.unwrap();
}
both_databases!(pause_and_resume_change_the_group_as_the_admin_api_does);

async fn a_halt_shows_its_reason_and_is_resumed_and_a_refusal_retried(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed(serde_json::from_str(HALT_POLICY).unwrap()).await;
    halt_with_a_rollback(&env).await;
    let status = env
        .admin("GET", &format!("/apps/{APP}/groups/stable/rollout"), None)
        .await;
    let reason = status["halted"]["reason"].as_str().unwrap().to_owned();
    let stable = env.group("stable").await["id"].as_str().unwrap().to_owned();
    let group = env.group_path(&stable);
    let cookie = env.login(&env.server.admin_token).await;
    // The overview: the halted banner with its reason, the failure rate against the threshold.
    let home = env.get("/", Some(&cookie)).await;
    let card_at = home.body.find(&format!("id=\"group-{stable}\"")).unwrap();
    let card = &home.body[card_at..];
    let card = &card[..card.find("</article>").unwrap()];
    assert!(card.contains("class=\"banner halted\""), "{card}");
    let escaped_reason = reason
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    assert!(card.contains(&escaped_reason), "{reason} in {card}");
    assert!(card.contains("100 %"), "failure rate: {card}");
    assert!(
        card.contains("auto-halt above 50 % after 1 attempts"),
        "{card}"
    );
    assert!(card.contains("<dd class=\"target\">2.0.0</dd>"), "{card}");
    // The group page offers the resume after the halt.
    let page = env.get(&group, Some(&cookie)).await;
    assert!(page.body.contains("Resume after halt"), "{}", page.body);
    assert!(page.body.contains("data-kind=\"rollout_halted\""));
    assert!(
        page.body
            .contains("<tr data-grant=\"failed\"><td>failed</td><td class=\"num\">1</td></tr>"),
        "{}",
        page.body
    );
    // A resume from a page shown before the halt is refused: it would clear a halt the
    // operator never saw.
    let stale = env
        .post(
            &format!("{group}/resume"),
            Some(&cookie),
            &[
                ("csrf", &page.csrf()),
                ("confirm", "yes"),
                ("shown", "none"),
            ],
        )
        .await;
    assert_eq!(stale.status, StatusCode::CONFLICT, "{}", stale.body);
    let still = env
        .admin("GET", &format!("/apps/{APP}/groups/stable/rollout"), None)
        .await;
    assert!(!still["halted"].is_null(), "{still}");
    let p = env
        .post(
            &format!("{group}/resume"),
            Some(&cookie),
            &[
                ("csrf", &page.csrf()),
                ("confirm", "yes"),
                ("shown", &page.field("shown")),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let status = env
        .admin("GET", &format!("/apps/{APP}/groups/stable/rollout"), None)
        .await;
    assert!(status["halted"].is_null(), "{status}");
    let acts = env.admin("GET", "/activity", None).await;
    assert_eq!(acts[0]["kind"], "rollout_resumed");
    assert!(
        acts[0]["message"].as_str().unwrap().contains("was halted"),
        "{acts}"
    );

    // The machine's refusal: listed with a retry button, which clears it.
    let machine = env.get("/ui/instances/m-rb", Some(&cookie)).await;
    assert!(machine.body.contains("data-version=\"2.0.0\""));
    assert!(machine.body.contains("action=\"/ui/instances/m-rb/retry\""));
    assert!(
        machine.body.contains("44: "),
        "decoded error code: {}",
        machine.body
    );
    let p = env
        .post(
            "/ui/instances/m-rb/retry",
            Some(&cookie),
            &[
                ("csrf", &machine.csrf()),
                ("app", APP),
                ("version", "2.0.0"),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(p.header("location"), "/ui/instances/m-rb?done=retried");
    let inst = env.admin("GET", "/instances/m-rb", None).await;
    assert_eq!(inst["apps"][0]["refused_versions"], json!([]), "{inst}");
    assert_eq!(env.activity_kinds().await[0], "instance_retry");
    let machine = env
        .get("/ui/instances/m-rb?done=retried", Some(&cookie))
        .await;
    assert!(machine.body.contains("id=\"notice\""));
    assert!(!machine.body.contains("data-version=\"2.0.0\""));
    env.server.shutdown().await.unwrap();
}
both_databases!(a_halt_shows_its_reason_and_is_resumed_and_a_refusal_retried);

async fn hostile_values_from_omaha_clients_render_as_text(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed(json!({})).await;
    let script = "<script>alert(1)</script>";
    let img = r#""><img src=x>"#;
    let esc_script = "&lt;script&gt;alert(1)&lt;/script&gt;";
    let esc_img = "&quot;&gt;&lt;img src=x&gt;";
    let xml = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    // A hostile alias and version (the version is not valid, so never served, but stored as
    // reported), and a valid version carrying markup after its release part.
    let alias = format!("{script}{img}");
    env.omaha(
        "m-evil",
        &xml(&alias),
        &xml(&format!("{img}{script}")),
        "<updatecheck></updatecheck>",
    )
    .await;
    env.omaha(
        "m-evil2",
        &xml(&alias),
        &xml(&format!("1.0.0-{script}")),
        "<updatecheck></updatecheck>",
    )
    .await;
    let stored = env.admin("GET", "/instances/m-evil", None).await;
    assert_eq!(
        stored["apps"][0]["instance"]["alias"],
        alias.as_str(),
        "{stored}"
    );
    let cookie = env.login(&env.server.admin_token).await;
    let pages = [
        env.get("/ui/instances", Some(&cookie)).await,
        env.get("/ui/instances/m-evil", Some(&cookie)).await,
        env.get("/ui/instances/m-evil2", Some(&cookie)).await,
        env.get(
            "/ui/instances?search=%3Cscript%3Ealert(1)%3C%2Fscript%3E%22%3E%3Cimg%20src%3Dx%3E",
            Some(&cookie),
        )
        .await,
        env.get("/", Some(&cookie)).await,
    ];
    for (i, p) in pages.iter().enumerate() {
        assert_eq!(p.status, StatusCode::OK, "page {i}");
        assert!(!p.body.contains(script), "page {i}: {}", p.body);
        assert!(!p.body.contains("<img"), "page {i}: {}", p.body);
    }
    for p in &pages[..4] {
        assert!(p.body.contains(esc_script), "{}", p.body);
        assert!(p.body.contains(esc_img), "{}", p.body);
    }
    assert!(pages[2].body.contains(&format!("1.0.0-{esc_script}")));
    env.server.shutdown().await.unwrap();
}
both_databases!(hostile_values_from_omaha_clients_render_as_text);

/// The `href` of the element with id `id`, unescaped.
fn link(body: &str, id: &str) -> Option<String> {
    let needle = format!("id=\"{id}\" href=\"");
    let rest = &body[body.find(&needle)? + needle.len()..];
    Some(rest[..rest.find('"')?].replace("&amp;", "&"))
}

async fn the_instance_list_filters_and_paginates(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed(json!({})).await;
    for i in 0..7 {
        let v = if i < 5 { "1.0.0" } else { "1.1.0" };
        env.omaha(
            &format!("m{i}"),
            &format!("host-{i}"),
            v,
            "<updatecheck></updatecheck>",
        )
        .await;
    }
    let cookie = env.login(&env.server.read_only_token).await;
    let mut path = "/ui/instances?version=1.0.0&limit=2".to_owned();
    let mut seen = Vec::new();
    let mut summaries = Vec::new();
    loop {
        let p = env.get(&path, Some(&cookie)).await;
        assert_eq!(p.status, StatusCode::OK, "{}", p.body);
        for part in p
            .body
            .split("<tr class=\"instance\" data-machine=\"")
            .skip(1)
        {
            seen.push(part[..part.find('"').unwrap()].to_owned());
        }
        let at = p
            .body
            .find("id=\"page-summary\"")
            .unwrap_or_else(|| panic!("{}", p.body));
        let s = &p.body[at..];
        summaries.push(s[s.find('>').unwrap() + 1..s.find("</p>").unwrap()].to_owned());
        if summaries.len() > 1 {
            assert!(link(&p.body, "page-prev").is_some());
        } else {
            assert!(link(&p.body, "page-prev").is_none());
        }
        match link(&p.body, "page-next") {
            Some(next) => path = next,
            None => break,
        }
    }
    assert_eq!(
        summaries,
        [
            "Machines 1–2 of 5",
            "Machines 3–4 of 5",
            "Machines 5–5 of 5"
        ]
    );
    seen.sort();
    assert_eq!(seen, ["m0", "m1", "m2", "m3", "m4"]);
    // Filters: status, search, group; a form's empty fields filter nothing.
    let p = env
        .get(
            "/ui/instances?group=&version=&status=&search=host-6",
            Some(&cookie),
        )
        .await;
    assert!(p.body.contains("Machines 1–1 of 1"), "{}", p.body);
    assert!(p.body.contains("data-machine=\"m6\""));
    let stable = env.group("stable").await["id"].as_str().unwrap().to_owned();
    let p = env
        .get(
            &format!("/ui/instances?group={stable}&status=on_hold"),
            Some(&cookie),
        )
        .await;
    assert!(p.body.contains("No machine matches."), "{}", p.body);
    let p = env.get("/ui/instances?status=bogus", Some(&cookie)).await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    assert!(p.body.contains("unknown status"), "{}", p.body);
    env.server.shutdown().await.unwrap();
}
both_databases!(the_instance_list_filters_and_paginates);
