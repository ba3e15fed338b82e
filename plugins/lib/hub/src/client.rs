//! The hub client: cache first, then the network (see [`crate::http`]), every download verified before
//! it enters the cache.
//!
//! Downloads go into a fresh staging folder inside the repository's `blobs/` folder (same file
//! system, removed afterwards); the staged file is checked against the size and, for LFS files,
//! the sha256 the hub announced, and only then renamed into the real `blobs/` and linked into
//! `snapshots/`. The requests themselves (with timeouts and retries) are in [`crate::http`].

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use fusion_plugin_api::hub::{Hub, RepoKind};
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

use crate::cache::{
    check_filename, check_repo_id, check_revision, is_commit_hash, is_plain_name, is_sha256,
    list_files, HubCache, Lookup,
};
use crate::http::{Http, HttpError};
use crate::{HubError, HubSettings};

/// Makes a progress bar for one download: (label, total bytes).
pub type ProgressFactory = Arc<dyn Fn(&str, u64) -> ProgressBar + Send + Sync>;

/// The download bar, in bytes, that fusion-host's programs give [`HubClient::with_progress`]
/// (a program that draws several bars adds it to its `MultiProgress`).
pub fn download_bar(label: &str, total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>24} [{bar:32}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    bar
}

/// The revision used when none is given.
const MAIN: &str = "main";

/// Hub access with the standard cache: see the [crate documentation](crate).
pub struct HubClient {
    settings: HubSettings,
    cache: HubCache,
    http: Http,
    /// The commit each (kind, repo, revision) resolved to in this process, so that one run
    /// reads one commit even when a branch moves meanwhile.
    commits: Mutex<HashMap<(RepoKind, String, String), String>>,
    /// The hub's listings, asked once per (kind, repo, revision) in this process.
    listings: Mutex<HashMap<(RepoKind, String, String), Vec<String>>>,
    /// Set when a listing found the hub unreachable: later listings read the cache without
    /// asking (and without warning again).
    unreachable: AtomicBool,
    progress: Option<ProgressFactory>,
}

impl HubClient {
    /// A client with these settings, without progress bars.
    pub fn new(settings: HubSettings) -> Self {
        Self {
            cache: HubCache::new(&settings.cache_dir),
            http: Http::new(&settings),
            settings,
            commits: Mutex::new(HashMap::new()),
            listings: Mutex::new(HashMap::new()),
            unreachable: AtomicBool::new(false),
            progress: None,
        }
    }

    /// The same client, drawing a progress bar per download with `factory`.
    pub fn with_progress(mut self, factory: ProgressFactory) -> Self {
        self.progress = Some(factory);
        self
    }

    /// Its settings.
    pub fn settings(&self) -> &HubSettings {
        &self.settings
    }

    /// Its cache.
    pub fn cache(&self) -> &HubCache {
        &self.cache
    }

    /// The local path of `filename` in `repo` at `revision` (default `main`): see [`Hub::file`].
    pub fn fetch(
        &self,
        kind: RepoKind,
        repo: &str,
        revision: Option<&str>,
        filename: &str,
    ) -> Result<PathBuf, HubError> {
        let revision = revision.unwrap_or(MAIN);
        let what = format!("{kind} `{repo}` file `{filename}` (revision `{revision}`)");
        let invalid = |reason: String| HubError::Invalid {
            what: what.clone(),
            reason,
        };
        check_repo_id(repo).map_err(invalid)?;
        check_revision(revision).map_err(invalid)?;
        check_filename(filename).map_err(invalid)?;

        let known = self.known_commit(kind, repo, revision);
        let cached = match &known {
            Some(commit) => self.cache.find_in_commit(kind, repo, commit, filename),
            None => self.cache.find(kind, repo, revision, filename),
        };
        if let Some(path) = cached {
            tracing::debug!(path = %path.display(), "{what}: in the cache");
            return Ok(path);
        }
        if self.settings.offline {
            return Err(HubError::Offline {
                what,
                path: self.cache.repo_dir(kind, repo),
            });
        }
        self.download(kind, repo, revision, known.as_deref(), filename, &what)
    }

