//! Exit codes: 2 for what the user must fix in the command line or config (ripgrep's and Hydra's
//! convention for usage errors), 1 for a run that failed.

use std::process::ExitCode;

/// Marks an error as a usage/config error (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Build a usage error.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

/// The process exit code for an error.
pub fn exit_code(err: &anyhow::Error) -> ExitCode {
    let usage = err.chain().any(|e| {
        e.is::<UsageError>()
            || e.is::<fusion_config::ConfigError>()
            || e.downcast_ref::<fusion_plugin_api::Error>()
                .is_some_and(|e| e.kind == fusion_plugin_api::ErrorKind::Config)
    });
    if usage {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}

/// Turn a plugin-api error into an anyhow error, keeping it downcastable.
pub fn plugin(err: fusion_plugin_api::Error) -> anyhow::Error {
    anyhow::Error::new(err)
}
