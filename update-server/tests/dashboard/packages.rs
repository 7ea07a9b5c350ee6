//! Dashboard tests: the package list (size, hashes, signer, channels), publishing by upload
//! with the admin API's checks (trusted keys, CrAU, size limit), the CSRF token read before the
//! file, the read-only role, delete guarded as the API guards it, and pointing a channel at a
//! package as `PATCH /apps/{app}/channels/{channel}` does.

use super::*;

/// The boundary of the multipart bodies the tests build.
const BOUNDARY: &str = "platte-test-boundary-5c1e0b";

/// One field of a `multipart/form-data` body.
enum Part<'a> {
    /// A text field.
    Text(&'a str, &'a str),
    /// A file field: name, file name, content.
    File(&'a str, &'a str, Vec<u8>),
}

/// A `multipart/form-data` body with `parts` in this order, as a browser sends a form.
fn multipart(parts: &[Part<'_>]) -> Vec<u8> {
    let mut body = Vec::new();
    for part in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match part {
            Part::Text(name, value) => {
                body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}")
                        .as_bytes(),
                );
            }
            Part::File(name, file_name, data) => {
                body.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"{name}\"; filename=\"{file_name}\"\r\n\
                         Content-Type: application/octet-stream\r\n\r\n"
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(data);
            }
        }
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// The HTML of package `id`'s row in the list.
fn row<'a>(body: &'a str, id: &str) -> &'a str {
    let start = body
        .find(&format!("id=\"package-{id}\""))
        .unwrap_or_else(|| panic!("no row for package {id} in {body}"));
    let len = body[start..].find("</tr>").unwrap();
    &body[start..start + len]
}

/// A CrAU file (update_engine's payload format, version 1) with a 1000-byte manifest.
fn crau_file() -> Vec<u8> {
    let mut f = b"CrAU".to_vec();
    f.extend_from_slice(&1u64.to_be_bytes());
    f.extend_from_slice(&1000u64.to_be_bytes());
    f.extend((0..1000u32).map(|i| (i % 251) as u8));
    f.extend(common::image(20_000));
    f
}

impl super::Env {
    /// Posts `parts` as a multipart form to `/ui/packages`.
    async fn upload(&self, cookie: Option<&str>, parts: &[Part<'_>]) -> Page {
        let mut r = self
            .http
            .post(format!("{}/ui/packages", self.base))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(multipart(parts));
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        self.send(r).await
    }

    /// The packages as the admin API lists them.
    async fn packages(&self) -> Vec<Value> {
        self.admin("GET", "/packages", None)
            .await
            .as_array()
            .unwrap()
            .clone()
    }

    /// Every file in the package store (temporary files included).
    fn stored_files(&self) -> Vec<std::path::PathBuf> {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.dir.path().join("data/packages"), &mut out);
        out
    }

    /// The newest activity entry of `kind`.
    async fn newest_activity(&self, kind: &str) -> Value {
        let acts = self.admin("GET", "/activity", None).await;
        acts.as_array()
            .unwrap()
            .iter()
            .find(|a| a["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} entry in {acts}"))
            .clone()
    }
}

/// An activity entry without what differs between two entries by construction.
fn comparable_entry(mut a: Value) -> Value {
    for k in ["id", "at"] {
        a.as_object_mut().unwrap().remove(k);
    }
    a
}

/// A package without what differs between two publications of the same file.
fn comparable_package(mut p: Value) -> Value {
    for k in ["id", "created_at"] {
        p.as_object_mut().unwrap().remove(k);
    }
    p
}