    /// The files of `repo` at `revision` (default `main`): see [`Hub::list`].
    pub fn files(
        &self,
        kind: RepoKind,
        repo: &str,
        revision: Option<&str>,
    ) -> Result<Vec<String>, HubError> {
        let revision = revision.unwrap_or(MAIN);
        let what = format!("{kind} `{repo}` (revision `{revision}`)");
        let invalid = |reason: String| HubError::Invalid {
            what: what.clone(),
            reason,
        };
        check_repo_id(repo).map_err(invalid)?;
        check_revision(revision).map_err(invalid)?;
        if self.settings.offline {
            return self.cached_files(kind, repo, revision, &what);
        }
        let key = (kind, repo.to_string(), revision.to_string());
        if let Some(files) = self
            .listings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(files.clone());
        }
        if self.unreachable.load(Ordering::Relaxed) {
            if let Ok(files) = self.cached_files(kind, repo, revision, &what) {
                tracing::debug!("{what}: listed from the cached snapshot (the hub is unreachable)");
                return Ok(files);
            }
        }
        match self.http.listing(kind, repo, revision) {
            Ok((sha, mut files)) => {
                if !is_plain_name(&sha) {
                    return Err(self.protocol(&what, format!("bad commit `{sha}`")));
                }
                self.remember(kind, repo, revision, &sha);
                files.sort();
                tracing::debug!(commit = %sha, files = files.len(), "{what}: listed on the hub");
                self.listings
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, files.clone());
                Ok(files)
            }
            Err(e) => {
                let e = self.http_error(e, &what);
                // Unreachable hub, cached snapshot: go on with what the cache has, as Python
                // does when its HEAD request fails.
                if let HubError::Network { message, .. } = &e {
                    if let Ok(files) = self.cached_files(kind, repo, revision, &what) {
                        if !self.unreachable.swap(true, Ordering::Relaxed) {
                            tracing::warn!(
                                "{what}: cannot reach the Hugging Face hub at {} ({message}); \
                                 using the cached snapshots for the rest of the run",
                                self.settings.endpoint
                            );
                        }
                        return Ok(files);
                    }
                }
                Err(e)
            }
        }
    }

    fn cached_files(
        &self,
        kind: RepoKind,
        repo: &str,
        revision: &str,
        what: &str,
    ) -> Result<Vec<String>, HubError> {
        let repo_dir = self.cache.repo_dir(kind, repo);
        match self.cache.lookup(kind, repo, revision) {
            Lookup::Snapshot { dir, .. } => list_files(&dir).map_err(|source| HubError::Io {
                what: what.to_string(),
                path: dir,
                source,
            }),
            Lookup::NoRepo => Err(HubError::Offline {
                what: what.to_string(),
                path: repo_dir,
            }),
            Lookup::NoRevision { refs, snapshots } => Err(HubError::RevisionNotCached {
                what: format!("{kind} `{repo}`"),
                revision: revision.to_string(),
                repo_dir,
                refs,
                snapshots,
            }),
        }
    }

    /// The commit `revision` stands for, when known without asking: a full hash, or what it
    /// resolved to earlier in this process.
    fn known_commit(&self, kind: RepoKind, repo: &str, revision: &str) -> Option<String> {
        if is_commit_hash(revision) {
            return Some(revision.to_ascii_lowercase());
        }
        self.commits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(kind, repo.to_string(), revision.to_string()))
            .cloned()
    }

    fn remember(&self, kind: RepoKind, repo: &str, revision: &str, commit: &str) {
        self.commits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                (kind, repo.to_string(), revision.to_string()),
                commit.to_string(),
            );
    }

    fn download(
        &self,
        kind: RepoKind,
        repo: &str,
        revision: &str,
        known: Option<&str>,
        filename: &str,
        what: &str,
    ) -> Result<PathBuf, HubError> {
        let endpoint = &self.settings.endpoint;
        let url = self
            .http
            .file_url(kind, repo, known.unwrap_or(revision), filename);
        let meta = self
            .http
            .metadata(&url)
            .map_err(|e| self.http_error(e, what))?;
        let commit = meta.commit.trim().to_string();
        // Python also strips a weak-etag `W/`.
        let etag = meta.etag.trim().trim_start_matches("W/").to_string();
        if !is_plain_name(&commit) || !is_plain_name(&etag) {
            return Err(self.protocol(
                what,
                format!("unusable commit `{commit}` or etag `{etag}` for {url}"),
            ));
        }
        let size = meta.size;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| HubError::Io {
                what: what.to_string(),
                path,
                source,
            }
        };

        let blob = self.cache.blob_path(kind, repo, &etag);
        // Another revision (or Python) may have stored these bytes already.
        let have_blob = std::fs::metadata(&blob).is_ok_and(|m| m.is_file() && m.len() == size);
        if have_blob {
            tracing::debug!(blob = %blob.display(), "{what}: contents already in the cache");
        } else {
            let blobs_dir = blob.parent().expect("a blob has a parent");
            std::fs::create_dir_all(blobs_dir).map_err(io(blobs_dir))?;
            remove_stale_staging(blobs_dir, STALE_STAGING);
            // Removed when dropped, whatever happens below: a failed download leaves nothing.
            let staging = tempfile::Builder::new()
                .prefix(".fusion-incomplete-")
                .tempdir_in(blobs_dir)
                .map_err(io(blobs_dir))?;
            tracing::debug!(bytes = size, "{what}: downloading from {endpoint}");
            let bar = self
                .progress
                .as_ref()
                .map(|f| f(&short_label(repo, filename), size));
            let staged = staging.path().join(&etag);
            let mut file = std::fs::File::create(&staged).map_err(io(&staged))?;
            // The contents of the commit the metadata named, so that a branch moving meanwhile
            // cannot mix two versions.
            let at_commit = self.http.file_url(kind, repo, &commit, filename);
            let result = self.http.download(&at_commit, &mut file, &mut |n| {
                if let Some(bar) = &bar {
                    bar.set_position(n);
                }
            });
            drop(file);
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            result.map_err(|e| match e {
                HttpError::Local(source) => HubError::Io {
                    what: what.to_string(),
                    path: staged.clone(),
                    source,
                },
                other => self.http_error(other, what),
            })?;
            if let Some(detail) = verify(&staged, size, &etag).map_err(io(&staged))? {
                return Err(HubError::Corrupt {
                    what: what.to_string(),
                    detail,
                });
            }
            std::fs::rename(&staged, &blob).map_err(io(&blob))?;
            tracing::info!(
                bytes = size,
                checked = if is_sha256(&etag) {
                    "size, sha256"
                } else {
                    "size"
                },
                "{what}: downloaded from {endpoint}"
            );
        }
        let path = self
            .cache
            .link(kind, repo, &commit, filename, &etag)
            .map_err(io(&self.cache.repo_dir(kind, repo)))?;
        self.cache
            .write_ref(kind, repo, revision, &commit)
            .map_err(io(&self.cache.repo_dir(kind, repo)))?;
        self.remember(kind, repo, revision, &commit);
        Ok(path)
    }

    fn protocol(&self, what: &str, message: String) -> HubError {
        HubError::Protocol {
            what: what.to_string(),
            endpoint: self.settings.endpoint.clone(),
            message,
        }
    }

    /// A request's error as one of ours, naming what was asked for and where.
    fn http_error(&self, e: HttpError, what: &str) -> HubError {
        let endpoint = self.settings.endpoint.clone();
        let what = what.to_string();
        match e {
            HttpError::Status { status: 404 } => HubError::NotFound { what, endpoint },
            HttpError::Status {
                status: status @ (401 | 403),
            } => HubError::Denied {
                what,
                endpoint,
                status,
            },
            HttpError::Status { status } => HubError::Status {
                what,
                endpoint,
                status,
            },
            HttpError::Unreachable { message } => HubError::Network {
                what,
                endpoint,
                message,
            },
            HttpError::BrokeOff { message } => HubError::Transfer {
                what,
                endpoint,
                message,
            },
            HttpError::Protocol { message } => HubError::Protocol {
                what,
                endpoint,
                message,
            },
            HttpError::Local(e) => HubError::Transfer {
                what,
                endpoint,
                message: format!("writing the download: {e}"),
            },
        }
    }
}

