//! The crate's error type: every variant carries the context a user needs to fix the input
//! (the file, the tensor name, the expected and actual shapes).

use std::path::PathBuf;

/// Shorthand for results in this crate.
pub type Result<T, E = ClipError> = std::result::Result<T, E>;

/// Everything that can go wrong while loading or running CLIP.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    /// A file could not be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A JSON file (config, tokenizer, index) is not valid JSON or does not have the expected
    /// fields.
    #[error("cannot parse {}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },

    /// A config file parsed but describes something this crate cannot run.
    #[error("invalid config {}: {message}", path.display())]
    Config {
        /// The file (or a description of the in-memory source).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// A `.safetensors` file is malformed.
    #[error("{} is not a valid safetensors file: {source}", file.display())]
    Safetensors {
        /// The file.
        file: PathBuf,
        /// The underlying error.
        #[source]
        source: safetensors::SafeTensorError,
    },

    /// A weight the model needs is not in the checkpoint.
    #[error("missing tensor `{name}` (expected shape {expected:?}) in checkpoint {}", checkpoint.display())]
    MissingTensor {
        /// The full tensor name, e.g. `vision_model.encoder.layers.0.mlp.fc1.weight`.
        name: String,
        /// The shape the model expects.
        expected: Vec<usize>,
        /// The checkpoint (directory or file) that was searched.
        checkpoint: PathBuf,
    },

    /// A weight is present but has the wrong shape for the config.
    #[error("tensor `{name}` in {} has shape {actual:?}, expected {expected:?}", file.display())]
    ShapeMismatch {
        /// The full tensor name.
        name: String,
        /// The shape the model expects (from `config.json`).
        expected: Vec<usize>,
        /// The shape stored in the file.
        actual: Vec<usize>,
        /// The file holding the tensor.
        file: PathBuf,
    },

    /// The checkpoint holds tensors the model does not use, within the part being loaded. This
    /// usually means the config and the weights disagree (e.g. more layers than
    /// `num_hidden_layers`), so it is an error rather than a warning.
    #[error(
        "unexpected tensors in checkpoint {} (not used by the model): {}",
        checkpoint.display(),
        format_named_shapes(tensors)
    )]
    UnexpectedTensors {
        /// The checkpoint.
        checkpoint: PathBuf,
        /// Each unused tensor with its shape.
        tensors: Vec<(String, Vec<usize>)>,
    },

    /// A weight is stored in a dtype other than f32, f16 or bf16.
    #[error("tensor `{name}` in {} has dtype {dtype}, expected F32, F16 or BF16", file.display())]
    UnsupportedDtype {
        /// The full tensor name.
        name: String,
        /// The stored dtype.
        dtype: String,
        /// The file holding the tensor.
        file: PathBuf,
    },

    /// Two shards of one checkpoint hold a tensor of the same name.
    #[error("tensor `{name}` is stored twice: in {} and in {}", first.display(), second.display())]
    DuplicateTensor {
        /// The tensor name.
        name: String,
        /// The first file.
        first: PathBuf,
        /// The second file.
        second: PathBuf,
    },

    /// An input to a forward pass or a tensor constructor has the wrong shape or values.
    #[error("{op}: {message}")]
    Input {
        /// The operation that rejected its input.
        op: &'static str,
        /// What is wrong, with the shapes involved.
        message: String,
    },

    /// The tokenizer files are inconsistent or describe an unsupported tokenizer.
    #[error("tokenizer {}: {message}", path.display())]
    Tokenizer {
        /// The tokenizer file or directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// Image bytes could not be decoded.
    #[error("cannot decode image ({format}): {message}")]
    ImageDecode {
        /// The detected container format (`png`, `jpeg` or `unknown`).
        format: &'static str,
        /// What the decoder said.
        message: String,
    },
    /// A tensor of a [`fusion_plugin_api::Model`] could not be read.
    #[error("cannot read tensor `{name}` of model {}: {cause}", model.display())]
    StateDict {
        /// The tensor name.
        name: String,
        /// The description of the model (e.g. `merged model`).
        model: PathBuf,
        /// What the state dict reported. Part of the message, not a `source()`: an error chain
        /// printed with `{:#}` would repeat it.
        cause: fusion_plugin_api::Error,
    },

    /// A GPU call (tensor creation, kernel launch, read-back) failed.
    #[error("GPU {op}: {cause}")]
    Compute {
        /// The operation, with the shapes involved.
        op: String,
        /// What the compute handle reported (in the message, not a `source()`, as above).
        cause: fusion_plugin_api::Error,
    },

    /// A dense kernel of the kernel library refused its arguments or failed to launch (the
    /// message names the operation and the shapes).
    #[error(transparent)]
    Kernel(#[from] fusion_kernels::nn::NnError),

    /// A job does not fit the compute device's limits (binding size, workgroups, invocations).
    #[error("{op}: {message}")]
    DeviceLimit {
        /// The operation.
        op: String,
        /// Which limit, the value needed and the device's maximum.
        message: String,
    },
}

fn format_named_shapes(tensors: &[(String, Vec<usize>)]) -> String {
    tensors
        .iter()
        .map(|(name, shape)| format!("`{name}` {shape:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl ClipError {
    /// Wraps a compute-handle error with the operation that raised it.
    pub(crate) fn compute(op: impl Into<String>) -> impl FnOnce(fusion_plugin_api::Error) -> Self {
        let op = op.into();
        move |cause| ClipError::Compute { op, cause }
    }

    /// Shorthand for an [`ClipError::Input`] error.
    pub(crate) fn input(op: &'static str, message: impl Into<String>) -> Self {
        ClipError::Input {
            op,
            message: message.into(),
        }
    }
}
