//! Dashboard tests: the policy editor (the stored policy shown in its fields, a preview computed
//! by the policy engine that changes nothing, a save equal to the admin API's PATCH, field-level
//! errors, a stale editor refused, the read-only role and CSRF refusals) and creating a group.

use super::*;

/// The editor's path of group `group_id`.
fn editor(group_id: &str) -> String {
    format!("/ui/apps/{APP}/groups/{group_id}/policy")
}

/// Undoes maud's escaping of a value.
fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The tag (up to its `>`) of the element with id `id`, and what follows it.
fn element<'a>(body: &'a str, id: &str) -> (&'a str, &'a str) {
    let at = body
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in {body}"));
    let rest = &body[at..];
    let end = rest.find('>').unwrap();
    (&rest[..end], &rest[end + 1..])
}

/// The value of the input with id `id`.
fn input_value(body: &str, id: &str) -> String {
    let (tag, _) = element(body, id);
    let Some(at) = tag.find("value=\"") else {
        return String::new();
    };
    let v = &tag[at + 7..];
    unescape(&v[..v.find('"').unwrap()])
}

/// The text of the element with id `id` (a text area, a count).
fn text_of(body: &str, id: &str) -> String {
    let (_, rest) = element(body, id);
    unescape(&rest[..rest.find("</").unwrap()])
}

/// The value of the selected option of the select with id `id`.
fn selected(body: &str, id: &str) -> String {
    let (_, rest) = element(body, id);
    let options = &rest[..rest.find("</select>").unwrap()];
    let at = options.find(" selected>").expect("an option is selected");
    let before = &options[..at];
    let v = &before[before.rfind("value=\"").unwrap() + 7..];
    unescape(&v[..v.find('"').unwrap()])
}

/// The machine ids a preview's table lists.
fn listed(body: &str, id: &str) -> Vec<String> {
    let (_, rest) = element(body, id);
    let table = &rest[..rest.find("</table>").unwrap()];
    table
        .split("data-machine=\"")
        .skip(1)
        .map(|p| p[..p.find('"').unwrap()].to_owned())
        .collect()
}

impl super::Env {
    /// The id of group `name`.
    async fn group_id(&self, name: &str) -> String {
        self.group(name).await["id"].as_str().unwrap().to_owned()
    }

    /// Opens the editor of `group_id` and submits `fields` with `action` and the page's CSRF
    /// token and policy digest.
    async fn submit_policy(
        &self,
        cookie: &str,
        group_id: &str,
        action: &str,
        fields: &[(&str, &str)],
    ) -> Page {
        let page = self.get(&editor(group_id), Some(cookie)).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let (csrf, shown) = (page.csrf(), page.field("shown"));
        let mut all = vec![("csrf", csrf.as_str()), ("shown", shown.as_str())];
        all.push(("action", action));
        all.extend_from_slice(fields);
        self.post(&editor(group_id), Some(cookie), &all).await
    }

    /// Machines `m00`…: each checks in once on 1.0.0 in group `stable`.
    async fn machines_check_in(&self, n: usize) {
        for i in 0..n {
            self.omaha(
                &format!("m{i:02}"),
                "",
                "1.0.0",
                "<updatecheck></updatecheck>",
            )
            .await;
        }
    }

    /// What `GET …/rollout/preview?percent=P` says it adds to group `stable`.
    async fn api_preview(&self, percent: f64) -> Value {
        self.admin(
            "GET",
            &format!("/apps/{APP}/groups/stable/rollout/preview?percent={percent}&limit=20"),
            None,
        )
        .await
    }
}

/// The stored policy with every field the editor has.
fn full_policy(gate_group: &str) -> Value {
    json!({
        "machine_credential": "required",
        "percentage": 12.5,
        "ramp": {"start_at": 1_767_225_600, "start_percent": 1.0, "duration_secs": 0,
                 "steps": [{"after_secs": 86_400, "percent": 5.0},
                           {"after_secs": 129_600, "percent": 25.0}]},
        "rate_limit": {"count": 500, "period_secs": 3600},
        "concurrency_limit": 200,
        "update_timeout_secs": 7200,
        "windows": ["Mon,Wed 09:00 8h Europe/Berlin", "Sat 22:00 1h30m UTC"],
        "canaries": ["build-01", "m07"],
        "gate": {"group": gate_group, "min_complete": 10},
        "auto_halt": {"max_failure_rate": 0.02, "min_attempts": 200, "new_machine_weight": 0.5},
        "floors": ["1.5.0"],
        "blocked_versions": ["1.9.0", "1.9.1"],
        "allow_downgrade": true
    })
}

