//! Exit codes: 2 for what the user must fix in the command line or config (ripgrep's and Hydra's
//! convention for usage errors), 1 for a run that failed. The host and every external command
//! map their errors here, so that `fusion-host NAME` exits as the host itself would.

use std::process::ExitCode;

/// Marks an error as a usage/config error (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Build a usage error.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

/// The process exit code for `err`: 2 when an error of its chain is a [`UsageError`], a
/// plugin-api `Config` error, or one that `also_usage` picks (the host's config errors), else 1.
pub fn exit_code(
    err: &anyhow::Error,
    also_usage: impl Fn(&(dyn std::error::Error + 'static)) -> bool,
) -> ExitCode {
    let usage = err.chain().any(|e| {
        e.is::<UsageError>()
            || e.downcast_ref::<fusion_plugin_api::Error>()
                .is_some_and(|e| e.kind == fusion_plugin_api::ErrorKind::Config)
            || also_usage(e)
    });
    if usage {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fusion_plugin_api::{Error, ErrorKind};

    fn code(err: &anyhow::Error, also: bool) -> ExitCode {
        exit_code(err, |e| also && e.to_string() == "picked")
    }

    #[test]
    fn usage_and_config_errors_exit_2_anywhere_in_the_chain() {
        let err = usage("--device \"x\": unknown").context("starting");
        assert_eq!(code(&err, false), ExitCode::from(2));
        let err = anyhow::Error::new(Error::new(ErrorKind::Config, "`k` is missing"))
            .context("algorithm");
        assert_eq!(code(&err, false), ExitCode::from(2));
        let err = anyhow::anyhow!("picked").context("loading");
        assert_eq!(code(&err, true), ExitCode::from(2));
    }

    #[test]
    fn other_errors_exit_1() {
        let err = anyhow::Error::new(Error::new(ErrorKind::Model, "bad tensor")).context("run");
        assert_eq!(code(&err, false), ExitCode::from(1));
        let err = anyhow::anyhow!("picked").context("loading");
        assert_eq!(code(&err, false), ExitCode::from(1));
    }
}
