//! FleetLock request bodies as the server reads them from any host
//! (`update_server::fleetlock::protocol::parse_request`): never a panic, and what it accepts is
//! valid by the protocol's own rules and survives a JSON round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use update_server::fleetlock::protocol::{MAX_BODY, Request, parse_request, valid_group, valid_id};

fuzz_target!(|data: &[u8]| {
    let Ok(params) = parse_request(data) else {
        return;
    };
    assert!(data.len() <= MAX_BODY);
    assert!(
        valid_group(&params.group),
        "accepted group {:?}",
        params.group
    );
    assert!(valid_id(&params.id), "accepted id {:?}", params.id);
    let body = serde_json::to_vec(&Request {
        client_params: params.clone(),
    })
    .expect("serialise");
    if body.len() <= MAX_BODY {
        assert_eq!(parse_request(&body).expect("our own body parses"), params);
    }
});