async fn the_editor_shows_the_stored_policy(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed(json!({})).await;
    let (stable, beta) = (env.group_id("stable").await, env.group_id("beta").await);
    env.admin(
        "PATCH",
        &format!("/apps/{APP}/groups/stable"),
        Some(json!({"policy": full_policy(&beta)})),
    )
    .await;
    let cookie = env.login(&env.server.admin_token).await;
    // The group page links to the editor.
    let group = env.get(&env.group_path(&stable), Some(&cookie)).await;
    assert_eq!(
        link(&group.body, "edit-policy").as_deref(),
        Some(editor(&stable).as_str()),
        "{}",
        group.body
    );
    let page = env.get(&editor(&stable), Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(page.header("content-security-policy"), CSP);
    assert!(!page.body.contains("style="), "no inline style");
    for (id, value) in [
        ("policy-percentage", "12.5"),
        ("policy-ramp_start_at", "2026-01-01T00:00:00"),
        ("policy-ramp_start_percent", "1"),
        ("policy-ramp_duration", ""),
        ("policy-rate_limit_count", "500"),
        ("policy-rate_limit_period", "1h"),
        ("policy-concurrency_limit", "200"),
        ("policy-update_timeout", "2h"),
        ("policy-gate_min_complete", "10"),
        ("policy-auto_halt_max_failure_rate", "0.02"),
        ("policy-auto_halt_min_attempts", "200"),
        ("policy-auto_halt_new_machine_weight", "0.5"),
    ] {
        assert_eq!(input_value(&page.body, id), value, "{id}");
    }
    for (id, text) in [
        ("policy-ramp_steps", "1d 5\n1d12h 25"),
        (
            "policy-windows",
            "Mon,Wed 09:00 8h Europe/Berlin\nSat 22:00 1h30m UTC",
        ),
        ("policy-canaries", "build-01\nm07"),
        ("policy-floors", "1.5.0"),
        ("policy-blocked_versions", "1.9.0\n1.9.1"),
    ] {
        assert_eq!(text_of(&page.body, id), text, "{id}");
    }
    assert_eq!(selected(&page.body, "policy-gate_group"), beta);
    assert_eq!(
        selected(&page.body, "policy-machine_credential"),
        "required"
    );
    assert!(
        element(&page.body, "policy-allow_downgrade")
            .0
            .contains(" checked"),
        "{}",
        page.body
    );
    assert!(page.body.contains("id=\"save-button\""));
    assert!(page.body.contains("id=\"preview-button\""));
    // Sent back unchanged, the fields save the very same policy.
    let before = env.group("stable").await;
    let fields: Vec<(String, String)> = [
        "percentage",
        "ramp_start_at",
        "ramp_start_percent",
        "ramp_duration",
        "rate_limit_count",
        "rate_limit_period",
        "concurrency_limit",
        "update_timeout",
        "gate_min_complete",
        "auto_halt_max_failure_rate",
        "auto_halt_min_attempts",
        "auto_halt_new_machine_weight",
    ]
    .into_iter()
    .map(|f| {
        (
            f.to_owned(),
            input_value(&page.body, &format!("policy-{f}")),
        )
    })
    .chain(
        [
            "ramp_steps",
            "windows",
            "canaries",
            "floors",
            "blocked_versions",
        ]
        .into_iter()
        .map(|f| (f.to_owned(), text_of(&page.body, &format!("policy-{f}")))),
    )
    .chain([
        (
            "gate_group".to_owned(),
            selected(&page.body, "policy-gate_group"),
        ),
        (
            "machine_credential".to_owned(),
            selected(&page.body, "policy-machine_credential"),
        ),
        ("allow_downgrade".to_owned(), "yes".to_owned()),
    ])
    .collect();
    let fields: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let p = env.submit_policy(&cookie, &stable, "save", &fields).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(env.group("stable").await, before);
    env.server.shutdown().await.unwrap();
}
both_databases!(the_editor_shows_the_stored_policy);

async fn a_preview_counts_what_the_engine_counts_and_changes_nothing(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed(json!({"percentage": 0})).await;
    env.release("2.0.0").await;
    env.machines_check_in(40).await;
    let stable = env.group_id("stable").await;
    let before = env.group("stable").await;
    let activity = env.activity_kinds().await;
    let at25 = env.api_preview(25.0).await;
    let expected = at25["added"].as_u64().unwrap();
    assert!(expected > 0 && expected < 40, "{at25}");
    let cookie = env.login(&env.server.admin_token).await;

    let p = env
        .submit_policy(&cookie, &stable, "preview", &[("percentage", "25")])
        .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert_eq!(text_of(&p.body, "preview-now"), expected.to_string());
    assert_eq!(text_of(&p.body, "preview-24h"), "0");
    assert_eq!(text_of(&p.body, "preview-added"), expected.to_string());
    let api_machines: Vec<String> = at25["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["machine_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed(&p.body, "preview-added-machines"), api_machines);
    // The submitted value stays in the form; nothing was stored or recorded.
    assert_eq!(input_value(&p.body, "policy-percentage"), "25");
    assert_eq!(env.group("stable").await, before);
    assert_eq!(env.activity_kinds().await, activity);

    // A ramp from 10 % an hour ago, 50 % a day after its start: the 24 h figure is the
    // difference, as the percentage preview counts them.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let start =
        update_server::clock::format_utc(i64::try_from(now).unwrap() - 3600).replacen(' ', "T", 1);
    let at10 = env.api_preview(10.0).await["added"].as_u64().unwrap();
    let at50 = env.api_preview(50.0).await["added"].as_u64().unwrap();
    assert!(at50 > at10, "{at10} {at50}");
    let p = env
        .submit_policy(
            &cookie,
            &stable,
            "preview",
            &[
                ("ramp_start_at", start.as_str()),
                ("ramp_start_percent", "10"),
                ("ramp_steps", "1d 50"),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert_eq!(text_of(&p.body, "preview-now"), at10.to_string());
    assert_eq!(text_of(&p.body, "preview-24h"), (at50 - at10).to_string());
    assert_eq!(
        listed(&p.body, "preview-later-machines").len() as u64,
        (at50 - at10).min(20)
    );
    assert_eq!(env.group("stable").await, before);

    // A read-only viewer may preview (it changes nothing), with the same answer.
    let reader = env.login(&env.server.read_only_token).await;
    let p = env
        .submit_policy(&reader, &stable, "preview", &[("percentage", "25")])
        .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert_eq!(text_of(&p.body, "preview-now"), expected.to_string());
    assert!(!p.body.contains("id=\"save-button\""));
    assert_eq!(env.group("stable").await, before);
    env.server.shutdown().await.unwrap();
}
both_databases!(a_preview_counts_what_the_engine_counts_and_changes_nothing);

async fn saving_stores_the_policy_as_the_api_patch_does(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed(json!({})).await;
    let (stable, beta) = (env.group_id("stable").await, env.group_id("beta").await);
    // Paused before the editor opens: the save keeps it paused.
    env.admin(
        "POST",
        &format!("/apps/{APP}/groups/stable/rollout/pause"),
        None,
    )
    .await;
    let cookie = env.login(&env.server.admin_token).await;
    let p = env
        .submit_policy(
            &cookie,
            &stable,
            "save",
            &[
                ("percentage", "12.5"),
                ("ramp_start_at", "2026-01-01T00:00"),
                ("ramp_start_percent", "1"),
                ("ramp_steps", "1d 5\n\n36h 25%"),
                ("rate_limit_count", "500"),
                ("rate_limit_period", "3600"),
                ("concurrency_limit", "200"),
                ("update_timeout", "2h"),
                (
                    "windows",
                    "Mon,Wed 09:00 8h Europe/Berlin\r\n  Sat 22:00 1h30m UTC\r\n",
                ),
                ("canaries", " build-01 \nm07"),
                ("gate_group", beta.as_str()),
                ("gate_min_complete", "10"),
                ("auto_halt_max_failure_rate", "0.02"),
                ("auto_halt_min_attempts", "200"),
                ("auto_halt_new_machine_weight", "0.5"),
                ("floors", "1.5.0"),
                ("blocked_versions", "1.9.0\n1.9.1"),
                ("allow_downgrade", "yes"),
                ("machine_credential", "required"),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(
        p.header("location"),
        format!("{}?done=policy", env.group_path(&stable))
    );
    let mut expected = full_policy(&beta);
    expected["paused"] = json!(true);
    let saved = env.group("stable").await;
    assert_eq!(saved["policy"], expected, "{saved}");
    // The same policy through the admin API's PATCH: stored alike, recorded alike.
    env.admin(
        "PATCH",
        &format!("/apps/{APP}/groups/beta"),
        Some(json!({"policy": expected})),
    )
    .await;
    assert_eq!(env.group("beta").await["policy"], saved["policy"]);
    let acts = env.admin("GET", "/activity", None).await;
    let entry = |a: &Value| {
        (
            a["kind"].clone(),
            a["severity"].clone(),
            a["app_id"].clone(),
        )
    };
    assert_eq!(acts[0]["message"], "group beta updated");
    assert_eq!(acts[1]["message"], "group stable updated");
    assert_eq!(acts[1]["group_id"], stable.as_str());
    assert_eq!(entry(&acts[0]), entry(&acts[1]));
    assert_eq!(acts[1]["kind"], "group_updated");
    // The group page says so and shows the policy.
    let page = env
        .get(
            &format!("{}?done=policy", env.group_path(&stable)),
            Some(&cookie),
        )
        .await;
    assert!(page.body.contains("id=\"notice\""), "{}", page.body);
    assert!(page.body.contains("The policy was saved."));
    assert!(page.body.contains("class=\"banner paused\""));
    env.server.shutdown().await.unwrap();
}
both_databases!(saving_stores_the_policy_as_the_api_patch_does);

/// Fields submitted, the field whose error is expected, the start of that error.
type InvalidCase = (
    &'static [(&'static str, &'static str)],
    &'static str,
    &'static str,
);

async fn invalid_input_shows_field_errors_and_stores_nothing(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed(json!({"percentage": 5})).await;
    let stable = env.group_id("stable").await;
    let before = env.group("stable").await;
    let activity = env.activity_kinds().await;
    let cookie = env.login(&env.server.admin_token).await;
    let cases: [InvalidCase; 6] = [
        (
            &[("percentage", "150")],
            "percentage",
            "percentage must be within 0..=100",
        ),
        (
            &[("windows", "Mon-Fri 09:00 8h UTC\nFunday 10:00 1h")],
            "windows",
            "line 2: unknown day",
        ),
        (
            &[("rate_limit_count", "5")],
            "rate_limit_period",
            "give the period too",
        ),
        (
            &[("gate_group", "no-such-group"), ("gate_min_complete", "1")],
            "gate_group",
            "no group \"no-such-group\" in this application",
        ),
        (
            &[
                ("ramp_start_at", "2026-01-01T00:00"),
                ("ramp_steps", "2d 5\n1d 10"),
            ],
            "ramp_steps",
            "ramp.steps must be in strictly increasing after_secs",
        ),
        (
            &[("update_timeout", "soon")],
            "update_timeout",
            "\"soon\" is not a duration",
        ),
    ];
    for (fields, field, message) in cases {
        for action in ["save", "preview"] {
            let p = env.submit_policy(&cookie, &stable, action, fields).await;
            assert_eq!(p.status, StatusCode::BAD_REQUEST, "{field}: {}", p.body);
            let shown = text_of(&p.body, &format!("error-{field}"));
            assert!(shown.starts_with(message), "{field}: {shown}");
            assert!(p.body.contains("id=\"error-form\""), "{}", p.body);
            assert!(
                !p.body.contains("id=\"preview\""),
                "no preview of an invalid policy"
            );
            // The submitted values are kept in the form.
            let (name, value) = fields[0];
            let kept = if name == "windows" || name == "ramp_steps" {
                text_of(&p.body, &format!("policy-{name}"))
            } else if name == "gate_group" {
                selected(&p.body, "policy-gate_group")
            } else {
                input_value(&p.body, &format!("policy-{name}"))
            };
            assert_eq!(kept, value, "{field}");
        }
    }
    assert_eq!(env.group("stable").await, before);
    assert_eq!(env.activity_kinds().await, activity);
    env.server.shutdown().await.unwrap();
}
both_databases!(invalid_input_shows_field_errors_and_stores_nothing);

async fn a_save_from_a_stale_editor_is_refused(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed(json!({"percentage": 5})).await;
    let stable = env.group_id("stable").await;
    let cookie = env.login(&env.server.admin_token).await;
    let page = env.get(&editor(&stable), Some(&cookie)).await;
    let (csrf, shown) = (page.csrf(), page.field("shown"));
    // Paused through the API while the editor is open.
    env.admin(
        "POST",
        &format!("/apps/{APP}/groups/stable/rollout/pause"),
        None,
    )
    .await;
    let paused = env.group("stable").await;
    let fields = [
        ("csrf", csrf.as_str()),
        ("shown", shown.as_str()),
        ("action", "save"),
        ("percentage", "30"),
    ];
    let p = env.post(&editor(&stable), Some(&cookie), &fields).await;
    assert_eq!(p.status, StatusCode::CONFLICT, "{}", p.body);
    assert!(text_of(&p.body, "error-form").contains("changed since"));
    assert!(p.body.contains("class=\"banner paused\""), "{}", p.body);
    assert_eq!(input_value(&p.body, "policy-percentage"), "30");
    assert_eq!(env.group("stable").await, paused, "nothing saved");
    // Saved again from the page that showed the pause: stored, still paused.
    let fields = [
        ("csrf", csrf.as_str()),
        ("shown", &p.field("shown")),
        ("action", "save"),
        ("percentage", "30"),
    ];
    let p = env.post(&editor(&stable), Some(&cookie), &fields).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let g = env.group("stable").await;
    assert_eq!(g["policy"], json!({"paused": true, "percentage": 30.0}));
    env.server.shutdown().await.unwrap();
}
both_databases!(a_save_from_a_stale_editor_is_refused);

async fn read_only_may_view_and_preview_but_not_save_or_create(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed(json!({"percentage": 5})).await;
    let stable = env.group_id("stable").await;
    let before = env.group("stable").await;
    let reader = env.login(&env.server.read_only_token).await;
    let home = env.get("/", Some(&reader)).await;
    assert!(!home.body.contains("new-group-"), "{}", home.body);
    let group = env.get(&env.group_path(&stable), Some(&reader)).await;
    assert!(!group.body.contains("edit-policy"));
    assert_eq!(
        link(&group.body, "view-policy").as_deref(),
        Some(editor(&stable).as_str())
    );
    let page = env.get(&editor(&stable), Some(&reader)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(input_value(&page.body, "policy-percentage"), "5");
    assert!(!page.body.contains("id=\"save-button\""), "{}", page.body);
    assert!(page.body.contains("id=\"preview-button\""));
    // Its posts that would write are refused, its valid CSRF token notwithstanding.
    let p = env
        .submit_policy(&reader, &stable, "save", &[("percentage", "50")])
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN, "{}", p.body);
    assert!(p.body.contains("read-only"), "{}", p.body);
    let p = env
        .get(&format!("/ui/apps/{APP}/groups/new"), Some(&reader))
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let p = env
        .post(
            &format!("/ui/apps/{APP}/groups/new"),
            Some(&reader),
            &[("csrf", &page.csrf()), ("name", "edge")],
        )
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    assert_eq!(env.group("stable").await, before);
    let groups = env.admin("GET", &format!("/apps/{APP}/groups"), None).await;
    assert_eq!(groups.as_array().unwrap().len(), 2);
    env.server.shutdown().await.unwrap();
}
both_databases!(read_only_may_view_and_preview_but_not_save_or_create);

async fn posts_without_the_sessions_csrf_token_are_refused(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed(json!({"percentage": 5})).await;
    let stable = env.group_id("stable").await;
    let before = env.group("stable").await;
    let cookie = env.login(&env.server.admin_token).await;
    let shown = env
        .get(&editor(&stable), Some(&cookie))
        .await
        .field("shown");
    let new_group = format!("/ui/apps/{APP}/groups/new");
    for (path, fields) in [
        (
            editor(&stable),
            vec![
                ("shown", shown.as_str()),
                ("action", "save"),
                ("percentage", "50"),
            ],
        ),
        (
            editor(&stable),
            vec![
                ("csrf", "00ff"),
                ("shown", shown.as_str()),
                ("action", "save"),
                ("percentage", "50"),
            ],
        ),
        (
            editor(&stable),
            vec![("action", "preview"), ("percentage", "50")],
        ),
        (new_group.clone(), vec![("name", "edge")]),
    ] {
        let p = env.post(&path, Some(&cookie), &fields).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{path}: {}", p.body);
        assert!(p.body.contains("security token"), "{}", p.body);
    }
    assert_eq!(env.group("stable").await, before);
    let groups = env.admin("GET", &format!("/apps/{APP}/groups"), None).await;
    assert_eq!(groups.as_array().unwrap().len(), 2);
    env.server.shutdown().await.unwrap();
}
both_databases!(posts_without_the_sessions_csrf_token_are_refused);

async fn creating_a_group_opens_its_editor_and_a_duplicate_is_refused(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed(json!({})).await;
    let channels = env
        .admin("GET", &format!("/apps/{APP}/channels"), None)
        .await;
    let channel = channels[0]["id"].as_str().unwrap().to_owned();
    let cookie = env.login(&env.server.admin_token).await;
    let home = env.get("/", Some(&cookie)).await;
    let new_group = format!("/ui/apps/{APP}/groups/new");
    assert_eq!(
        link(&home.body, &format!("new-group-{APP}")).as_deref(),
        Some(new_group.as_str()),
        "{}",
        home.body
    );
    let form = env.get(&new_group, Some(&cookie)).await;
    assert_eq!(form.status, StatusCode::OK, "{}", form.body);
    assert!(
        form.body
            .contains(&format!("<option value=\"{channel}\">stable</option>")),
        "{}",
        form.body
    );
    let csrf = form.csrf();
    let p = env
        .post(
            &new_group,
            Some(&cookie),
            &[
                ("csrf", csrf.as_str()),
                ("name", "edge"),
                ("track", ""),
                ("channel", channel.as_str()),
                ("description", "the edge racks"),
                ("paused", "yes"),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let edge = env.group("edge").await;
    assert_eq!(edge["track"], "edge");
    assert_eq!(edge["channel_id"], channel.as_str());
    assert_eq!(edge["description"], "the edge racks");
    assert_eq!(edge["policy"], json!({"paused": true}));
    let id = edge["id"].as_str().unwrap();
    assert_eq!(p.header("location"), format!("{}?done=created", editor(id)));
    let acts = env.admin("GET", "/activity", None).await;
    assert_eq!(acts[0]["kind"], "group_created");
    assert_eq!(acts[0]["message"], "group edge created");
    let page = env.get(p.header("location"), Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(text_of(&page.body, "notice").contains("Group edge was created"));
    // The same name again (its track is the name): refused against the name, nothing created.
    let p = env
        .post(
            &new_group,
            Some(&cookie),
            &[("csrf", csrf.as_str()), ("name", "edge"), ("channel", "")],
        )
        .await;
    assert_eq!(p.status, StatusCode::CONFLICT, "{}", p.body);
    assert!(
        text_of(&p.body, "error-name").contains("already exists"),
        "{}",
        p.body
    );
    assert_eq!(input_value(&p.body, "group-name"), "edge");
    // No name, an unknown channel: errors against their fields.
    let p = env
        .post(
            &new_group,
            Some(&cookie),
            &[("csrf", csrf.as_str()), ("name", " "), ("channel", "nope")],
        )
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST, "{}", p.body);
    assert!(text_of(&p.body, "error-channel").contains("no channel"));
    let p = env
        .post(
            &new_group,
            Some(&cookie),
            &[("csrf", csrf.as_str()), ("name", "")],
        )
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST, "{}", p.body);
    assert!(text_of(&p.body, "error-name").starts_with("name must be"));
    let groups = env.admin("GET", &format!("/apps/{APP}/groups"), None).await;
    assert_eq!(groups.as_array().unwrap().len(), 3);
    env.server.shutdown().await.unwrap();
}
both_databases!(creating_a_group_opens_its_editor_and_a_duplicate_is_refused);
