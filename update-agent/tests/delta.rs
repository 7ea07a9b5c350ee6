//! End-to-end delta payloads: the agent binary against a stand-in Omaha and download server on
//! loopback (behind the fault-injecting proxy), writing a GPT disk image file. The stand-in
//! answers as the update server's delta contract says: the delta only when the OS `<app>` says
//! `delta_okay="true"` and runs exactly the delta's source version, else the full payload; the
//! answer looks like a full one, with `IsDeltaPayload="true"`.
//!
//! Covered: what the requests say (`delta_okay` true by default, false when `updates.deltas` is
//! off), a delta built from the image in the active slot installing into the inactive one with
//! the active slot unchanged, a delta whose source does not match (3105, the full payload next,
//! deltas asked for again once another version runs), and the resume of an interrupted delta
//! download.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use omaha::{
    Action, AppResponse, DayStart, Manifest, Package, Response, UpdateCheckResponse,
    normalize_appid,
};
use support::{APP, CHUNK, IMAGE_LEN, World, noise};
use testkit::sgdisk::{assert_verified, attrs, gptprio};

/// Non-production-server flag the agent ORs into error codes.
const FLAG: u32 = 1 << 28;
/// Platte's code for a delta whose source does not match the active slot.
const DELTA_SOURCE_MISMATCH: u32 = omaha::PlatteCode::DeltaSourceMismatch.to_u32();

/// The image the test world writes into slot A (the running 1.0.0).
fn image_a() -> Vec<u8> {
    noise(IMAGE_LEN, 0xA)
}

/// 2.0.0: slot A's image with 2 MiB of new data, a zeroed region and a moved block, so its delta
/// has SOURCE_COPY, REPLACE and ZERO operations.
fn image_2() -> Vec<u8> {
    let mut v = image_a();
    v[(1 << 20)..(3 << 20)].copy_from_slice(&noise(2 << 20, 0xB2));
    v[(4 << 20)..(4 << 20) + (256 << 10)].fill(0);
    let moved = v[..64 << 10].to_vec();
    v[(5 << 20)..(5 << 20) + (64 << 10)].copy_from_slice(&moved);
    v
}

/// The delta from `from` (running `from_version`) to `to` as `version`, signed by the world's key.
fn build_delta(w: &World, from_version: &str, from: &[u8], version: &str, to: &[u8]) -> Vec<u8> {
    let mut build = testkit::release::options(APP, version);
    build.chunk_size = CHUNK;
    build.threads = 1;
    let opts = payloads::DeltaOptions::new(build, from_version);
    payloads::build_delta_to_vec(from, to, std::slice::from_ref(&w.key), &opts)
        .unwrap()
        .0
}

/// One payload the stand-in serves.
#[derive(Clone)]
struct Served {
    name: String,
    bytes: Arc<Vec<u8>>,
}

/// The release the stand-in offers: a full payload, and maybe a delta from one source version.
#[derive(Clone)]
struct Release {
    version: String,
    full: Served,
    delta: Option<(String, Served)>,
}

/// What the stand-in offers and what it was asked.
#[derive(Default)]
struct Catalog {
    /// Base of the download URLs (the proxy's, so downloads pass through it).
    codebase: String,
    release: Option<Release>,
    /// Files by name.
    files: HashMap<String, Arc<Vec<u8>>>,
    /// The OS app's `(version, delta_okay)` of every update check, in order.
    checks: Vec<(String, Option<bool>)>,
    /// The OS app's event reports `(type, result, errorcode)`, in order (not the 3/2 every
    /// update check carries).
    events: Vec<(u32, u32, Option<u32>)>,
    /// Names of the payloads offered, in order.
    offered: Vec<String>,
}

type Shared = Arc<Mutex<Catalog>>;