impl Hub for HubClient {
    fn file(
        &self,
        kind: RepoKind,
        repo: &str,
        revision: Option<&str>,
        filename: &str,
    ) -> fusion_plugin_api::Result<PathBuf> {
        Ok(self.fetch(kind, repo, revision, filename)?)
    }

    fn list(
        &self,
        kind: RepoKind,
        repo: &str,
        revision: Option<&str>,
    ) -> fusion_plugin_api::Result<Vec<String>> {
        Ok(self.files(kind, repo, revision)?)
    }
}

/// Checks a downloaded file against the size and, for LFS files (whose etag is their sha256),
/// the hash the hub announced. `Some(detail)` says what differs.
fn verify(path: &Path, size: u64, etag: &str) -> std::io::Result<Option<String>> {
    let len = std::fs::metadata(path)?.len();
    if len != size {
        return Ok(Some(format!(
            "{len} bytes received, the hub announced {size}"
        )));
    }
    if is_sha256(etag) {
        let got = sha256_file(path)?;
        if !got.eq_ignore_ascii_case(etag) {
            return Ok(Some(format!("sha256 {got}, the hub announced {etag}")));
        }
    }
    Ok(None)
}

/// The sha256 of a file, as lowercase hex.
pub(crate) fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lowercase hex of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `org/name: file`, shortened for a progress bar.
fn short_label(repo: &str, filename: &str) -> String {
    let label = format!("{repo}: {filename}");
    if label.chars().count() > 48 {
        let tail: String = label
            .chars()
            .rev()
            .take(45)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("...{tail}")
    } else {
        label
    }
}

