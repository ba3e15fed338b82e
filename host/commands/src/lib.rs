//! What fusion-host's external commands (`fusion-host-embed`, `fusion-host-bench`,
//! `fusion-host-mergekit`) share: their
//! `main`, logging, usage errors and the compute device. Each command is an executable of its
//! own that `fusion-host NAME` runs (see the host's `external` module); the host's `--device`,
//! `-v`/`-q` arrive as `FUSION_DEVICE` and `FUSION_LOG`.

use std::io::Write as _;
use std::process::ExitCode;

use fusion_gpu::{DeviceChoice, Runtime, RuntimeOptions};

/// Errors the user must fix on the command line (exit code 2, as the host's).
pub use fusion_log::{usage, UsageError};

/// Run a command's body: the error chain on one `error:` paragraph, exit 2 for usage errors
/// (and plugin-api `Config` errors) and 1 for a failed run, as the host does
/// ([`fusion_log::exit_code`]).
pub fn main(body: impl FnOnce() -> anyhow::Result<()>) -> ExitCode {
    match body() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "error: {err:#}");
            fusion_log::exit_code(&err, |_| false)
        }
    }
}

/// Logs to stderr through `tracing`: `FUSION_LOG` (or `RUST_LOG`) is the filter, else `info`
/// raised by `verbosity` (`-v` debug, `-vv` trace) or lowered to `warn` by `quiet`.
pub fn init_logging(verbosity: u8, quiet: bool) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(fusion_log::filter(verbosity, quiet))
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .try_init();
}

/// The logging options of every command, as the host's: `-v`/`-vv` and `-q`.
#[derive(clap::Args, Debug, Clone)]
pub struct LogArgs {
    /// More logging (-v debug, -vv trace). FUSION_LOG=... sets a filter.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long)]
    pub quiet: bool,
}

impl LogArgs {
    /// Start logging at the level these options ask for ([`init_logging`]).
    pub fn init(&self) {
        init_logging(self.verbose, self.quiet);
    }
}

/// The `--device` option of every command (`FUSION_DEVICE` when not given).
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArg {
    /// The compute device: `auto` (a hardware GPU if there is one, else software), `gpu`,
    /// `cpu` (the software adapter, e.g. lavapipe), or a substring of an adapter name
    /// (see `fusion-host devices`).
    #[arg(
        long,
        value_name = "DEVICE",
        env = "FUSION_DEVICE",
        default_value = "auto"
    )]
    pub device: String,
}

impl DeviceArg {
    /// The parsed choice; a malformed one is a usage error naming it.
    pub fn choice(&self) -> anyhow::Result<DeviceChoice> {
        self.device
            .parse::<DeviceChoice>()
            .map_err(|e| usage(format!("--device {:?}: {e}", self.device)))
    }

    /// Start the device.
    pub fn start(&self) -> anyhow::Result<Runtime> {
        let choice = self.choice()?;
        let rt = Runtime::new(&choice, RuntimeOptions::default()).map_err(|e| {
            anyhow::anyhow!("could not create the compute device (--device {choice}): {e}")
        })?;
        tracing::info!(
            device = %rt.adapter().name,
            backend = %rt.adapter().backend,
            "compute device ready"
        );
        Ok(rt)
    }
}

/// Write `text` to standard output, a failed write (a closed pipe, a full disk) as an error.
pub fn stdout(text: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing to standard output")
}
