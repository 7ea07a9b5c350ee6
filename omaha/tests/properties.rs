//! Property tests: parse(serialise(m)) == m for generated messages, serialisation is stable, and
//! neither arbitrary nor mutated real input panics the parsers.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use omaha::{
    Ack, Action, ActionEvent, AppRequest, AppResponse, AppStatus, DayStart, DecodedErrorCode,
    EventRequest, EventResult, EventType, Manifest, Os, Package, PingRequest, Request, Response,
    UpdateCheckRequest, UpdateCheckResponse, UpdateCheckStatus, parse_request, parse_response,
};

/// Any XML-legal text, including markup characters and tab/CR/LF.
fn text() -> impl Strategy<Value = String> {
    "[\\PC\t\n\r]{0,12}"
}

fn opt_text() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(text())
}

fn opt_i64() -> impl Strategy<Value = Option<i64>> {
    proptest::option::of(any::<i64>())
}

fn opt_bool() -> impl Strategy<Value = Option<bool>> {
    proptest::option::of(any::<bool>())
}

fn event() -> impl Strategy<Value = EventRequest> {
    (
        any::<u32>(),
        any::<u32>(),
        proptest::option::of(any::<u32>()),
        opt_i64(),
        opt_text(),
        opt_text(),
    )
        .prop_map(|(t, r, code, extra, prev, next)| EventRequest {
            event_type: EventType::from_u32(t),
            result: EventResult::from_u32(r),
            errorcode: code.map(DecodedErrorCode::from_raw),
            extracode1: extra,
            previousversion: prev,
            nextversion: next,
        })
}

fn app_request() -> impl Strategy<Value = AppRequest> {
    let ids = (
        text(),
        opt_text(),
        opt_text(),
        opt_text(),
        opt_text(),
        opt_text(),
        opt_text(),
        opt_text(),
    );
    let google = (opt_text(), opt_text(), opt_text(), opt_i64());
    let coreos = (
        opt_text(),
        opt_text(),
        opt_text(),
        opt_text(),
        opt_text(),
        opt_text(),
        opt_text(),
        opt_text(),
    );
    let more = (opt_text(), opt_text(), opt_bool(), opt_bool());
    let ping = proptest::option::of(
        (
            opt_bool(),
            opt_i64(),
            opt_i64(),
            opt_i64(),
            opt_i64(),
            opt_text(),
        )
            .prop_map(|(active, a, r, ad, rd, ping_freshness)| PingRequest {
                active,
                a,
                r,
                ad,
                rd,
                ping_freshness,
            }),
    );
    let check = proptest::option::of((opt_text(), opt_bool(), opt_bool()).prop_map(|(t, r, u)| {
        UpdateCheckRequest {
            targetversionprefix: t,
            rollback_allowed: r,
            updatedisabled: u,
        }
    }));
    let body = (ping, check, proptest::collection::vec(event(), 0..4));
    (ids, google, coreos, more, body).prop_map(
        |(
            (appid, version, nextversion, lang, brand, client, ap, cohort),
            (cohorthint, cohortname, track, installage),
            (from_track, bootid, machineid, machinealias, oem, oemversion, alephversion, board),
            (hardware_class, _unused, delta_okay, multi_manifest_ok),
            (ping, updatecheck, events),
        )| AppRequest {
            appid,
            version,
            nextversion,
            lang,
            brand,
            client,
            ap,
            cohort,
            cohorthint,
            cohortname,
            installage,
            track,
            from_track,
            bootid,
            machineid,
            machinealias,
            oem,
            oemversion,
            alephversion,
            board,
            hardware_class,
            delta_okay,
            multi_manifest_ok,
            ping,
            updatecheck,
            events,
        },
    )
}

fn request() -> impl Strategy<Value = Request> {
    let head = (
        opt_text(),
        opt_text(),
        opt_text(),
        opt_text(),
        opt_bool(),
        opt_text(),
        opt_text(),
        opt_text(),
        opt_text(),
    );
    let os = proptest::option::of((opt_text(), opt_text(), opt_text(), opt_text()).prop_map(
        |(platform, version, sp, arch)| Os {
            platform,
            version,
            sp,
            arch,
        },
    ));
    (head, os, proptest::collection::vec(app_request(), 0..3)).prop_map(
        |(
            (
                version,
                updater,
                updaterversion,
                installsource,
                ismachine,
                sessionid,
                requestid,
                userid,
                testsource,
            ),
            os,
            apps,
        )| {
            Request {
                version,
                updater,
                updaterversion,
                installsource,
                ismachine,
                sessionid,
                requestid,
                userid,
                testsource,
                os,
                apps,
            }
        },
    )
}

fn package() -> impl Strategy<Value = Package> {
    (text(), any::<u64>(), opt_text(), opt_text(), any::<bool>()).prop_map(
        |(name, size, hash, hash_sha256, required)| Package {
            name,
            size,
            hash,
            hash_sha256,
            required,
        },
    )
}

