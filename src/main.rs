//! The `spindle` command: parse the command line, run, and turn any setup error into one
//! readable line (its whole cause chain) and a non-zero exit.

use std::process::ExitCode;

fn main() -> ExitCode {
    let config = match spindle::config::Config::from_args() {
        Ok(config) => config,
        Err(code) => return code,
    };
    match spindle::server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
