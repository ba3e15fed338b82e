//! Plugin-side plumbing for logs and panics.
//!
//! A cdylib links its own copy of `tracing` (with its own global dispatcher) and of `std` (with its
//! own panic hook). So at load time the host hands each plugin a [`HostLink`]; the plugin installs
//! a subscriber that forwards every event to the host's log function, tagged with the plugin's
//! name, and a panic hook that records where a panic happened (for the error message) instead of
//! printing a trace to stderr.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use abi_stable::std_types::RStr;
use tracing_core::field::{Field, Visit};
use tracing_core::span::{Attributes, Id, Record};
use tracing_core::{Event, Level, LevelFilter, Metadata, Subscriber};

use crate::abi::HostLink;

static PLUGIN_NAME: OnceLock<&'static str> = OnceLock::new();

thread_local! {
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The name of the plugin this copy of plugin-api is linked into (`"host"` outside a plugin).
pub(crate) fn plugin_name() -> &'static str {
    PLUGIN_NAME.get().copied().unwrap_or("host")
}

/// A label for errors raised by objects this library creates.
pub(crate) fn origin() -> Arc<str> {
    format!("plugin `{}`", plugin_name()).into()
}

/// Take the location recorded by the panic hook for the current thread's latest panic.
pub(crate) fn take_panic_location() -> Option<String> {
    PANIC_LOCATION.with(|l| l.borrow_mut().take())
}

pub(crate) fn level_to_u8(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

pub(crate) fn install(plugin: &'static str, link: HostLink) {
    let _ = PLUGIN_NAME.set(plugin);
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()));
        PANIC_LOCATION.with(|l| *l.borrow_mut() = location);
    }));
    let max = match link.max_level {
        0 => LevelFilter::OFF,
        1 => LevelFilter::ERROR,
        2 => LevelFilter::WARN,
        3 => LevelFilter::INFO,
        4 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    let subscriber = Bridge {
        link,
        plugin,
        max,
        next_span: AtomicU64::new(1),
    };
    // Fails only if this plugin already installed one (init called twice): keep the first.
    let _ = tracing::dispatcher::set_global_default(tracing::Dispatch::new(subscriber));
}

/// Forwards events to the host.
struct Bridge {
    link: HostLink,
    plugin: &'static str,
    max: LevelFilter,
    next_span: AtomicU64,
}

impl Subscriber for Bridge {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.max
    }
    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.max)
    }
    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed))
    }
    fn record(&self, _span: &Id, _values: &Record<'_>) {}
    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut visitor = MessageVisitor::default();
        event.record(&mut visitor);
        let meta = event.metadata();
        (self.link.log)(
            level_to_u8(meta.level()),
            RStr::from_str(self.plugin),
            RStr::from_str(meta.target()),
            RStr::from_str(&visitor.finish()),
        );
    }
    fn enter(&self, _span: &Id) {}
    fn exit(&self, _span: &Id) {}
}

/// Renders an event as `message key=value ...`.
#[derive(Default)]
struct MessageVisitor {
    message: String,
    fields: String,
}

impl MessageVisitor {
    fn finish(self) -> String {
        if self.fields.is_empty() {
            self.message
        } else if self.message.is_empty() {
            self.fields.trim_start().to_string()
        } else {
            format!("{}{}", self.message, self.fields)
        }
    }
}

impl Visit for MessageVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={}", field.name(), value);
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={:?}", field.name(), value);
        }
    }
}