fn action() -> impl Strategy<Value = Action> {
    let common = (
        text(),
        opt_text(),
        opt_text(),
        opt_text(),
        any::<bool>(),
        proptest::option::of(any::<u32>()),
        any::<bool>(),
    );
    let update_engine = (
        opt_text(),
        proptest::option::of(any::<u64>()),
        opt_text(),
        proptest::option::of(any::<bool>()),
        opt_text(),
    );
    (common, update_engine).prop_map(
        |(
            (
                event,
                run,
                arguments,
                sha256,
                disable_payload_backoff,
                max_failure_count_per_url,
                is_delta_payload,
            ),
            (chromeos_version, metadata_size, metadata_signature_rsa, needs_admin, deadline),
        )| Action {
            event: ActionEvent::from_wire(&event),
            run,
            arguments,
            sha256,
            disable_payload_backoff,
            max_failure_count_per_url,
            is_delta_payload,
            chromeos_version,
            metadata_size,
            metadata_signature_rsa,
            needs_admin,
            deadline,
        },
    )
}

fn manifest() -> impl Strategy<Value = Manifest> {
    (
        text(),
        any::<bool>(),
        opt_text(),
        any::<bool>(),
        proptest::collection::vec(package(), 0..3),
        proptest::collection::vec(action(), 0..3),
    )
        .prop_map(
            |(version, is_floor, floor_reason, is_target, packages, actions)| Manifest {
                version,
                is_floor,
                floor_reason,
                is_target,
                packages,
                actions,
            },
        )
}

fn updatecheck() -> impl Strategy<Value = UpdateCheckResponse> {
    (
        prop_oneof![Just("ok".to_owned()), Just("noupdate".to_owned()), text()],
        proptest::option::of(any::<u32>()),
        any::<bool>(),
        proptest::collection::vec(text(), 0..3),
        proptest::collection::vec(manifest(), 0..3),
    )
        .prop_map(
            |(status, poll_interval, rollback, urls, manifests)| UpdateCheckResponse {
                status: UpdateCheckStatus::from_wire(&status),
                poll_interval,
                rollback,
                urls,
                manifests,
            },
        )
}

fn ack() -> impl Strategy<Value = Ack> {
    text().prop_map(|status| Ack { status })
}

fn response() -> impl Strategy<Value = Response> {
    let app = (
        text(),
        prop_oneof![
            Just("ok".to_owned()),
            Just("error-unknownApplication".to_owned()),
            text()
        ],
        proptest::option::of(ack()),
        proptest::option::of(updatecheck()),
        proptest::collection::vec(ack(), 0..3),
    )
        .prop_map(|(appid, status, ping, updatecheck, events)| AppResponse {
            appid,
            status: AppStatus::from_wire(&status),
            ping,
            updatecheck,
            events,
        });
    let daystart = proptest::option::of((any::<i64>(), opt_i64()).prop_map(
        |(elapsed_seconds, elapsed_days)| DayStart {
            elapsed_seconds,
            elapsed_days,
        },
    ));
    (opt_text(), daystart, proptest::collection::vec(app, 0..3)).prop_map(
        |(server, daystart, apps)| Response {
            server,
            daystart,
            apps,
        },
    )
}

fn corpus() -> Vec<Vec<u8>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/testdata/omaha");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn request_round_trips(m in request()) {
        let xml = m.to_xml();
        let back = parse_request(xml.as_bytes()).unwrap();
        prop_assert_eq!(&back, &m);
        prop_assert_eq!(back.to_xml(), xml);
    }

    #[test]
    fn response_round_trips(m in response()) {
        let xml = m.to_xml();
        let back = parse_response(xml.as_bytes()).unwrap();
        prop_assert_eq!(&back, &m);
        prop_assert_eq!(back.to_xml(), xml);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_request(&bytes);
        let _ = parse_response(&bytes);
    }

    #[test]
    fn arbitrary_text_never_panics(s in "[<>/=\"'&;!?a-z# \\[\\]-]{0,256}") {
        let _ = parse_request(s.as_bytes());
        let _ = parse_response(s.as_bytes());
    }

    /// Real samples with random byte edits and truncation: never a panic, and whatever still
    /// parses re-serialises stably.
    #[test]
    fn mutated_samples_never_panic(
        pick in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let samples = corpus();
        let mut bytes = samples[pick.index(samples.len())].clone();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        if let Ok(r) = parse_request(&bytes) {
            let xml = r.to_xml();
            prop_assert_eq!(parse_request(xml.as_bytes()).unwrap(), r);
        }
        if let Ok(r) = parse_response(&bytes) {
            let xml = r.to_xml();
            prop_assert_eq!(parse_response(xml.as_bytes()).unwrap(), r);
        }
    }
}
