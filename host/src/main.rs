//! `fusion-host`: compose a FusionBench-style config, load the plugins its `_target_`s name, merge,
//! evaluate, report.

mod cli;
mod device;
mod error;
mod logging;
mod paths;
mod plugins;
mod profile;
mod program;
mod progress;
mod save;
mod targets;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run() {
        Ok(code) => code,
        Err(err) => {
            let code = error::exit_code(&err);
            // The whole chain, once, on one paragraph: `{:#}` joins causes with ": ".
            eprintln!("error: {err:#}");
            code
        }
    }
}
