//! `updatectl`: control the Platte update agent over D-Bus (see `update_agent::updatectl`).
//!
//! Exit status: 0 success (for `check` and `update --wait`: up to date), 2 an update is staged,
//! 3 the offered update was refused by policy, 1 any error. A reader that closes standard output
//! early changes nothing: the rest of the output is discarded (`update_agent::output`).

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use update_agent::updatectl::{self, Cli, exit};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "updatectl: cannot start the async runtime: {e}"
            );
            return ExitCode::from(exit::ERROR);
        }
    };
    match rt.block_on(updatectl::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "updatectl: {e}");
            ExitCode::from(exit::ERROR)
        }
    }
}