async fn the_list_shows_size_hashes_signer_and_channels(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed(json!({})).await;
    env.release("2.0.0").await;
    let pkg = env.packages().await.remove(0);
    let id = pkg["id"].as_str().unwrap();
    let sha256 = pkg["sha256_hex"].as_str().unwrap();
    let size = pkg["size"].as_u64().unwrap();
    assert!(size > 50_000, "{pkg}");
    let cookie = env.login(&env.server.read_only_token).await;
    let page = env.get("/ui/packages", Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.header("content-security-policy"), CSP);
    assert!(page.body.contains("data-section=\"packages\""));
    let r = row(&page.body, id);
    let key_id = payloads::KeyId::of(&env.key.verifying_key()).to_string();
    for shown in [
        "data-version=\"2.0.0\" data-arch=\"amd64\"".to_owned(),
        format!("title=\"{size} bytes\""),
        format!("{:.1} KiB", size as f64 / 1024.0),
        format!("title=\"{sha256}\">{}…", &sha256[..12]),
        pkg["sha1_base64"].as_str().unwrap().to_owned(),
        "<td class=\"format\">platte</td>".to_owned(),
        format!("<code class=\"key-id\">{key_id}</code>"),
        "data-channel=\"stable\" data-arch=\"amd64\"".to_owned(),
    ] {
        assert!(r.contains(&shown), "{shown} in {r}");
    }
    // The signer is the one the publication recorded.
    let published = env.newest_activity("package_published").await;
    assert!(
        published["message"]
            .as_str()
            .unwrap()
            .ends_with(&format!("signed by {key_id}")),
        "{published}"
    );
    // Filters: by application and by architecture.
    let p = env
        .get(&format!("/ui/packages?app={APP}&arch=amd64"), Some(&cookie))
        .await;
    assert!(p.body.contains(&format!("id=\"package-{id}\"")));
    assert!(!p.body.contains("id=\"no-packages\""));
    let p = env.get("/ui/packages?arch=arm64", Some(&cookie)).await;
    assert!(!p.body.contains(&format!("id=\"package-{id}\"")));
    assert!(p.body.contains("id=\"no-packages\""));
    let p = env.get("/ui/packages?app=other-app", Some(&cookie)).await;
    assert!(!p.body.contains(&format!("id=\"package-{id}\"")));
    // Without a session: the login page.
    let p = env.get("/ui/packages", None).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(p.header("location"), "/ui/login");
    env.server.shutdown().await.unwrap();
}
both_databases!(the_list_shows_size_hashes_signer_and_channels);

