//! `fusion-host`: compose a FusionBench-style config, load the plugins its `_target_`s name, merge,
//! evaluate, report.

mod cli;
mod device;
mod error;
mod external;
mod hub;
mod logging;
mod multirun;
mod outputs;
mod paths;
mod plugins;
mod profile;
mod program;
mod progress;
mod report;
mod slurm;
mod summary;
mod targets;

use std::io::Write as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    quiet_mesa();
    match cli::run() {
        Ok(code) => code,
        Err(err) => {
            let code = error::exit_code(&err);
            // The whole chain, once, on one paragraph: `{:#}` joins causes with ": ".
            let message = format!("{err:#}");
            logging::record_fatal(&message);
            // Ignoring a failed write: there is nowhere left to report it.
            let _ = writeln!(std::io::stderr(), "error: {message}");
            code
        }
    }
}

/// Mesa's Vulkan drivers print "error: XDG_RUNTIME_DIR is invalid or not set" when the variable is
/// missing (as in CI and containers), though compute needs no display. Point it at a private
/// folder first, so stderr only carries fusion-host's own messages. Runs before any thread
/// starts, so setting the environment is sound.
#[cfg(unix)]
fn quiet_mesa() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return;
    }
    let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
    let dir = std::env::temp_dir().join(format!("fusion-host-runtime-{user}"));
    let made = std::fs::create_dir_all(&dir).is_ok() && {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).is_ok()
    };
    if made {
        std::env::set_var("XDG_RUNTIME_DIR", &dir);
    }
}

#[cfg(not(unix))]
fn quiet_mesa() {}
