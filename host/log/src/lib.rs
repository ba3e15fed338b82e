//! What fusion-host and its external commands (`fusion-host NAME`) share: the log filter, so
//! that `-v`, `-q` and `FUSION_LOG` mean the same in every executable, and the exit codes
//! ([`exit_code`]). A crate of its own: the host must not link the commands crate (it holds the
//! model code), and neither the plugin API nor the hub client should carry the logging stack.

mod exit;

pub use exit::{exit_code, usage, UsageError};

use tracing_subscriber::EnvFilter;

/// The level `-v`/`-q` ask for: `warn` when `quiet`, else `info`, `debug` (`-v`) or `trace`
/// (`-vv` and more).
pub fn level(verbosity: u8, quiet: bool) -> &'static str {
    match (quiet, verbosity) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    }
}

/// The filter of a run: `FUSION_LOG` (or `RUST_LOG`) when set and valid, e.g. `debug` or
/// `fusion_host=debug,plugin=trace`, else [`level`].
pub fn filter(verbosity: u8, quiet: bool) -> EnvFilter {
    std::env::var("FUSION_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(level(verbosity, quiet)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_wins_and_each_v_raises_the_level() {
        assert_eq!(level(0, false), "info");
        assert_eq!(level(1, false), "debug");
        assert_eq!(level(2, false), "trace");
        assert_eq!(level(5, false), "trace");
        assert_eq!(level(0, true), "warn");
        assert_eq!(level(2, true), "warn");
    }
}
