//! The FleetLock client against a tiny in-test HTTP server: exact paths, header and body, error
//! JSON surfaced, and `release_after_boot` retrying with backoff until the server accepts.
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
