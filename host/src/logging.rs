//! Logs go through `tracing`: to stderr (above the progress bars) and, once the run's output
//! folder is known, to a log file there as well (lines logged earlier are buffered and written
//! first).

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::{FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::progress;

enum FileState {
    Buffering(Vec<u8>),
    Open(std::fs::File),
    Off,
}

static FILE: OnceLock<Arc<Mutex<FileState>>> = OnceLock::new();

fn file_state() -> &'static Arc<Mutex<FileState>> {
    FILE.get_or_init(|| Arc::new(Mutex::new(FileState::Buffering(Vec::new()))))
}

/// Start logging. `FUSION_LOG` (or `RUST_LOG`) sets the filter, e.g. `debug` or
/// `fusion_host=debug,plugin=trace`; `verbosity` raises the default level (`-v`, `-vv`).
pub fn init(verbosity: u8, quiet: bool) {
    let filter = fusion_log::filter(verbosity, quiet);
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(StderrWriter)
        .with_target(false)
        .without_time();
    let file = tracing_subscriber::fmt::layer()
        .with_writer(FileWriter)
        .fmt_fields(FileFields::default())
        .with_ansi(false);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(file)
        .try_init();
}

/// Write the log to `file` from now on, preceded by everything logged so far.
pub fn open_file(mut file: std::fs::File) -> std::io::Result<()> {
    let mut state = file_state().lock().expect("log file lock");
    if let FileState::Buffering(buf) = &*state {
        file.write_all(buf)?;
    }
    *state = FileState::Open(file);
    Ok(())
}

/// Record the error that ends the run in the log file, if one is open (stderr gets it from
/// `main`).
pub fn record_fatal(message: &str) {
    if let FileState::Open(f) = &mut *file_state().lock().unwrap_or_else(|e| e.into_inner()) {
        let _ = writeln!(
            f,
            "{} ERROR fusion_host: {message}",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ")
        );
        let _ = f.flush();
    }
}

/// Stop buffering for a log file (commands that write none).
pub fn no_file() {
    *file_state().lock().expect("log file lock") = FileState::Off;
}

/// The file layer's field formatter. A span's fields are formatted once per formatter *type* and
/// cached in the span: with the stderr layer's `DefaultFields`, the file got the stderr's
/// colour codes (`stage{\x1b[3mname\x1b[0m=...}`). A type of its own keeps the file plain.
#[derive(Default)]
struct FileFields(DefaultFields);

impl<'w> FormatFields<'w> for FileFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> std::fmt::Result {
        self.0.format_fields(writer, fields)
    }
}

#[derive(Clone, Copy)]
struct StderrWriter;

impl Write for StderrWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Draw the line above any progress bars instead of through them.
        progress::suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for StderrWriter {
    type Writer = StderrWriter;
    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}

#[derive(Clone, Copy)]
struct FileWriter;

impl Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut *file_state().lock().expect("log file lock") {
            FileState::Buffering(b) => b.extend_from_slice(buf),
            FileState::Open(f) => f.write_all(buf)?,
            FileState::Off => {}
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if let FileState::Open(f) = &mut *file_state().lock().expect("log file lock") {
            f.flush()?;
        }
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for FileWriter {
    type Writer = FileWriter;
    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}
