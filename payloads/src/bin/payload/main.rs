//! `payload`: generate keys, build, sign, verify, inspect and apply Platte payloads.
//!
//! Exit codes: 0 success; 1 I/O or other local error (files, keys, trust store, target too
//! small); 2 usage error; 3 invalid payload (malformed, corrupted, truncated, expired, hash
//! mismatch); 4 untrusted payload (no signature, no signature by a trusted key, bad signature);
//! 5 a delta payload whose source does not match (wrong version or image, modified source): use
//! the full payload.
//! A reader that closes standard output early changes neither: the rest of the output is
//! discarded (`output.rs`).

mod cli;
mod commands;
mod exit;
mod output;

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Like stdout, a closed stderr is no reason to panic.
            let _ = writeln!(std::io::stderr(), "payload: error: {err:#}");
            ExitCode::from(exit::code(&err))
        }
    }
}
