//! Omaha responses as the agent reads them from a server: `omaha::parse_response` never panics,
//! and whatever it accepts re-serialises to XML that parses back to the same response.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// Limits for re-parsing our own output: escaping may lengthen a value past the input limits,
/// which says nothing about the encoder's correctness.
const ROUND_TRIP: omaha::Limits = omaha::Limits {
    max_body: 16 * 1024 * 1024,
    max_attribute_len: 64 * 1024,
    ..omaha::Limits::RESPONSE
};

fuzz_target!(|data: &[u8]| {
    if let Ok(resp) = omaha::parse_response(data) {
        let xml = resp.to_xml();
        let back = omaha::parse_response_with_limits(xml.as_bytes(), &ROUND_TRIP)
            .unwrap_or_else(|e| panic!("re-parsing our own response failed: {e}\n{xml}"));
        assert_eq!(back, resp, "response changed in a round trip:\n{xml}");
    }
});
