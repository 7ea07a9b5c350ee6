//! The FleetLock page, a machine's FleetLock slot and the activity page: holders taken through
//! the real FleetLock protocol and tied to their machines (by machine id or by the agent's
//! app-specific id), release from the dashboard equal to the admin API's, the read-only role
//! and CSRF refusals, the feed's filters and pages, hostile text rendered escaped.

use super::*;

/// A machine id as `/etc/machine-id` holds it, and the FleetLock id the Platte agent sends for
/// it (`systemd-id128 machine-id --app-specific=a0c3f1d2e4b5468797a8b9cadbecfd0e`).
const MACHINE: &str = "0123456789abcdef0123456789abcdef";
const MACHINE_LOCK_ID: &str = "5f2dc83233ae4336a7ccaa5b681828c7";

impl super::Env {
    /// A FleetLock request exactly as Zincati and the agent send it (`op`: `pre-reboot` or
    /// `steady-state`); returns the status.
    async fn lock(&self, op: &str, id: &str, group: &str) -> StatusCode {
        self.http
            .post(format!("{}/fleetlock/v1/{op}", self.base))
            .header("fleet-lock-protocol", "true")
            .json(&json!({"client_params": {"id": id, "group": group}}))
            .send()
            .await
            .unwrap()
            .status()
    }