/// Age after which a download's staging folder is taken for the leftover of a killed run.
const STALE_STAGING: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Remove `.fusion-incomplete-*` folders in `blobs_dir` untouched for longer than `age`: a run
/// killed mid-download cannot remove its own (a failed one does). Nothing in them was ever
/// linked into a snapshot; a live download writes into its folder, so it stays younger than
/// `age`. Best effort: a folder that cannot be read or removed is left alone.
fn remove_stale_staging(blobs_dir: &Path, age: std::time::Duration) {
    let Ok(entries) = std::fs::read_dir(blobs_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(".fusion-incomplete-"))
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|e| e > age);
        if stale {
            let path = entry.path();
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {
                    tracing::debug!(path = %path.display(), "removed a stale download folder")
                }
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "could not remove a stale download folder")
                }
            }
        }
    }
}

#[cfg(test)]
mod staging_tests {
    use super::*;

    #[test]
    fn only_old_staging_folders_are_removed() {
        let blobs = tempfile::tempdir().unwrap();
        let old = blobs.path().join(".fusion-incomplete-old");
        let fresh = blobs.path().join(".fusion-incomplete-fresh");
        let other = blobs.path().join("0123abcd");
        for d in [&old, &fresh] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("part"), b"x").unwrap();
        }
        std::fs::write(&other, b"blob").unwrap();
        let then = std::time::SystemTime::now() - 2 * STALE_STAGING;
        std::fs::File::open(&old)
            .unwrap()
            .set_modified(then)
            .unwrap();
        std::fs::File::options()
            .write(true)
            .open(&other)
            .unwrap()
            .set_modified(then)
            .unwrap();
        remove_stale_staging(blobs.path(), STALE_STAGING);
        assert!(!old.exists(), "a day-old staging folder stays");
        assert!(fresh.exists(), "a live download's folder was removed");
        assert!(other.exists(), "a blob was removed");
    }
}
