//! The error type of every plugin-facing call.

use abi_stable::{std_types::RString, StableAbi};

/// What kind of failure an [`Error`] is. The host picks its message and exit code from it.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, StableAbi)]
pub enum ErrorKind {
    /// The component's configuration is invalid (a missing or ill-typed parameter).
    Config,
    /// Reading or writing a file failed.
    Io,
    /// A checkpoint or tensor is malformed, missing, or has the wrong shape or dtype.
    Model,
    /// The GPU or its runtime failed.
    Compute,
    /// The operation is not supported by this component.
    Unsupported,
    /// The plugin panicked; the message says where.
    Panic,
    /// Anything else.
    Other,
}

/// An error raised by a plugin or by the host on a plugin's behalf.
///
/// It is ABI-stable (a kind plus a message), so it crosses the library boundary unchanged; the
/// host turns it into its own error type.
#[repr(C)]
#[derive(Clone, Debug, PartialEq, Eq, StableAbi)]
pub struct Error {
    /// The kind of failure.
    pub kind: ErrorKind,
    /// A complete, human-readable message naming the culprit (a file, a tensor, a parameter).
    pub message: RString,
}

impl Error {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl std::fmt::Display) -> Self {
        Self {
            kind,
            message: RString::from(message.to_string()),
        }
    }
    /// A configuration error.
    pub fn config(message: impl std::fmt::Display) -> Self {
        Self::new(ErrorKind::Config, message)
    }
    /// A file error.
    pub fn io(message: impl std::fmt::Display) -> Self {
        Self::new(ErrorKind::Io, message)
    }
    /// A checkpoint or tensor error.
    pub fn model(message: impl std::fmt::Display) -> Self {
        Self::new(ErrorKind::Model, message)
    }
    /// A GPU error.
    pub fn compute(message: impl std::fmt::Display) -> Self {
        Self::new(ErrorKind::Compute, message)
    }
    /// An unsupported operation.
    pub fn unsupported(message: impl std::fmt::Display) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }
    /// Any other failure.
    pub fn other(message: impl std::fmt::Display) -> Self {
        Self::new(ErrorKind::Other, message)
    }
    /// The message.
    pub fn message(&self) -> &str {
        self.message.as_str()
    }
    /// Prefix the message with context, keeping the kind: `"{context}: {message}"`.
    pub fn context(self, context: impl std::fmt::Display) -> Self {
        Self {
            kind: self.kind,
            message: RString::from(format!("{context}: {}", self.message)),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::io(e)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::config(e)
    }
}

/// `Result` with the plugin [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
