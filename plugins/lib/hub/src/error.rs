//! The one error type of this crate. `what` always names the repository kind and id, the
//! revision and, where there is one, the file, e.g. ``model `org/name` file `config.json`
//! (revision `main`)``.

use std::path::PathBuf;

use fusion_plugin_api::ErrorKind;

/// Joins a list for an error message, or says `none` when it is empty.
pub(crate) fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

/// Everything that can go wrong while finding or fetching hub files.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The settings (environment variables) are unusable.
    #[error("{0}")]
    Settings(String),

    /// A repository id, revision or file name that cannot be used.
    #[error("{what}: {reason}")]
    Invalid {
        /// What was asked for.
        what: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Offline, and the cache does not have it.
    #[error(
        "{what}: not in the Hugging Face cache ({}) and offline mode is on (--offline / HF_HUB_OFFLINE)",
        path.display()
    )]
    Offline {
        /// What was asked for.
        what: String,
        /// Where the cache was searched.
        path: PathBuf,
    },

    /// The repository is cached but the revision is not.
    #[error(
        "{what}: revision `{revision}` is not in the Hugging Face cache at {} (refs found: {}; \
         snapshots found: {})",
        repo_dir.display(),
        list(refs),
        list(snapshots)
    )]
    RevisionNotCached {
        /// The repository.
        what: String,
        /// The revision asked for.
        revision: String,
        /// The `models--org--name` / `datasets--org--name` folder.
        repo_dir: PathBuf,
        /// The refs present.
        refs: Vec<String>,
        /// The commit folders present under `snapshots/`.
        snapshots: Vec<String>,
    },

    /// The hub answered 404.
    #[error(
        "{what}: not found on {endpoint} (HTTP 404: no such repository, revision or file; a \
         private repository also answers 404 without a token: set HF_TOKEN)"
    )]
    NotFound {
        /// What was asked for.
        what: String,
        /// The endpoint.
        endpoint: String,
    },

    /// The hub refused access (401/403).
    #[error(
        "{what}: access denied by {endpoint} (HTTP {status}): the repository is private or \
         gated; set HF_TOKEN (or log in with `huggingface-cli login`) with an account that can \
         read it"
    )]
    Denied {
        /// What was asked for.
        what: String,
        /// The endpoint.
        endpoint: String,
        /// The status code.
        status: u16,
    },

    /// Any other HTTP status.
    #[error("{what}: {endpoint} answered HTTP {status}")]
    Status {
        /// What was asked for.
        what: String,
        /// The endpoint.
        endpoint: String,
        /// The status code.
        status: u16,
    },

    /// The hub could not be reached.
    #[error(
        "{what}: cannot reach the Hugging Face hub at {endpoint}: {message} (check HF_ENDPOINT \
         and the network, or run with --offline on a cache that has the files)"
    )]
    Network {
        /// What was asked for.
        what: String,
        /// The endpoint.
        endpoint: String,
        /// The transport's error.
        message: String,
    },

    /// The transfer broke off after it started.
    #[error(
        "{what}: the download from {endpoint} broke off ({message}); nothing was stored in the \
         cache, try again"
    )]
    Transfer {
        /// What was asked for.
        what: String,
        /// The endpoint.
        endpoint: String,
        /// The transport's error.
        message: String,
    },

    /// The server answered, but not as the hub does (a missing header, a malformed reply).
    #[error(
        "{what}: the server at {endpoint} did not answer as the Hugging Face hub does: {message}"
    )]
    Protocol {
        /// What was asked for.
        what: String,
        /// The endpoint.
        endpoint: String,
        /// What was wrong.
        message: String,
    },

    /// The downloaded bytes are not the file the hub described.
    #[error("{what}: the download is corrupt ({detail}); nothing was stored in the cache")]
    Corrupt {
        /// What was asked for.
        what: String,
        /// Expected and found size or sha256.
        detail: String,
    },

    /// Reading or writing the cache failed.
    #[error("{what}: {}: {source}", path.display())]
    Io {
        /// What was asked for.
        what: String,
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl HubError {
    /// The kind the plugin boundary carries: a config error (exit code 2) for what the user must
    /// fix in the config or environment, an I/O or other error (exit code 1) for a failed run.
    pub fn kind(&self) -> ErrorKind {
        match self {
            HubError::Settings(_) | HubError::Invalid { .. } => ErrorKind::Config,
            HubError::Network { .. }
            | HubError::Transfer { .. }
            | HubError::Protocol { .. }
            | HubError::Status { .. } => ErrorKind::Other,
            _ => ErrorKind::Io,
        }
    }
}

impl From<HubError> for fusion_plugin_api::Error {
    fn from(e: HubError) -> Self {
        fusion_plugin_api::Error::new(e.kind(), &e)
    }
}
