//! Progress bars (indicatif), for the host's own stages and for plugins through
//! [`HostServices`]. Hidden automatically when stderr is not a terminal.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use fusion_plugin_api::HostServices;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

fn multi() -> &'static MultiProgress {
    static MULTI: OnceLock<MultiProgress> = OnceLock::new();
    MULTI.get_or_init(MultiProgress::new)
}

/// Run `f` with the bars cleared, so a log line does not tear them.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    multi().suspend(f)
}

/// Print `text` to stderr above the bars. A failed write is ignored: stderr is where errors
/// would go, so there is nowhere to report it (and `eprint!` would panic).
pub fn eprint(text: &str) {
    use std::io::Write as _;
    suspend(|| {
        let _ = std::io::stderr().write_all(text.as_bytes());
    });
}

/// Start a bar (a spinner when `total` is 0).
pub fn bar(label: &str, total: u64) -> ProgressBar {
    let bar = if total > 0 {
        ProgressBar::new(total).with_style(
            ProgressStyle::with_template(
                "{msg:>24} [{bar:32}] {pos}/{len} ({per_sec}, {elapsed}, eta {eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        )
    } else {
        ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("valid template"),
        )
    };
    let bar = multi().add(bar);
    bar.set_message(label.to_string());
    bar
}

/// A download bar in bytes (the hub's [`fusion_hub::download_bar`]), drawn with the others.
pub fn bytes_bar(label: &str, total: u64) -> ProgressBar {
    multi().add(fusion_hub::download_bar(label, total))
}

/// Plugins' progress bars, by id.
#[derive(Default)]
pub struct Services {
    next: AtomicU64,
    bars: Mutex<HashMap<u64, ProgressBar>>,
}

impl HostServices for Services {
    fn progress_start(&self, label: &str, total: u64) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.bars
            .lock()
            .expect("progress lock")
            .insert(id, bar(label, total));
        id
    }
    fn progress_advance(&self, id: u64, delta: u64) {
        if let Some(b) = self.bars.lock().expect("progress lock").get(&id) {
            b.inc(delta);
        }
    }
    fn progress_finish(&self, id: u64) {
        if let Some(b) = self.bars.lock().expect("progress lock").remove(&id) {
            b.finish_and_clear();
        }
    }
}
