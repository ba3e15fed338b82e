//! Exit codes (2 for usage and config errors, 1 for a failed run), as [`fusion_log`] maps them
//! for the host and its external commands; the host adds its config composer's errors.

use std::process::ExitCode;

pub use fusion_log::usage;

/// The process exit code for an error: 2 also for a [`fusion_config::ConfigError`].
pub fn exit_code(err: &anyhow::Error) -> ExitCode {
    fusion_log::exit_code(err, |e| e.is::<fusion_config::ConfigError>())
}

/// Turn a plugin-api error into an anyhow error, keeping it downcastable.
pub fn plugin(err: fusion_plugin_api::Error) -> anyhow::Error {
    anyhow::Error::new(err)
}