async fn an_upload_publishes_the_package_as_the_api_does(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed(json!({})).await;
    let cookie = env.login(&env.server.admin_token).await;
    let page = env.get("/ui/packages", Some(&cookie)).await;
    assert!(page.body.contains("enctype=\"multipart/form-data\""));
    let token = page.csrf();
    let payload = common::signed_payload(&env.key, APP, "2.0.0", &common::image(50_000));
    // As a browser sends the form: the token first, empty options, the file last.
    let p = env
        .upload(
            Some(&cookie),
            &[
                Part::Text("csrf", &token),
                Part::Text("format", "platte"),
                Part::Text("app", ""),
                Part::Text("version", "2.0.0"),
                Part::Text("arch", ""),
                Part::Text("filename", "update.payload"),
                Part::Text("external_url", ""),
                Part::File("file", "os-2.0.0.payload", payload.clone()),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let listed = env.packages().await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let id = listed[0]["id"].as_str().unwrap();
    assert_eq!(
        p.header("location"),
        format!("/ui/packages?published={id}#package-{id}")
    );
    assert_eq!(listed[0]["size"], payload.len());
    let from_dashboard = env.newest_activity("package_published").await;
    // The same file again: refused as the API refuses a duplicate.
    let p = env
        .upload(
            Some(&cookie),
            &[
                Part::Text("csrf", &token),
                Part::File("file", "os-2.0.0.payload", payload.clone()),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::CONFLICT, "{}", p.body);
    assert!(p.body.contains("already exists"), "{}", p.body);
    assert_eq!(env.packages().await.len(), 1);
    // Deleted, then the same file through the admin API: the same package but for its id and
    // time, the same activity entry.
    let (st, _) = env.api("DELETE", &format!("/packages/{id}"), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let from_api = env.publish_api(payload).await;
    assert_eq!(
        comparable_package(from_api.clone()),
        comparable_package(listed[0].clone())
    );
    assert_eq!(
        comparable_entry(env.newest_activity("package_published").await),
        comparable_entry(from_dashboard)
    );
    let id = from_api["id"].as_str().unwrap();
    // The notice names it.
    let page = env
        .get(&format!("/ui/packages?published={id}"), Some(&cookie))
        .await;
    assert!(page.body.contains("id=\"notice\""), "{}", page.body);
    assert!(page.body.contains(&format!("as package <code>{id}</code>")));

    // An update_engine payload: checked to be CrAU, named by the form's fields.
    let ue = |version: &'static str, file: Vec<u8>| {
        vec![
            Part::Text("csrf", &token),
            Part::Text("format", "update_engine"),
            Part::Text("app", APP),
            Part::Text("version", version),
            Part::Text("arch", "amd64"),
            Part::File("file", "update.gz", file),
        ]
    };
    let p = env.upload(Some(&cookie), &ue("3.0.0", crau_file())).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let ue_pkg = env
        .packages()
        .await
        .into_iter()
        .find(|p| p["version"] == "3.0.0")
        .unwrap();
    assert_eq!(ue_pkg["format"], "update_engine");
    assert_eq!(ue_pkg["metadata_size"], 1020);
    let p = env
        .upload(
            Some(&cookie),
            &ue("3.0.1", b"\x1f\x8b\x08\x00 not CrAU".to_vec()),
        )
        .await;
    assert_eq!(p.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", p.body);
    assert!(p.body.contains("CrAU"), "{}", p.body);
    let p = env.upload(Some(&cookie), &ue("", crau_file())).await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST, "{}", p.body);
    assert!(p.body.contains("names no version"), "{}", p.body);
    // A field the API does not know, or no file: nothing published.
    let p = env
        .upload(
            Some(&cookie),
            &[Part::Text("csrf", &token), Part::Text("channel", "stable")],
        )
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST, "{}", p.body);
    assert!(p.body.contains("Unexpected form field"), "{}", p.body);
    let p = env
        .upload(Some(&cookie), &[Part::Text("csrf", &token)])
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST, "{}", p.body);
    assert_eq!(env.packages().await.len(), 2);
    env.server.shutdown().await.unwrap();
}
both_databases!(an_upload_publishes_the_package_as_the_api_does);

async fn a_payload_signed_by_an_untrusted_key_is_refused(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed(json!({})).await;
    let cookie = env.login(&env.server.admin_token).await;
    let token = env.get("/ui/packages", Some(&cookie)).await.csrf();
    let stranger = payloads::keys::generate_signing_key();
    let payload = common::signed_payload(&stranger, APP, "2.0.0", &common::image(50_000));
    let p = env
        .upload(
            Some(&cookie),
            &[
                Part::Text("csrf", &token),
                Part::File("file", "os.payload", payload),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", p.body);
    let stranger_id = payloads::KeyId::of(&stranger.verifying_key()).to_string();
    assert!(
        p.body.contains("signed only by untrusted keys") && p.body.contains(&stranger_id),
        "{}",
        p.body
    );
    assert!(p.body.contains("id=\"error-message\""));
    assert!(env.packages().await.is_empty());
    assert_eq!(env.stored_files(), Vec::<std::path::PathBuf>::new());
    assert!(
        !env.activity_kinds()
            .await
            .contains(&"package_published".to_owned())
    );
    env.server.shutdown().await.unwrap();
}
both_databases!(a_payload_signed_by_an_untrusted_key_is_refused);

async fn uploads_without_the_sessions_csrf_token_first_are_refused(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed(json!({})).await;
    let cookie = env.login(&env.server.admin_token).await;
    let other = env.login(&env.server.admin_token).await;
    let token = env.get("/ui/packages", Some(&cookie)).await.csrf();
    let other_token = env.get("/ui/packages", Some(&other)).await.csrf();
    assert_ne!(token, other_token);
    let payload = || common::signed_payload(&env.key, APP, "2.0.0", &common::image(50_000));
    let file = || Part::File("file", "os.payload", payload());
    let refused = [
        // No token; a wrong one; another session's.
        env.upload(Some(&cookie), &[file()]).await,
        env.upload(Some(&cookie), &[Part::Text("csrf", "00ff"), file()])
            .await,
        env.upload(Some(&cookie), &[Part::Text("csrf", &other_token), file()])
            .await,
        // The right token, but after the file.
        env.upload(Some(&cookie), &[file(), Part::Text("csrf", &token)])
            .await,
        // The right token, no session.
        env.upload(None, &[Part::Text("csrf", &token), file()])
            .await,
        // Not a multipart body at all.
        env.post("/ui/packages", Some(&cookie), &[("csrf", token.as_str())])
            .await,
    ];
    for p in refused {
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{}", p.body);
    }
    assert!(env.packages().await.is_empty());
    assert_eq!(env.stored_files(), Vec::<std::path::PathBuf>::new());
    // With its token first, the same form publishes.
    let p = env
        .upload(Some(&cookie), &[Part::Text("csrf", &token), file()])
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(env.packages().await.len(), 1);
    env.server.shutdown().await.unwrap();
}
both_databases!(uploads_without_the_sessions_csrf_token_first_are_refused);

async fn uploads_are_limited_as_the_api_limits_them(db: TestDb) {
    let env = Env::with(&db, |s| s.max_package_size = 40_000).await;
    env.seed(json!({})).await;
    let cookie = env.login(&env.server.admin_token).await;
    let token = env.get("/ui/packages", Some(&cookie)).await.csrf();
    let payload = common::signed_payload(&env.key, APP, "2.0.0", &common::image(45_000));
    let p = env
        .upload(
            Some(&cookie),
            &[
                Part::Text("csrf", &token),
                Part::File("file", "os.payload", payload.clone()),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", p.body);
    assert!(
        p.body.contains("exceeds the 40000-byte package limit"),
        "{}",
        p.body
    );
    let (st, v) = common::publish(
        &env.http,
        &env.base,
        &env.server.admin_token,
        "os.payload",
        payload,
    )
    .await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert!(env.packages().await.is_empty());
    // Below the limit it goes through.
    let small = common::signed_payload(&env.key, APP, "2.0.0", &common::image(30_000));
    let p = env
        .upload(
            Some(&cookie),
            &[
                Part::Text("csrf", &token),
                Part::File("file", "os.payload", small),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    env.server.shutdown().await.unwrap();
}
both_databases!(uploads_are_limited_as_the_api_limits_them);

async fn read_only_sees_no_package_controls_and_cannot_change_them(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed(json!({})).await;
    env.release("2.0.0").await;
    let id = env.packages().await[0]["id"].as_str().unwrap().to_owned();
    let admin = env.login(&env.server.admin_token).await;
    let page = env.get("/ui/packages", Some(&admin)).await;
    let controls = [
        "id=\"publish-form\"".to_owned(),
        format!("id=\"delete-form-{id}\""),
        format!("id=\"point-form-{id}\""),
    ];
    for c in &controls {
        assert!(page.body.contains(c.as_str()), "{c} for the admin");
    }
    let reader = env.login(&env.server.read_only_token).await;
    let page = env.get("/ui/packages", Some(&reader)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains(&format!("id=\"package-{id}\"")));
    for c in &controls {
        assert!(
            !page.body.contains(c.as_str()),
            "{c} for the read-only role"
        );
    }
    assert!(!page.body.contains("type=\"file\""));
    // Its posts, with its own session's token, are refused.
    let token = page.csrf();
    let stable = env
        .admin("GET", &format!("/apps/{APP}/channels/stable"), None)
        .await;
    let payload = common::signed_payload(&env.key, APP, "3.0.0", &common::image(50_000));
    let refused = [
        env.upload(
            Some(&reader),
            &[
                Part::Text("csrf", &token),
                Part::File("file", "os.payload", payload),
            ],
        )
        .await,
        env.post(
            &format!("/ui/packages/{id}/delete"),
            Some(&reader),
            &[("csrf", &token), ("confirm", "yes")],
        )
        .await,
        env.post(
            &format!("/ui/packages/{id}/point"),
            Some(&reader),
            &[
                ("csrf", &token),
                ("confirm", "yes"),
                ("channel", stable["id"].as_str().unwrap()),
            ],
        )
        .await,
    ];
    for p in refused {
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{}", p.body);
        assert!(p.body.contains("read-only"), "{}", p.body);
    }
    assert_eq!(env.packages().await.len(), 1);
    assert_eq!(
        env.admin("GET", &format!("/apps/{APP}/channels/stable"), None)
            .await,
        stable
    );
    env.server.shutdown().await.unwrap();
}
both_databases!(read_only_sees_no_package_controls_and_cannot_change_them);

async fn delete_is_refused_while_a_channel_points_at_the_package(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed(json!({})).await;
    env.release("2.0.0").await;
    let used = env.packages().await[0]["id"].as_str().unwrap().to_owned();
    let image = common::image(50_000);
    let spare = env
        .publish_api(common::signed_payload(&env.key, APP, "3.0.0", &image))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = env
        .publish_api(common::signed_payload(&env.key, APP, "3.0.1", &image))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cookie = env.login(&env.server.admin_token).await;
    let token = env.get("/ui/packages", Some(&cookie)).await.csrf();
    let delete = |id: &str| format!("/ui/packages/{id}/delete");

    // Used by channel stable: refused with the API's message.
    let p = env
        .post(
            &delete(&used),
            Some(&cookie),
            &[("csrf", &token), ("confirm", "yes")],
        )
        .await;
    assert_eq!(p.status, StatusCode::CONFLICT, "{}", p.body);
    assert!(
        p.body
            .contains(&format!("package {used} is used by channel(s) stable")),
        "{}",
        p.body
    );
    // Unticked confirmation: nothing happens.
    let p = env
        .post(&delete(&spare), Some(&cookie), &[("csrf", &token)])
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST, "{}", p.body);
    assert_eq!(env.packages().await.len(), 3);

    // Unused: deleted, recorded as the admin API records a deletion.
    let p = env
        .post(
            &delete(&spare),
            Some(&cookie),
            &[("csrf", &token), ("confirm", "yes")],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(p.header("location"), "/ui/packages?done=deleted");
    let from_dashboard = env.newest_activity("package_deleted").await;
    let (st, _) = env.api("DELETE", &format!("/packages/{other}"), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let from_api = env.newest_activity("package_deleted").await;
    assert_eq!(from_dashboard["message"], "package 3.0.0 (amd64) deleted");
    assert_eq!(from_api["message"], "package 3.0.1 (amd64) deleted");
    let without_version = |a: Value| {
        let mut a = comparable_entry(a);
        for k in ["message", "version"] {
            a.as_object_mut().unwrap().remove(k);
        }
        a
    };
    assert_eq!(without_version(from_dashboard), without_version(from_api));
    let left: Vec<Value> = env.packages().await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["id"], used.as_str());
    let page = env.get("/ui/packages?done=deleted", Some(&cookie)).await;
    assert!(page.body.contains("The package was deleted."));
    assert!(!page.body.contains(&format!("id=\"package-{spare}\"")));
    env.server.shutdown().await.unwrap();
}
both_databases!(delete_is_refused_while_a_channel_points_at_the_package);

async fn pointing_a_channel_changes_it_as_the_api_does(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed(json!({})).await;
    env.release("2.0.0").await;
    env.admin(
        "POST",
        &format!("/apps/{APP}/channels"),
        Some(json!({"name": "beta"})),
    )
    .await;
    let next = env
        .publish_api(common::signed_payload(
            &env.key,
            APP,
            "3.0.0",
            &common::image(50_000),
        ))
        .await;
    let next_id = next["id"].as_str().unwrap();
    let stable = env
        .admin("GET", &format!("/apps/{APP}/channels/stable"), None)
        .await;
    let stable_id = stable["id"].as_str().unwrap();
    let cookie = env.login(&env.server.admin_token).await;
    let page = env.get("/ui/packages", Some(&cookie)).await;
    let r = row(&page.body, next_id);
    assert!(
        r.contains(&format!(
            "<option value=\"{stable_id}\">stable (now 2.0.0)</option>"
        )),
        "{r}"
    );
    let token = page.csrf();
    let point = format!("/ui/packages/{next_id}/point");

    // Unticked: nothing changes.
    let p = env
        .post(
            &point,
            Some(&cookie),
            &[("csrf", &token), ("channel", stable_id)],
        )
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST, "{}", p.body);
    assert_eq!(
        env.admin("GET", &format!("/apps/{APP}/channels/stable"), None)
            .await,
        stable
    );
    // A channel that does not exist: the API's 404.
    let p = env
        .post(
            &point,
            Some(&cookie),
            &[("csrf", &token), ("confirm", "yes"), ("channel", "nope")],
        )
        .await;
    assert_eq!(p.status, StatusCode::NOT_FOUND, "{}", p.body);

    // Stable from the dashboard, beta through the admin API.
    let p = env
        .post(
            &point,
            Some(&cookie),
            &[("csrf", &token), ("confirm", "yes"), ("channel", stable_id)],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(
        p.header("location"),
        format!("/ui/packages?pointed={next_id}&channel={stable_id}#package-{next_id}")
    );
    let from_dashboard = env.newest_activity("channel_package_updated").await;
    env.admin(
        "PATCH",
        &format!("/apps/{APP}/channels/beta"),
        Some(json!({"packages": {"amd64": next_id}})),
    )
    .await;
    let from_api = env.newest_activity("channel_package_updated").await;
    let stable_now = env
        .admin("GET", &format!("/apps/{APP}/channels/stable"), None)
        .await;
    let beta_now = env
        .admin("GET", &format!("/apps/{APP}/channels/beta"), None)
        .await;
    assert_eq!(stable_now["packages"], json!({"amd64": next_id}));
    assert_eq!(stable_now["packages"], beta_now["packages"]);
    assert_eq!(
        from_dashboard["message"],
        "channel stable updated amd64=3.0.0"
    );
    assert_eq!(from_api["message"], "channel beta updated amd64=3.0.0");
    // The group following stable now targets 3.0.0.
    let status = env
        .admin("GET", &format!("/apps/{APP}/groups/stable/rollout"), None)
        .await;
    assert_eq!(status["target_version"], "3.0.0", "{status}");
    // The page says so, and lists both channels at the new package.
    let page = env.get(p.header("location"), Some(&cookie)).await;
    assert!(
        page.body
            .contains("Channel stable now points at 3.0.0 for amd64."),
        "{}",
        page.body
    );
    let r = row(&page.body, next_id);
    for channel in ["stable", "beta"] {
        assert!(
            r.contains(&format!("data-channel=\"{channel}\" data-arch=\"amd64\"")),
            "{channel} in {r}"
        );
    }
    env.server.shutdown().await.unwrap();
}
both_databases!(pointing_a_channel_changes_it_as_the_api_does);

/// Sends a multipart upload by hand over TCP: `head` (the form's start) and then `filler`
/// bytes, announced as a body of `length` bytes; returns the status line of the answer, read
/// while the body is still being sent (the server answers without waiting for the rest).
async fn upload_raw(env: &Env, cookie: Option<&str>, head: &[u8], length: u64) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let addr = env.server.addr;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let cookie = cookie
        .map(|c| format!("cookie: {c}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST /ui/packages HTTP/1.1\r\nhost: {addr}\r\n{cookie}\
         content-type: multipart/form-data; boundary={BOUNDARY}\r\ncontent-length: {length}\r\n\r\n"
    );
    let head = head.to_vec();
    // The body is sent on its own task; the server may stop reading it (and close) at any
    // point, which ends the task with a write error.
    let sender = tokio::spawn(async move {
        write.write_all(request.as_bytes()).await?;
        write.write_all(&head).await?;
        let filler = vec![b'a'; 64 * 1024];
        let mut sent = head.len() as u64;
        while sent < length {
            write.write_all(&filler).await?;
            sent += filler.len() as u64;
        }
        Ok::<(), std::io::Error>(())
    });
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read);
    // A deadline, not a synchronisation: a server that buffers the body answers only after
    // the whole gigabyte, far later.
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        reader.read_line(&mut line),
    )
    .await
    .expect("no answer while the body was still being sent")
    .unwrap();
    sender.abort();
    line
}

async fn uploads_are_refused_before_their_body_is_read(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed(json!({})).await;
    // 1 GiB announced, never all sent: without a session, the answer comes at once.
    let length = 1 << 30;
    let head = format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n");
    let line = upload_raw(&env, None, head.as_bytes(), length).await;
    assert!(line.starts_with("HTTP/1.1 403"), "{line}");
    // A logged-in admin whose form's first part never ends its headers: the body is cut off
    // after the small fields' allowance (64 KiB), not buffered up to the package limit (8 GiB
    // by default), and the form is refused for its missing token.
    let cookie = env.login(&env.server.admin_token).await;
    let line = upload_raw(&env, Some(&cookie), head.as_bytes(), length).await;
    assert!(line.starts_with("HTTP/1.1 403"), "{line}");
    // The read-only role is refused before its body is read as well.
    let reader = env.login(&env.server.read_only_token).await;
    let line = upload_raw(&env, Some(&reader), head.as_bytes(), length).await;
    assert!(line.starts_with("HTTP/1.1 403"), "{line}");
    assert!(env.packages().await.is_empty());
    env.server.shutdown().await.unwrap();
}
both_databases!(uploads_are_refused_before_their_body_is_read);
