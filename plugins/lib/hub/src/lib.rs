//! Hugging Face hub access for fusion-host: files of model and dataset repositories through the
//! standard cache (`$HF_HOME/hub`, in the layout Python's `huggingface_hub` writes, so an existing
//! cache is reused and Python reuses ours), downloaded over HTTP (ureq) when missing, every
//! request with a connect and a read timeout and retries.
//!
//! * [`HubSettings`]: the cache folder, endpoint, token and offline mode, resolved from
//!   `HF_HOME`, `HF_HUB_CACHE`, `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE`,
//!   `HF_HUB_ETAG_TIMEOUT` and `HF_HUB_DOWNLOAD_TIMEOUT`, plus the host's `--offline`.
//! * [`HubClient`]: cache first; otherwise (unless offline) a download that is checked against
//!   the size and, for LFS files, the sha256 the hub announced before it enters the cache, so a
//!   failed, partial or corrupted download never leaves a file that later passes for complete.
//!   It implements plugin-api's [`Hub`](fusion_plugin_api::hub::Hub), which the host hands to
//!   every plugin.
//! * [`HubCache`]: the cache layout (revisions by ref, full or short commit hash).
//!
//! ```no_run
//! use fusion_hub::{HubClient, HubSettings};
//! use fusion_plugin_api::hub::RepoKind;
//! let hub = HubClient::new(HubSettings::from_env(false)?);
//! let config = hub.fetch(RepoKind::Model, "openai/clip-vit-base-patch32", None, "config.json")?;
//! # Ok::<(), fusion_hub::HubError>(())
//! ```

mod cache;
mod client;
mod error;
mod http;
mod settings;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

pub use cache::{
    check_filename, check_repo_id, check_revision, is_commit_hash, is_sha256, list_files, HubCache,
    Lookup,
};
pub use client::{download_bar, HubClient, ProgressFactory};
pub use error::HubError;
pub use fusion_plugin_api::hub::{Hub, RepoKind};
pub use settings::{HubSettings, DEFAULT_ENDPOINT, DEFAULT_TIMEOUT};