/// The stand-in's Omaha endpoint: acknowledges pings and events, answers update checks of the OS
/// app by the delta contract.
async fn omaha_endpoint(State(cat): State<Shared>, body: Bytes) -> impl IntoResponse {
    let req = match omaha::parse_request(&body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let mut cat = cat.lock().unwrap();
    let mut resp = Response::new("stand-in", DayStart::default());
    for app in &req.apps {
        let mut out = AppResponse::new(app.appid.clone()).with_event_acks(app.events.len());
        if app.ping.is_some() {
            out = out.with_ping_ack();
        }
        let os = normalize_appid(&app.appid) == normalize_appid(APP);
        if os && app.updatecheck.is_none() {
            for e in &app.events {
                cat.events.push((
                    e.event_type.to_u32(),
                    e.result.to_u32(),
                    e.errorcode.map(omaha::DecodedErrorCode::to_raw),
                ));
            }
        }
        if app.updatecheck.is_some() {
            let running = app.version.clone().unwrap_or_default();
            let uc = match (&cat.release, os) {
                (Some(r), true) if r.version != running => {
                    let (served, delta) = match &r.delta {
                        Some((source, d)) if app.delta_okay == Some(true) && *source == running => {
                            (d.clone(), true)
                        }
                        _ => (r.full.clone(), false),
                    };
                    let digest = sha256(&served.bytes);
                    let manifest = Manifest::new(r.version.clone())
                        .with_package(
                            Package::new(served.name.clone(), served.bytes.len() as u64)
                                .with_sha256(&digest)
                                .required(true),
                        )
                        .with_action(Action::postinstall(&digest).with_is_delta_payload(delta));
                    cat.offered.push(served.name);
                    UpdateCheckResponse::ok(cat.codebase.clone(), manifest)
                }
                _ => UpdateCheckResponse::noupdate(),
            };
            if os {
                cat.checks.push((running, app.delta_okay));
            }
            out = out.with_updatecheck(uc);
        }
        resp = resp.with_app(out);
    }
    ([(header::CONTENT_TYPE, "text/xml")], resp.to_xml()).into_response()
}

/// The stand-in's downloads, with `Range: bytes=N-` and `bytes=N-M`.
async fn download(
    State(cat): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> impl IntoResponse {
    let Some(bytes) = cat.lock().unwrap().files.get(&name).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let total = bytes.len();
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .map(|(a, b)| {
            let start: usize = a.parse().unwrap();
            let end = if b.is_empty() {
                total - 1
            } else {
                b.parse::<usize>().unwrap().min(total - 1)
            };
            (start, end)
        });
    match range {
        Some((start, end)) if start <= end => (
            StatusCode::PARTIAL_CONTENT,
            [(
                header::CONTENT_RANGE,
                format!("bytes {start}-{end}/{total}"),
            )],
            bytes[start..=end].to_vec(),
        )
            .into_response(),
        Some(_) => StatusCode::RANGE_NOT_SATISFIABLE.into_response(),
        None => (StatusCode::OK, bytes.to_vec()).into_response(),
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).into()
}

/// The test world with the stand-in behind its proxy (the world's update server is not used).
struct DeltaWorld {
    w: World,
    cat: Shared,
}

impl DeltaWorld {
    fn new(running: &str) -> Self {
        let w = World::new(running);
        let cat: Shared = Arc::default();
        cat.lock().unwrap().codebase = format!("http://{}/pkg/", w.proxy.addr);
        let app = Router::new()
            .route("/v1/update/", post(omaha_endpoint))
            .route("/pkg/{name}", get(download))
            .with_state(Arc::clone(&cat));
        let listener =
            w.rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .unwrap();
        let addr = listener.local_addr().unwrap();
        w.rt.spawn(async move { axum::serve(listener, app).await });
        w.proxy.with(|f| f.upstream = format!("http://{addr}"));
        Self { w, cat }
    }

    /// Offers `version` as `full`, and as `delta` (from its source version) when given.
    fn release(&self, version: &str, full: Vec<u8>, delta: Option<(&str, Vec<u8>)>) {
        let mut cat = self.cat.lock().unwrap();
        let full = Served {
            name: format!("full-{version}.payload"),
            bytes: Arc::new(full),
        };
        cat.files.insert(full.name.clone(), Arc::clone(&full.bytes));
        let delta = delta.map(|(source, bytes)| {
            let d = Served {
                name: format!("delta-{source}-{version}.payload"),
                bytes: Arc::new(bytes),
            };
            cat.files.insert(d.name.clone(), Arc::clone(&d.bytes));
            (source.to_owned(), d)
        });
        cat.release = Some(Release {
            version: version.to_owned(),
            full,
            delta,
        });
    }

    /// `delta_okay` of the last update check of the OS app.
    fn last_delta_okay(&self) -> Option<bool> {
        self.cat.lock().unwrap().checks.last().unwrap().1
    }

    /// The payloads offered, in order.
    fn offered(&self) -> Vec<String> {
        self.cat.lock().unwrap().offered.clone()
    }

    fn events(&self) -> Vec<(u32, u32, Option<u32>)> {
        self.cat.lock().unwrap().events.clone()
    }

    /// `run --once`, expecting exit status `code`.
    fn once_expect(&self, code: i32) {
        assert_eq!(self.w.once(), code, "agent log:\n{}", self.w.agent_log());
    }
}

#[test]
fn requests_say_delta_okay_unless_deltas_are_off() {
    let d = DeltaWorld::new("1.0.0");
    d.once_expect(0);
    assert_eq!(
        d.last_delta_okay(),
        Some(true),
        "deltas are asked for by default"
    );
    let raw =
        d.w.proxy
            .with(|f| f.omaha_requests.last().cloned().unwrap());
    assert!(raw.contains(r#"delta_okay="true""#), "{raw}");

    // Off in the configuration: the full payload is offered although a delta exists.
    d.w.write_config("50-deltas.toml", "[updates]\ndeltas = false\n");
    let img2 = image_2();
    let full = support::build_payload(&d.w.key, "2.0.0", &img2);
    let delta = build_delta(&d.w, "1.0.0", &image_a(), "2.0.0", &img2);
    d.release("2.0.0", full.clone(), Some(("1.0.0", delta)));
    d.once_expect(2);
    assert_eq!(d.last_delta_okay(), Some(false));
    assert_eq!(d.offered(), ["full-2.0.0.payload"]);
    assert_eq!(d.w.read_part(2, IMAGE_LEN), img2);
    assert_eq!(d.w.proxy.with(|f| f.download_bytes), full.len() as u64);
    // Every request of the run said the same (the events too).
    let requests = d.w.proxy.with(|f| f.omaha_requests.clone());
    assert!(requests.len() >= 4, "{requests:?}");
    for r in &requests[1..] {
        assert!(r.contains(r#"delta_okay="false""#), "{r}");
    }
}

#[test]
fn a_delta_from_the_active_slot_installs_into_the_inactive_one() {
    let d = DeltaWorld::new("1.0.0");
    let img2 = image_2();
    let full = support::build_payload(&d.w.key, "2.0.0", &img2);
    let delta = build_delta(&d.w, "1.0.0", &image_a(), "2.0.0", &img2);
    assert!(
        delta.len() * 2 < full.len(),
        "the delta ships little: {} of {} bytes",
        delta.len(),
        full.len()
    );
    d.release("2.0.0", full, Some(("1.0.0", delta.clone())));
    let slot_a = d.w.read_part(1, 8 << 20);
    assert_eq!(slot_a[..IMAGE_LEN], image_a());

    d.once_expect(2);
    assert_eq!(d.last_delta_okay(), Some(true));
    assert_eq!(d.offered(), ["delta-1.0.0-2.0.0.payload"]);
    assert_eq!(
        d.w.proxy.with(|f| f.download_bytes),
        delta.len() as u64,
        "only the delta was downloaded"
    );
    assert_eq!(d.w.read_part(2, IMAGE_LEN), img2, "slot B holds 2.0.0");
    assert_eq!(
        d.w.read_part(1, 8 << 20),
        slot_a,
        "slot A byte for byte as before"
    );
    assert_eq!(attrs(&d.w.img, 2), gptprio(2, 1, false));
    assert_eq!(attrs(&d.w.img, 1), gptprio(1, 0, true));
    assert_verified(&d.w.img);
    let st = d.w.state();
    assert_eq!(st["phase"], "staged", "{st}");
    assert!(st["delta_failure"].is_null(), "{st}");
    let log = d.w.agent_log();
    assert!(log.contains("a delta from the running version"), "{log}");
    assert_eq!(
        d.events(),
        [(13, 1, None), (14, 1, None), (3, 1, None)],
        "reported like a full payload"
    );
}

#[test]
fn a_delta_that_does_not_match_the_active_slot_falls_back_to_the_full_payload() {
    let d = DeltaWorld::new("1.0.0");
    let img2 = image_2();
    let full = support::build_payload(&d.w.key, "2.0.0", &img2);
    let delta = build_delta(&d.w, "1.0.0", &image_a(), "2.0.0", &img2);
    d.release("2.0.0", full.clone(), Some(("1.0.0", delta)));
    // Behind the agent's back, slot A differs from the image the delta was built from, in an
    // extent the delta copies after it has written new data.
    d.w.write_part(
        1,
        3 << 20 | 512 << 10,
        b"not the image the delta was built from",
    );
    let slot_a = d.w.read_part(1, 8 << 20);

    d.once_expect(1);
    assert_eq!(d.offered(), ["delta-1.0.0-2.0.0.payload"]);
    assert_eq!(
        attrs(&d.w.img, 2),
        gptprio(0, 0, false),
        "the half-written slot B is not bootable"
    );
    assert_eq!(attrs(&d.w.img, 1), gptprio(1, 0, true));
    assert_eq!(d.w.read_part(1, 8 << 20), slot_a, "slot A untouched");
    assert_verified(&d.w.img);
    let st = d.w.state();
    assert_eq!(st["last_error"]["code"], DELTA_SOURCE_MISMATCH, "{st}");
    assert_eq!(st["delta_failure"]["running_version"], "1.0.0", "{st}");
    assert_eq!(st["delta_failure"]["version"], "2.0.0", "{st}");
    assert_eq!(st["delta_failure"]["code"], DELTA_SOURCE_MISMATCH, "{st}");
    assert!(st["checkpoint"].is_null(), "{st}");
    assert_ne!(st["phase"], "staged", "{st}");
    // Reported as deferred (3/9), not as a failure (3/0): the release is not at fault, and a
    // rollout's auto-halt must not count it.
    assert!(
        d.events()
            .contains(&(3, 9, Some(FLAG | DELTA_SOURCE_MISMATCH))),
        "{:?}",
        d.events()
    );
    assert!(
        !d.events().iter().any(|&(t, r, _)| (t, r) == (3, 0)),
        "{:?}",
        d.events()
    );

    // The next check asks for the full payload, and gets it.
    d.once_expect(2);
    assert_eq!(d.last_delta_okay(), Some(false));
    assert_eq!(
        d.offered(),
        ["delta-1.0.0-2.0.0.payload", "full-2.0.0.payload"]
    );
    assert_eq!(d.w.read_part(2, IMAGE_LEN), img2);
    assert_eq!(attrs(&d.w.img, 2), gptprio(2, 1, false));
    assert_eq!(d.w.read_part(1, 8 << 20), slot_a, "slot A still untouched");
    assert_eq!(d.w.state()["delta_failure"]["running_version"], "1.0.0");
    // Staged: checking again still says false while 1.0.0 runs.
    d.once_expect(0);
    assert_eq!(d.last_delta_okay(), Some(false));

    // Running 2.0.0, deltas are okay again, and the record is gone.
    d.w.reboot_into("boot-2", "B", "2.0.0");
    d.once_expect(0);
    assert_eq!(d.last_delta_okay(), Some(true));
    assert!(d.w.state()["delta_failure"].is_null(), "{}", d.w.state());
}

#[test]
fn an_interrupted_delta_download_resumes_with_range() {
    let d = DeltaWorld::new("1.0.0");
    let img2 = image_2();
    let full = support::build_payload(&d.w.key, "2.0.0", &img2);
    let delta = build_delta(&d.w, "1.0.0", &image_a(), "2.0.0", &img2);
    let prefix = payloads::read_prefix(&mut std::io::Cursor::new(&delta))
        .unwrap()
        .1
        .len() as u64;
    d.release("2.0.0", full, Some(("1.0.0", delta.clone())));
    let slot_a = d.w.read_part(1, 8 << 20);
    // One attempt per run: the cut download keeps its checkpoint for the next run.
    d.w.write_config("70-retries.toml", "[install]\nattempts_per_url = 1\n");
    let cut = prefix + (1 << 20) + 1000;
    d.w.proxy.with(|f| f.cut_at = Some(cut));
    d.once_expect(1);
    let st = d.w.state();
    let offset = st["checkpoint"]["applier"]["payload_offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("a checkpoint: {st}"));
    assert!(offset > prefix && offset <= cut, "{offset} {st}");
    assert!(
        st["delta_failure"].is_null(),
        "a dropped connection is no delta failure: {st}"
    );

    d.w.proxy.with(|f| f.ranges.clear());
    let before = d.w.proxy.with(|f| f.download_bytes);
    d.once_expect(2);
    assert_eq!(d.last_delta_okay(), Some(true));
    assert_eq!(
        d.offered(),
        ["delta-1.0.0-2.0.0.payload", "delta-1.0.0-2.0.0.payload"]
    );
    assert_eq!(
        d.w.proxy.with(|f| f.ranges.clone()),
        [
            Some(format!("bytes=0-{}", prefix - 1)),
            Some(format!("bytes={offset}-"))
        ]
    );
    assert_eq!(
        d.w.proxy.with(|f| f.download_bytes) - before,
        prefix + (delta.len() as u64 - offset)
    );
    assert_eq!(d.w.read_part(2, IMAGE_LEN), img2);
    assert_eq!(d.w.read_part(1, 8 << 20), slot_a, "slot A untouched");
    assert_eq!(attrs(&d.w.img, 2), gptprio(2, 1, false));
    assert_verified(&d.w.img);
    let log = d.w.agent_log();
    let resumed = log
        .lines()
        .rfind(|l| l.contains("resuming download from checkpoint"))
        .unwrap_or_default();
    assert!(resumed.contains("delta=true"), "{log}");
}
