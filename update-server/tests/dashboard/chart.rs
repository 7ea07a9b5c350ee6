//! Dashboard tests: the group's version-over-time chart (an SVG the group page shows) and the
//! overview's check-in rate.

use super::*;

async fn the_version_chart_shows_each_versions_machines_and_escapes_names(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed(json!({})).await;
    for (m, v) in [("m1", "1.0.0"), ("m2", "1.0.0"), ("m3", "<b>9</b>")] {
        env.omaha(
            m,
            "",
            &v.replace('<', "&lt;").replace('>', "&gt;"),
            "<updatecheck></updatecheck>",
        )
        .await;
    }
    let cookie = env.login(&env.server.admin_token).await;
    let chart = format!("{}/versions.svg", env.group_path("stable"));

    // An image gets no login page: without a session it is refused.
    let p = env.get(&chart, None).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);

    let p = env.get(&chart, Some(&cookie)).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert_eq!(p.header("content-type"), "image/svg+xml");
    assert_eq!(p.header("content-security-policy"), CSP);
    // The group's machines now: the legend counts them, the areas are one per version.
    assert!(p.body.contains("1.0.0 (2)"), "{}", p.body);
    assert!(p.body.contains("&lt;b&gt;9&lt;/b&gt; (1)"), "{}", p.body);
    assert!(!p.body.contains("<b>"), "a reported version is text");
    assert_eq!(p.body.matches("<polygon").count(), 2, "{}", p.body);
    assert!(p.body.contains("Machines by version now: 1.0.0 2,"));

    // With stored samples (as the sampler writes them) the chart stacks them before "now":
    // one polygon per series, each with two points per instant (its top and its bottom).
    let stable = env.group("stable").await["id"].as_str().unwrap().to_owned();
    let now = payloads::unix_now() as i64;
    let at = |k: i64| update_server::version_history::sample_instant(now) - k * 600;
    let sample = |at: i64, version: &str, machines: u64| update_server::store::VersionSample {
        app_id: APP.to_owned(),
        group_id: stable.clone(),
        at,
        version: Some(version.to_owned()),
        machines,
    };
    let store = &env.server.state.store;
    let rows = [sample(at(2), "0.9.0", 3), sample(at(2), "1.0.0", 1)];
    assert_eq!(store.record_version_samples(&rows, 0).await.unwrap(), 2);
    let rows = [sample(at(1), "1.0.0", 2), sample(at(1), "<b>9</b>", 1)];
    assert_eq!(store.record_version_samples(&rows, 0).await.unwrap(), 2);
    let p = env.get(&chart, Some(&cookie)).await;
    assert!(
        p.body.contains("0.9.0 (0)"),
        "a past version, none now: {}",
        p.body
    );
    let polygons: Vec<&str> = p.body.split("<polygon").skip(1).collect();
    assert_eq!(polygons.len(), 3, "{}", p.body);
    for poly in polygons {
        let points = poly
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(points.split(' ').count(), 6, "3 instants: {points}");
    }
    // Samples older than the range are not read; a longer range reads them (at its step: a
    // 30-day chart reads one instant in 5 hours).
    let step = update_server::version_history::Range::Month.step();
    let old = [sample((now - 14 * 86_400) / step * step, "0.1.0", 7)];
    assert_eq!(store.record_version_samples(&old, 0).await.unwrap(), 1);
    let p = env.get(&chart, Some(&cookie)).await;
    assert!(!p.body.contains("0.1.0"), "{}", p.body);
    let p = env.get(&format!("{chart}?range=30d"), Some(&cookie)).await;
    assert!(p.body.contains("0.1.0 (0)"), "{}", p.body);

    // Ranges: each accepted; anything else is a 400 naming the choices.
    for range in ["24h", "7d", "30d", "90d", ""] {
        let p = env
            .get(&format!("{chart}?range={range}"), Some(&cookie))
            .await;
        assert_eq!(p.status, StatusCode::OK, "{range}: {}", p.body);
    }
    let p = env.get(&format!("{chart}?range=1y"), Some(&cookie)).await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    assert!(p.body.contains("24h, 7d, 30d or 90d"), "{}", p.body);
    // An unknown group is the admin API's 404.
    let p = env
        .get(
            &format!("{}/versions.svg", env.group_path("nope")),
            Some(&cookie),
        )
        .await;
    assert_eq!(p.status, StatusCode::NOT_FOUND);

    // The group page shows the chart with its range links and a text alternative.
    let p = env.get(&env.group_path("stable"), Some(&cookie)).await;
    assert!(
        p.body.contains(r#"id="version-chart""#),
        "the group page embeds the chart: {}",
        p.body
    );
    assert!(p.body.contains("versions.svg?range=24h"), "{}", p.body);
    assert!(p.body.contains("over the last 24 hours"), "{}", p.body);
    let p = env
        .get(
            &format!("{}?range=7d", env.group_path("stable")),
            Some(&cookie),
        )
        .await;
    assert!(p.body.contains("versions.svg?range=7d"), "{}", p.body);
    let p = env
        .get(
            &format!("{}?range=1y", env.group_path("stable")),
            Some(&cookie),
        )
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    env.server.shutdown().await.unwrap();
}
both_databases!(the_version_chart_shows_each_versions_machines_and_escapes_names);

async fn the_overview_shows_each_groups_check_in_rate(db: TestDb) {
    let env = Env::new(&db).await;
    env.seed(json!({})).await;
    for m in ["m1", "m2", "m3"] {
        env.omaha(m, "", "1.0.0", "<updatecheck></updatecheck>")
            .await;
    }
    let cookie = env.login(&env.server.admin_token).await;
    let p = env.get("/", Some(&cookie)).await;
    let stable = env.group("stable").await["id"].as_str().unwrap().to_owned();
    let card = &p.body[p.body.find(&format!(r#"id="group-{stable}""#)).unwrap()..];
    let card = &card[..card.find("</article>").unwrap()];
    // Three machines within the last five minutes: 0.6 a minute.
    assert!(card.contains("0.6 / min"), "{card}");
    env.server.shutdown().await.unwrap();
}
both_databases!(the_overview_shows_each_groups_check_in_rate);
