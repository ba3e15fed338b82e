//! The one error type of this crate. Every message names the file, dataset, split, column or
//! index it is about, so that a user can act on it without a backtrace.

use std::path::PathBuf;

/// Joins a list for an error message, or says `none` when it is empty.
pub(crate) fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

/// Everything that can go wrong while opening or reading a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A file or folder could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A hub dataset could not be listed or fetched (not in the cache while offline, not on
    /// the hub, a revision the cache does not have, a failed download). The message, from the
    /// hub, names the repository, the revision and the file.
    #[error("{message}")]
    Hub {
        /// The source as given.
        source_name: String,
        /// What the hub said.
        message: String,
    },

    /// No file of the dataset belongs to the requested split.
    #[error(
        "dataset '{dataset}' has no split '{split}' (splits found: {})",
        list(available)
    )]
    SplitNotFound {
        /// The dataset (source and resolved folder).
        dataset: String,
        /// The split asked for.
        split: String,
        /// The splits that were found, as `split` or `config/split`.
        available: Vec<String>,
    },

    /// The split exists in more than one config and none was chosen.
    #[error(
        "dataset '{dataset}': split '{split}' exists in several configs ({}); \
         choose one with split '<config>/{split}'",
        list(configs)
    )]
    AmbiguousSplit {
        /// The dataset.
        dataset: String,
        /// The split asked for.
        split: String,
        /// The configs that have it.
        configs: Vec<String>,
    },

    /// A column is missing from a parquet file.
    #[error("{file}: no column {wanted} (columns: {})", list(available))]
    ColumnNotFound {
        /// The parquet file.
        file: PathBuf,
        /// The column name(s) tried, quoted.
        wanted: String,
        /// The top-level columns of the file.
        available: Vec<String>,
    },

    /// A column exists but has a type this crate cannot read as an image or a label.
    #[error("{file}: column '{column}' has type {found}, expected {expected}")]
    ColumnType {
        /// The parquet file.
        file: PathBuf,
        /// The column.
        column: String,
        /// The type found.
        found: String,
        /// What was expected.
        expected: String,
    },

    /// The parquet reader failed: a corrupt or truncated file, or an unsupported encoding.
    #[error("{file}: invalid parquet: {source}")]
    Parquet {
        /// The parquet file.
        file: PathBuf,
        /// The underlying error.
        #[source]
        source: parquet::errors::ParquetError,
    },

    /// A row holds no usable value (a null label, an image without bytes).
    #[error("{file}: row {row} of the file, column '{column}': {reason}")]
    BadValue {
        /// The file.
        file: PathBuf,
        /// The row inside the file.
        row: usize,
        /// The column.
        column: String,
        /// What is wrong.
        reason: String,
    },

    /// `get` was called with an index past the end.
    #[error("{dataset}: index {index} is out of range (the dataset has {len} samples)")]
    IndexOutOfRange {
        /// The dataset and split.
        dataset: String,
        /// The index asked for.
        index: usize,
        /// The number of samples.
        len: usize,
    },

    /// An IDX file is malformed, or its images and labels disagree.
    #[error("{file}: invalid IDX file: {reason}")]
    Idx {
        /// The IDX file.
        file: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// No IDX pair, or more than one, matches the split in a folder.
    #[error("{folder}: {reason}")]
    IdxPair {
        /// The folder searched.
        folder: PathBuf,
        /// What is wrong, with the files found.
        reason: String,
    },

    /// An image folder has no class folders or no images.
    #[error("image folder {root}: {reason}")]
    ImageFolder {
        /// The folder.
        root: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// Re-encoding an IDX image as PNG failed.
    #[error("{dataset}: cannot encode sample {index} as PNG: {source}")]
    Encode {
        /// The dataset.
        dataset: String,
        /// The sample.
        index: usize,
        /// The underlying error.
        #[source]
        source: png::EncodingError,
    },

    /// The dataset spec itself is unusable (an empty source, an empty split).
    #[error("invalid dataset spec: {0}")]
    InvalidSpec(String),
}

impl DatasetError {
    /// Wraps an I/O error with the path it is about.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