    /// The holder ids of FleetLock group `group`, as the admin API lists them.
    async fn holders(&self, group: &str) -> Vec<String> {
        let g = self
            .admin("GET", &format!("/fleetlock/groups/{group}"), None)
            .await;
        g["holders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The activity entries as the admin API lists them (`query`: its query string), newest
    /// first.
    async fn activity(&self, query: &str) -> Vec<Value> {
        let v = self.admin("GET", &format!("/activity?{query}"), None).await;
        v.as_array().unwrap().clone()
    }
}

/// The `action` of the form with id `id`, unescaped.
fn form_action(body: &str, id: &str) -> String {
    let at = body
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no form {id} in {body}"));
    let rest = &body[at..];
    let rest = &rest[rest.find("action=\"").unwrap() + "action=\"".len()..];
    rest[..rest.find('"').unwrap()].replace("&amp;", "&")
}

/// The `data-activity-id`s of a page's rows, in order.
fn activity_ids(body: &str) -> Vec<i64> {
    body.split("data-activity-id=\"")
        .skip(1)
        .map(|s| s[..s.find('"').unwrap()].parse().unwrap())
        .collect()
}

/// The ids of entries as the admin API lists them.
fn ids(entries: &[Value]) -> Vec<i64> {
    entries.iter().map(|e| e["id"].as_i64().unwrap()).collect()
}

async fn a_stuck_holder_is_shown_and_released_as_the_admin_api_does(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed(json!({})).await;
    // A Platte agent (its app-specific id) and a client that sends its machine id itself.
    env.omaha(MACHINE, "web-1", "1.0.0", "<updatecheck></updatecheck>")
        .await;
    env.omaha("m-plain", "db-1", "1.0.0", "<updatecheck></updatecheck>")
        .await;
    assert_eq!(
        env.lock("pre-reboot", MACHINE_LOCK_ID, "workers").await,
        StatusCode::OK
    );
    assert_eq!(
        env.lock("pre-reboot", "m-plain", "db").await,
        StatusCode::OK
    );
    // A holder no machine is known for.
    assert_eq!(
        env.lock("pre-reboot", "zincati-node", "edge").await,
        StatusCode::OK
    );
    let cookie = env.login(&env.server.admin_token).await;

    // The FleetLock page: every group, its slots, its holders tied to their machines.
    let p = env.get("/ui/fleetlock", Some(&cookie)).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert!(p.body.contains("data-section=\"fleetlock\""));
    for group in ["workers", "db", "edge"] {
        assert!(
            p.body.contains(&format!("id=\"lock-group-{group}\"")),
            "{group}: {}",
            p.body
        );
    }
    assert!(
        p.body.contains(&format!(
            "data-holder=\"{MACHINE_LOCK_ID}\" data-machine=\"{MACHINE}\""
        )),
        "{}",
        p.body
    );
    assert!(
        p.body
            .contains(&format!("href=\"/ui/instances/{MACHINE}\""))
    );
    assert!(
        p.body
            .contains("data-holder=\"m-plain\" data-machine=\"m-plain\"")
    );
    assert!(
        p.body
            .contains("<tr class=\"holder\" data-holder=\"zincati-node\">")
    );
    assert!(p.body.contains("<dd class=\"held\">1 of 1</dd>"));
    assert!(p.body.contains("id=\"release-form-workers-0\""));
    assert!(p.body.contains("id=\"release-confirm-workers-0\""));

    // The machine's page says which slot it holds, with the same release form.
    let machine = env
        .get(&format!("/ui/instances/{MACHINE}"), Some(&cookie))
        .await;
    assert_eq!(machine.status, StatusCode::OK, "{}", machine.body);
    assert!(
        machine
            .body
            .contains("FleetLock: holds a slot in group <a href=\"/ui/fleetlock#lock-group-workers\">workers</a> since <time"),
        "{}",
        machine.body
    );
    assert!(machine.body.contains("id=\"fleetlock-slot-workers\""));
    let release = form_action(&machine.body, "release-form-workers");
    assert_eq!(
        release,
        format!("/ui/fleetlock/groups/workers/holders/{MACHINE_LOCK_ID}/release")
    );
    // A machine holding nothing has no FleetLock section.
    env.omaha("m-idle", "idle", "1.0.0", "<updatecheck></updatecheck>")
        .await;
    let idle = env.get("/ui/instances/m-idle", Some(&cookie)).await;
    assert!(!idle.body.contains("id=\"fleetlock\""), "{}", idle.body);

    // The slot is taken: another machine is refused.
    assert_eq!(
        env.lock("pre-reboot", "m2", "workers").await,
        StatusCode::CONFLICT
    );
    // Without the confirmation box nothing changes.
    let token = machine.csrf();
    let p = env
        .post(
            &release,
            Some(&cookie),
            &[("csrf", &token), ("machine", MACHINE)],
        )
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST, "{}", p.body);
    assert_eq!(env.holders("workers").await, [MACHINE_LOCK_ID]);
    // Released from the machine's page: back there, the slot is free for another machine.
    let p = env
        .post(
            &release,
            Some(&cookie),
            &[("csrf", &token), ("confirm", "yes"), ("machine", MACHINE)],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(
        p.header("location"),
        format!("/ui/instances/{MACHINE}?done=released")
    );
    assert!(env.holders("workers").await.is_empty());
    assert_eq!(
        env.lock("pre-reboot", "m2", "workers").await,
        StatusCode::OK
    );
    let machine = env
        .get(
            &format!("/ui/instances/{MACHINE}?done=released"),
            Some(&cookie),
        )
        .await;
    assert!(machine.body.contains("id=\"notice\""));
    assert!(
        !machine.body.contains("id=\"fleetlock\""),
        "{}",
        machine.body
    );

    // Released from the FleetLock page, and `db`'s holder through the admin API: the same
    // activity entry.
    let p = env.get("/ui/fleetlock", Some(&cookie)).await;
    let release_edge = form_action(&p.body, "release-form-edge-0");
    let p = env
        .post(
            &release_edge,
            Some(&cookie),
            &[("csrf", &p.csrf()), ("confirm", "yes")],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(p.header("location"), "/ui/fleetlock?done=released");
    env.admin("DELETE", "/fleetlock/groups/db/holders/m-plain", None)
        .await;
    let released: Vec<Value> = env
        .activity("")
        .await
        .into_iter()
        .filter(|a| a["kind"] == "fleetlock_force_released")
        .collect();
    assert_eq!(released.len(), 3, "{released:?}");
    let shape = |a: &Value| {
        (
            a["severity"].clone(),
            a["app_id"].clone(),
            a["group_id"].clone(),
            a["version"].clone(),
        )
    };
    assert_eq!(shape(&released[0]), shape(&released[1]));
    assert_eq!(shape(&released[0]), shape(&released[2]));
    assert_eq!(released[0]["severity"], "warning");
    let said: Vec<(&str, &str)> = released
        .iter()
        .map(|a| {
            (
                a["machine_id"].as_str().unwrap(),
                a["message"].as_str().unwrap(),
            )
        })
        .collect();
    let lock_id_message =
        format!("FleetLock slot of {MACHINE_LOCK_ID} in group workers released by an operator");
    assert_eq!(
        said,
        [
            (
                "m-plain",
                "FleetLock slot of m-plain in group db released by an operator"
            ),
            (
                "zincati-node",
                "FleetLock slot of zincati-node in group edge released by an operator"
            ),
            (MACHINE_LOCK_ID, lock_id_message.as_str()),
        ]
    );
    let p = env.get("/ui/fleetlock?done=released", Some(&cookie)).await;
    assert!(p.body.contains("id=\"notice\""));
    assert!(!p.body.contains("data-holder=\"zincati-node\""));
    assert!(p.body.contains("data-holder=\"m2\""));
    // Releasing a holder that no longer holds is the admin API's 404.
    let p = env
        .post(
            &release_edge,
            Some(&cookie),
            &[("csrf", &token), ("confirm", "yes")],
        )
        .await;
    assert_eq!(p.status, StatusCode::NOT_FOUND, "{}", p.body);
    assert!(
        p.body
            .contains("FleetLock holder zincati-node in group edge not found")
    );
    env.server.shutdown().await.unwrap();
}
both_databases!(a_stuck_holder_is_shown_and_released_as_the_admin_api_does);

async fn read_only_cannot_release_and_releases_need_their_csrf_token(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed(json!({})).await;
    env.omaha("m1", "web-1", "1.0.0", "<updatecheck></updatecheck>")
        .await;
    assert_eq!(
        env.lock("pre-reboot", "m1", "workers").await,
        StatusCode::OK
    );
    for path in ["/ui/fleetlock", "/ui/activity"] {
        let p = env.get(path, None).await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(p.header("location"), "/ui/login", "{path}");
    }
    let release = "/ui/fleetlock/groups/workers/holders/m1/release";

    // Read-only: the holder is shown, no release control anywhere; its posts are refused.
    let reader = env.login(&env.server.read_only_token).await;
    let page = env.get("/ui/fleetlock", Some(&reader)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("data-holder=\"m1\" data-machine=\"m1\""));
    let machine = env.get("/ui/instances/m1", Some(&reader)).await;
    assert!(machine.body.contains("FleetLock: holds a slot in group"));
    for body in [&page.body, &machine.body] {
        assert!(!body.contains("release-form"), "{body}");
        assert!(!body.contains("/release"), "{body}");
    }
    let p = env
        .post(
            release,
            Some(&reader),
            &[("csrf", &page.csrf()), ("confirm", "yes")],
        )
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    assert!(p.body.contains("read-only"), "{}", p.body);

    // Admin: without its session's token, or sent from another site, refused too.
    let cookie = env.login(&env.server.admin_token).await;
    let token = env.get("/ui/fleetlock", Some(&cookie)).await.csrf();
    let other = env.get("/", Some(&reader)).await.csrf();
    let refused = [
        env.post(release, Some(&cookie), &[("confirm", "yes")])
            .await,
        env.post(
            release,
            Some(&cookie),
            &[("confirm", "yes"), ("csrf", "00ff")],
        )
        .await,
        env.post(
            release,
            Some(&cookie),
            &[("confirm", "yes"), ("csrf", &other)],
        )
        .await,
        env.post(release, None, &[("confirm", "yes"), ("csrf", &token)])
            .await,
        env.send(
            env.http
                .post(format!("{}{release}", env.base))
                .header("cookie", &cookie)
                .header("sec-fetch-site", "cross-site")
                .form(&[("confirm", "yes"), ("csrf", token.as_str())]),
        )
        .await,
    ];
    for p in refused {
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{}", p.body);
        assert_eq!(p.header("content-security-policy"), CSP);
    }
    assert_eq!(env.holders("workers").await, ["m1"]);
    assert!(
        !env.activity_kinds()
            .await
            .contains(&"fleetlock_force_released".to_owned())
    );
    // With it, released.
    let p = env
        .post(
            release,
            Some(&cookie),
            &[("confirm", "yes"), ("csrf", &token)],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert!(env.holders("workers").await.is_empty());
    env.server.shutdown().await.unwrap();
}
both_databases!(read_only_cannot_release_and_releases_need_their_csrf_token);

async fn the_activity_page_lists_filters_and_pages_the_feed(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed(json!({})).await;
    let other = "b1a2c3d4-0000-4000-8000-000000000001";
    env.admin("POST", "/apps", Some(json!({"id": other, "name": "Tools"})))
        .await;
    for group in ["stable", "beta", "stable"] {
        env.admin(
            "POST",
            &format!("/apps/{APP}/groups/{group}/rollout/pause"),
            None,
        )
        .await;
        env.admin(
            "POST",
            &format!("/apps/{APP}/groups/{group}/rollout/resume"),
            None,
        )
        .await;
    }
    let all = env.activity("").await;
    assert!(all.len() >= 11, "{all:?}");
    let cookie = env.login(&env.server.read_only_token).await;

    // Unfiltered: every entry, newest first, as the API lists them.
    let p = env.get("/ui/activity", Some(&cookie)).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert!(p.body.contains("data-section=\"activity\""));
    assert_eq!(activity_ids(&p.body), ids(&all));
    assert!(link(&p.body, "page-next").is_none());
    assert!(
        p.body
            .contains("data-kind=\"rollout_paused\" data-severity=\"info\"")
    );

    // By application: the feed operation's own filter.
    let p = env
        .get(
            &format!("/ui/activity?app={other}&kind=&search="),
            Some(&cookie),
        )
        .await;
    let tools = env.activity(&format!("app={other}")).await;
    assert_eq!(tools.len(), 1);
    assert_eq!(activity_ids(&p.body), ids(&tools));
    // By kind, by text, by severity.
    let paused: Vec<Value> = all
        .iter()
        .filter(|a| a["kind"] == "rollout_paused")
        .cloned()
        .collect();
    assert_eq!(paused.len(), 3);
    let p = env
        .get("/ui/activity?kind=rollout_paused", Some(&cookie))
        .await;
    assert_eq!(activity_ids(&p.body), ids(&paused));
    let beta: Vec<Value> = all
        .iter()
        .filter(|a| a["message"].as_str().unwrap().contains("group beta"))
        .cloned()
        .collect();
    assert!(beta.len() >= 3, "{beta:?}");
    let p = env
        .get("/ui/activity?search=GROUP+BETA", Some(&cookie))
        .await;
    assert_eq!(activity_ids(&p.body), ids(&beta));
    let p = env.get("/ui/activity?severity=error", Some(&cookie)).await;
    assert!(activity_ids(&p.body).is_empty());
    assert!(p.body.contains("No entry matches"), "{}", p.body);
    let p = env.get("/ui/activity?severity=bogus", Some(&cookie)).await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    assert!(p.body.contains("unknown severity"), "{}", p.body);

    // Pages of 4, then pages of 1 of a filtered feed: each entry once, in order; the last
    // page has no next link, later pages link back to the newest.
    for (start, want) in [
        ("/ui/activity?limit=4", ids(&all)),
        ("/ui/activity?kind=rollout_paused&limit=1", ids(&paused)),
    ] {
        let mut path = start.to_owned();
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let p = env.get(&path, Some(&cookie)).await;
            assert_eq!(p.status, StatusCode::OK, "{path}: {}", p.body);
            let page_ids = activity_ids(&p.body);
            assert!(!page_ids.is_empty(), "{path}");
            seen.extend(page_ids);
            assert_eq!(link(&p.body, "page-newest").is_some(), pages > 0, "{path}");
            pages += 1;
            match link(&p.body, "page-next") {
                Some(next) => path = next,
                None => break,
            }
        }
        assert_eq!(seen, want, "{start}");
        assert_eq!(
            pages,
            want.len()
                .div_ceil(if start.contains("limit=4") { 4 } else { 1 })
        );
    }
    env.server.shutdown().await.unwrap();
}
both_databases!(the_activity_page_lists_filters_and_pages_the_feed);

async fn hostile_names_in_fleetlock_and_activity_render_as_text(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed(json!({})).await;
    let script = "<script>alert(1)</script>";
    let escaped = "&lt;script&gt;alert(1)&lt;/script&gt;";
    // A group named with markup (an activity message names it) and a FleetLock client id.
    env.admin(
        "POST",
        &format!("/apps/{APP}/groups"),
        Some(json!({"name": script, "channel": "stable"})),
    )
    .await;
    assert_eq!(
        env.lock("pre-reboot", script, "workers").await,
        StatusCode::OK
    );
    let cookie = env.login(&env.server.admin_token).await;
    let locks = env.get("/ui/fleetlock", Some(&cookie)).await;
    assert_eq!(locks.status, StatusCode::OK);
    assert!(
        locks
            .body
            .contains(&format!("<td class=\"mono\">{escaped}</td>")),
        "{}",
        locks.body
    );
    // Its release form posts to its id, encoded, and works.
    let release = form_action(&locks.body, "release-form-workers-0");
    assert_eq!(
        release,
        "/ui/fleetlock/groups/workers/holders/%3Cscript%3Ealert%281%29%3C%2Fscript%3E/release"
    );
    let p = env
        .post(
            &release,
            Some(&cookie),
            &[("csrf", &locks.csrf()), ("confirm", "yes")],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert!(env.holders("workers").await.is_empty());
    let feed = env.get("/ui/activity", Some(&cookie)).await;
    assert_eq!(feed.status, StatusCode::OK);
    assert!(
        feed.body.contains(&format!(
            "FleetLock slot of {escaped} in group workers released"
        )),
        "{}",
        feed.body
    );
    assert!(
        feed.body.contains(&format!("group {escaped} created")),
        "{}",
        feed.body
    );
    let searched = env
        .get("/ui/activity?search=%3Cscript%3E", Some(&cookie))
        .await;
    assert_eq!(activity_ids(&searched.body).len(), 2, "{}", searched.body);
    for p in [&locks, &feed, &searched] {
        assert!(!p.body.contains(script), "{}", p.body);
        assert!(!p.body.contains("<script>"), "{}", p.body);
    }
    env.server.shutdown().await.unwrap();
}
both_databases!(hostile_names_in_fleetlock_and_activity_render_as_text);
