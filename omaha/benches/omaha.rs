//! Throughput of the Omaha codec in messages per second: parsing a typical update_engine request
//! (what the server does per check-in) and serialising a typical update response (its answer),
//! plus the agent's reverse directions.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use omaha::{parse_request, parse_response};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/testdata/omaha/");

fn sample(name: &str) -> Vec<u8> {
    std::fs::read(format!("{DIR}{name}")).unwrap()
}

fn bench(c: &mut Criterion) {
    let request = sample("update_engine-request-updatecheck.xml");
    let response_bytes = sample("nebraska-response-ok-multipackage.xml");
    let response = parse_response(&response_bytes).unwrap();
    let parsed_request = parse_request(&request).unwrap();

    let mut group = c.benchmark_group("omaha");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_request/update_engine_updatecheck", |b| {
        b.iter(|| parse_request(black_box(&request)).unwrap())
    });
    group.bench_function("serialise_response/nebraska_ok_multipackage", |b| {
        b.iter(|| black_box(&response).to_xml())
    });
    group.bench_function("parse_response/nebraska_ok_multipackage", |b| {
        b.iter(|| parse_response(black_box(&response_bytes)).unwrap())
    });
    group.bench_function("serialise_request/update_engine_updatecheck", |b| {
        b.iter(|| black_box(&parsed_request).to_xml())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
