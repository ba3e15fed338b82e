//! The error type of the GPU runtime.

use fusion_plugin_api::Error as PluginError;

/// What went wrong in the GPU runtime. Every variant names the culprit (adapter, kernel, tensor)
/// and the values involved, so the message alone is enough to act on.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No adapter matched the requested [`crate::DeviceChoice`].
    #[error("no {wanted} adapter found; adapters available: {available}")]
    NoAdapter {
        /// What was asked for (`"hardware GPU"`, `"software (CPU)"`, `"name matching \"x\""`).
        wanted: String,
        /// The adapters that were found, or `"none"`.
        available: String,
    },
    /// A `--device` value could not be parsed.
    #[error("invalid device choice {0:?}: expected auto, gpu, cpu or part of an adapter name")]
    BadChoice(String),
    /// The adapter refused to create a device.
    #[error("could not open a device on adapter `{adapter}`: {message}")]
    RequestDevice {
        /// The adapter name.
        adapter: String,
        /// wgpu's reason.
        message: String,
    },
    /// The device was lost (driver reset, out of memory, ...); the runtime cannot be used any more.
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),
    /// A kernel failed to compile or to launch.
    #[error("kernel `{label}` (entry point `{entry_point}`): {message}")]
    Kernel {
        /// The kernel's label.
        label: String,
        /// The entry point.
        entry_point: String,
        /// What failed.
        message: String,
    },
    /// A tensor id is not (or no longer) known to this runtime.
    #[error("unknown GPU tensor id {0} (released, or created by another runtime)")]
    UnknownTensor(u64),
    /// A tensor does not fit in one device buffer.
    #[error("tensor of {requested} bytes exceeds the device's max buffer size of {maximum} bytes")]
    TooLarge {
        /// Bytes requested.
        requested: u64,
        /// The device limit.
        maximum: u64,
    },
    /// Data of the wrong size was given to create or write a tensor.
    #[error("{op}: expected {expected} bytes, got {got}")]
    DataSize {
        /// The operation (`"create"`, `"write"`).
        op: &'static str,
        /// Bytes expected.
        expected: u64,
        /// Bytes given.
        got: u64,
    },
    /// Reading a tensor back failed.
    #[error("reading tensor {id} back failed: {message}")]
    Read {
        /// The tensor id.
        id: u64,
        /// What failed.
        message: String,
    },
    /// Any other wgpu validation or out-of-memory error, with the operation that raised it.
    #[error("{op}: {message}")]
    Wgpu {
        /// The operation that raised it.
        op: String,
        /// wgpu's message.
        message: String,
    },
}

impl From<GpuError> for PluginError {
    fn from(e: GpuError) -> Self {
        PluginError::compute(e)
    }
}
