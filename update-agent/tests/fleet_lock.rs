//! The FleetLock client against a tiny in-test HTTP server: exact paths, header and body, error
//! JSON surfaced, `release_after_boot` retrying with backoff until the server accepts, and a
//! refused host asking again after `reboot.lock_retry_secs` ± 10 %.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use update_agent::reboot::fleet_lock::{Backoff, release_after_boot};
use update_agent::reboot::time::Sleeper;
use update_agent::reboot::{FleetLockClient, FleetLockError};

/// (path, fleet-lock-protocol header, body) of each request.
type Seen = Arc<Mutex<Vec<(String, Option<String>, String)>>>;

/// Serves `answers` in order (then 200) and records requests; returns the base URL.
async fn server(answers: Vec<(u16, &'static str)>) -> (url::Url, Seen) {
    let seen: Seen = Arc::default();
    let answers = Arc::new(Mutex::new(answers));
    let (s, a) = (seen.clone(), answers.clone());
    let handler = move |uri: Uri, headers: HeaderMap, body: String| {
        let (s, a) = (s.clone(), a.clone());
        async move {
            let h = headers
                .get("fleet-lock-protocol")
                .map(|v| v.to_str().unwrap().to_owned());
            s.lock().unwrap().push((uri.path().to_owned(), h, body));
            let mut a = a.lock().unwrap();
            let (code, body) = if a.is_empty() { (200, "") } else { a.remove(0) };
            (StatusCode::from_u16(code).unwrap(), body)
        }
    };
    let app = Router::new()
        .route("/fleetlock/v1/pre-reboot", post(handler.clone()))
        .route("/fleetlock/v1/steady-state", post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    // No trailing slash on purpose: the client must still go *under* /fleetlock.
    (format!("http://{addr}/fleetlock").parse().unwrap(), seen)
}

fn client(base: url::Url) -> FleetLockClient {
    FleetLockClient::new(reqwest::Client::new(), base, "workers", "abc123")
}

#[tokio::test]
async fn requests_are_exactly_what_zincati_sends() {
    let (base, seen) = server(vec![]).await;
    let c = client(base);
    c.pre_reboot().await.unwrap();
    c.steady_state().await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let body = r#"{"client_params":{"id":"abc123","group":"workers"}}"#;
    assert_eq!(
        seen,
        [
            (
                "/fleetlock/v1/pre-reboot".to_owned(),
                Some("true".to_owned()),
                body.to_owned()
            ),
            (
                "/fleetlock/v1/steady-state".to_owned(),
                Some("true".to_owned()),
                body.to_owned()
            ),
        ]
    );
}

#[tokio::test]
async fn error_json_is_surfaced_and_other_failures_reported() {
    let (base, _) = server(vec![
        (
            409,
            r#"{"kind":"failed_lock","value":"semaphore full (1/1)"}"#,
        ),
        (500, "internal oops"),
    ])
    .await;
    let c = client(base);
    match c.pre_reboot().await.unwrap_err() {
        FleetLockError::Server {
            status,
            kind,
            value,
            op,
        } => {
            assert_eq!(
                (status, kind.as_str(), value.as_str(), op),
                (409, "failed_lock", "semaphore full (1/1)", "pre-reboot")
            );
        }
        e => panic!("{e}"),
    }
    let e = c.pre_reboot().await.unwrap_err();
    assert!(
        matches!(e, FleetLockError::Status { status: 500, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("internal oops"));
}

#[derive(Default, Clone)]
struct RecordingSleeper(Arc<Mutex<Vec<Duration>>>);

impl Sleeper for RecordingSleeper {
    fn sleep(&self, d: Duration) -> impl std::future::Future<Output = ()> + Send {
        self.0.lock().unwrap().push(d);
        std::future::ready(())
    }
}

#[tokio::test]
async fn release_after_boot_retries_with_backoff_until_released() {
    let (base, seen) = server(vec![
        (503, "down"),
        (500, r#"{"kind":"internal","value":"db"}"#),
        (503, "down"),
        (503, "down"),
    ])
    .await;
    let sleeper = RecordingSleeper::default();
    let backoff = Backoff {
        initial: Duration::from_secs(5),
        max: Duration::from_secs(30),
    };
    let attempts = release_after_boot(&client(base), &sleeper, backoff).await;
    assert_eq!(attempts, 5);
    assert_eq!(
        *sleeper.0.lock().unwrap(),
        [5, 10, 20, 30].map(Duration::from_secs)
    );
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|(p, _, _)| p == "/fleetlock/v1/steady-state")
    );
}

#[tokio::test]
async fn unreachable_server_is_a_transport_error() {
    let c = client("http://127.0.0.1:9/".parse().unwrap());
    assert!(matches!(
        c.steady_state().await.unwrap_err(),
        FleetLockError::Transport {
            op: "steady-state",
            ..
        }
    ));
}

/// Always draws `0` or the top of the range asked for (the shortest or longest jittered wait).
struct Extreme {
    high: bool,
}

impl update_agent::scheduler::Rng for Extreme {
    fn up_to(&mut self, max: u64) -> u64 {
        if self.high { max } else { 0 }
    }
}

#[tokio::test]
async fn refused_host_asks_again_after_the_configured_lock_retry_with_jitter() {
    use update_agent::config::{Inputs, Settings};
    use update_agent::reboot::coordinator::{Observation, Timing, WaitReason};
    use update_agent::reboot::{Coordinator, Decision, RebootStrategy};

    // Refused twice (slot taken), then granted.
    let full = r#"{"kind":"failed_lock","value":"semaphore full (1/1)"}"#;
    let (base, seen) = server(vec![(409, full), (409, full)]).await;
    let file = std::path::Path::new("/etc/platte/agent.d/50-reboot.toml");
    let text = format!(
        "[reboot]\nstrategy = 'fleet-lock'\nlock_retry_secs = 20\n\
         [reboot.fleet_lock]\nbase_url = '{base}'\ngroup = 'workers'\n"
    );
    let mut warnings = Vec::new();
    let fragment = update_agent::config::dropins::parse_str(&text, file, &mut warnings).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let mut inputs = Inputs::default();
    inputs.merge(fragment, file);
    let settings = Settings::from_inputs(&inputs).unwrap().reboot;
    assert_eq!(settings.lock_retry, Duration::from_secs(20));
    let strategy =
        RebootStrategy::from_settings(&settings, "0123456789abcdef0123456789abcdef").unwrap();
    let RebootStrategy::FleetLock(fl) = &strategy else {
        panic!("{strategy:?}")
    };
    let client = fl.client(reqwest::Client::new());
    let timing = Timing {
        lock_retry: settings.lock_retry,
        ..Timing::default()
    };
    let mut c = Coordinator::new(strategy, timing);
    let at = |secs: i64| {
        "2025-06-02T12:00:00Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .checked_add(jiff::SignedDuration::from_secs(secs))
            .unwrap()
    };
    let obs = |secs: i64| Observation {
        now: at(secs),
        staged: Some("2.0.0".into()),
        manual: false,
        force: false,
        inhibitors: vec![],
        users: vec![],
    };
    let refused_wait = |secs: i64| Decision::Wait {
        until: Some(at(secs)),
        reason: WaitReason::LockRefused,
    };

    // Refused at 0 s with the shortest jitter: asked again at 20 s − 10 % = 18 s.
    assert_eq!(c.decide(&obs(0)), Decision::AcquireLock);
    assert!(client.pre_reboot().await.is_err());
    c.lock_refused(at(0), &mut Extreme { high: false });
    assert_eq!(c.decide(&obs(17)), refused_wait(18));
    assert_eq!(c.decide(&obs(18)), Decision::AcquireLock);
    // Refused again at 18 s with the longest: 18 s + 22 s = 40 s.
    assert!(client.pre_reboot().await.is_err());
    c.lock_refused(at(18), &mut Extreme { high: true });
    assert_eq!(c.decide(&obs(39)), refused_wait(40));
    assert_eq!(c.decide(&obs(40)), Decision::AcquireLock);
    client.pre_reboot().await.unwrap();
    c.lock_acquired();
    assert_eq!(c.decide(&obs(40)), Decision::Reboot);
    assert_eq!(seen.lock().unwrap().len(), 3, "three pre-reboot requests");
}
