//! The hub cache, in the layout Python's `huggingface_hub` writes (so either tool reuses the
//! other's downloads):
//!
//! ```text
//! <cache>/models--<org>--<name>/
//!     blobs/<etag>                      file contents, named by their etag (sha256 for LFS files)
//!     refs/<revision>                   a commit hash (`refs/refs/convert/parquet` for that branch)
//!     snapshots/<commit>/<path>         relative symlinks into blobs/ (copies without symlinks)
//! <cache>/datasets--<org>--<name>/...  the same for dataset repositories
//! ```
//!
//! A file only ever enters `blobs/` by a rename of a complete, verified download, and only then
//! is it linked into `snapshots/`; so whatever `snapshots/` shows is complete.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use fusion_plugin_api::hub::RepoKind;

/// A name for a temporary file no other thread or process uses at the same time.
fn temp_name(base: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        ".{base}.fusion-tmp-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The cache folder names of a repository kind (`models`, `datasets`).
pub(crate) fn kind_prefix(kind: RepoKind) -> &'static str {
    match kind {
        RepoKind::Dataset => "datasets",
        _ => "models",
    }
}

/// Whether `s` is a full commit hash (40 hex digits).
pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether `etag` is a sha256 (64 hex digits), as the hub gives for LFS files.
pub fn is_sha256(etag: &str) -> bool {
    etag.len() == 64 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Why a repository id cannot be used, following `huggingface_hub.utils.validate_repo_id`:
/// `name` or `org/name`, of letters, digits, `-`, `_`, `.`, starting and ending with a letter,
/// digit or `_`, without `--` or `..`, at most 96 characters.
pub fn check_repo_id(repo: &str) -> Result<(), String> {
    let parts: Vec<&str> = repo.split('/').collect();
    if repo.is_empty() || parts.len() > 2 {
        return Err("a repository id is `name` or `org/name`".into());
    }
    if repo.len() > 96 {
        return Err("a repository id has at most 96 characters".into());
    }
    if repo.contains("--") || repo.contains("..") {
        return Err("a repository id cannot contain `--` or `..`".into());
    }
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    for part in parts {
        let ok = !part.is_empty()
            && part.chars().all(|c| word(c) || c == '-' || c == '.')
            && part.starts_with(word)
            && part.ends_with(word);
        if !ok {
            return Err(format!(
                "`{part}` is not a valid name (letters, digits, `-`, `_`, `.`; starting and \
                 ending with a letter, digit or `_`)"
            ));
        }
    }
    Ok(())
}

/// Why a revision cannot be used (it names a file under `refs/`, so it must stay inside it).
pub fn check_revision(revision: &str) -> Result<(), String> {
    let bad = revision.is_empty()
        || revision.starts_with('/')
        || revision.ends_with('/')
        || revision.contains('\\')
        || revision
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        || revision
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..");
    if bad {
        Err(format!(
            "`{revision}` is not a valid revision (a branch, tag or commit hash)"
        ))
    } else {
        Ok(())
    }
}

/// Why a file name cannot be used: it must be a relative path inside the repository.
pub fn check_filename(filename: &str) -> Result<(), String> {
    let bad = filename.is_empty()
        || filename.starts_with('/')
        || filename.contains('\\')
        || filename.chars().any(char::is_control)
        || filename
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..");
    if bad {
        Err(format!(
            "`{filename}` is not a file path inside a repository (relative, `/`-separated, \
             without `.` or `..`)"
        ))
    } else {
        Ok(())
    }
}

/// Whether `s` can be a single path component named by the server (a commit, an etag).
pub(crate) fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// What the cache holds for a revision of a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The revision's snapshot folder and its commit.
    Snapshot {
        /// The commit hash.
        commit: String,
        /// `snapshots/<commit>`.
        dir: PathBuf,
    },
    /// The repository is not in the cache at all.
    NoRepo,
    /// The repository is, the revision is not.
    NoRevision {
        /// The refs present (`main`, `v1.0`, `refs/convert/parquet`, ...).
        refs: Vec<String>,
        /// The commit folders present under `snapshots/`.
        snapshots: Vec<String>,
    },
}

/// A hub cache folder.
#[derive(Debug, Clone)]
pub struct HubCache {
    root: PathBuf,
}

impl HubCache {
    /// The cache at `root` (the folder holding `models--org--name`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The cache folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `models--org--name` / `datasets--org--name` for a repository.
    pub fn repo_dir(&self, kind: RepoKind, repo: &str) -> PathBuf {
        self.root.join(format!(
            "{}--{}",
            kind_prefix(kind),
            repo.replace('/', "--")
        ))
    }

    /// Finds the snapshot of `revision`. The revision is looked up as a ref (`refs/<revision>`,
    /// which holds a commit hash; `refs/refs/<revision>` too, so `convert/parquet` is a short
    /// form of `refs/convert/parquet`), then as a snapshot folder name (a full commit hash), then
    /// as an unambiguous prefix of one (at least 7 characters).
    pub fn lookup(&self, kind: RepoKind, repo: &str, revision: &str) -> Lookup {
        let repo_dir = self.repo_dir(kind, repo);
        if !repo_dir.is_dir() {
            return Lookup::NoRepo;
        }
        let snapshots_dir = repo_dir.join("snapshots");
        let mut ref_files = vec![repo_dir.join("refs").join(revision)];
        if !revision.starts_with("refs/") {
            ref_files.push(repo_dir.join("refs").join("refs").join(revision));
        }
        for ref_file in &ref_files {
            if let Ok(text) = std::fs::read_to_string(ref_file) {
                let commit = text.trim();
                if is_plain_name(commit) && snapshots_dir.join(commit).is_dir() {
                    return Lookup::Snapshot {
                        commit: commit.to_string(),
                        dir: snapshots_dir.join(commit),
                    };
                }
            }
        }
        let single = is_plain_name(revision);
        if single && snapshots_dir.join(revision).is_dir() {
            return Lookup::Snapshot {
                commit: revision.to_string(),
                dir: snapshots_dir.join(revision),
            };
        }
        let snapshots = dir_names(&snapshots_dir);
        if single && revision.len() >= 7 {
            let matching: Vec<&String> = snapshots
                .iter()
                .filter(|s| s.starts_with(revision))
                .collect();
            if let [only] = matching.as_slice() {
                return Lookup::Snapshot {
                    commit: only.to_string(),
                    dir: snapshots_dir.join(only),
                };
            }
        }
        let mut refs = Vec::new();
        collect_refs(&repo_dir.join("refs"), "", &mut refs);
        refs.sort();
        Lookup::NoRevision { refs, snapshots }
    }

    /// `filename` in the snapshot of `revision`, when the cache has it complete.
    pub fn find(
        &self,
        kind: RepoKind,
        repo: &str,
        revision: &str,
        filename: &str,
    ) -> Option<PathBuf> {
        match self.lookup(kind, repo, revision) {
            Lookup::Snapshot { dir, .. } => Some(dir.join(filename)).filter(|p| p.is_file()),
            _ => None,
        }
    }

    /// `filename` in the snapshot of `commit`, when the cache has it complete.
    pub fn find_in_commit(
        &self,
        kind: RepoKind,
        repo: &str,
        commit: &str,
        filename: &str,
    ) -> Option<PathBuf> {
        Some(
            self.repo_dir(kind, repo)
                .join("snapshots")
                .join(commit)
                .join(filename),
        )
        .filter(|p| p.is_file())
    }

    /// `blobs/<etag>` of a repository.
    pub fn blob_path(&self, kind: RepoKind, repo: &str, etag: &str) -> PathBuf {
        self.repo_dir(kind, repo).join("blobs").join(etag)
    }

    /// Links `blobs/<etag>` (which must exist) into `snapshots/<commit>/<filename>`, replacing
    /// whatever was there, and returns the snapshot path. The link is relative, as Python makes
    /// it, and appears atomically (made under a temporary name, then renamed).
    pub fn link(
        &self,
        kind: RepoKind,
        repo: &str,
        commit: &str,
        filename: &str,
        etag: &str,
    ) -> std::io::Result<PathBuf> {
        let repo_dir = self.repo_dir(kind, repo);
        let pointer = repo_dir.join("snapshots").join(commit).join(filename);
        let parent = pointer.parent().expect("a snapshot file has a parent");
        std::fs::create_dir_all(parent)?;
        let name = pointer
            .file_name()
            .expect("a snapshot file has a name")
            .to_string_lossy();
        let tmp = parent.join(temp_name(&name));
        #[cfg(unix)]
        {
            // snapshots/<commit>/<a>/<b> -> ../../../blobs/<etag>: one `..` per folder level.
            let depth = filename.split('/').count() + 1;
            let target = format!("{}blobs/{etag}", "../".repeat(depth));
            std::os::unix::fs::symlink(target, &tmp)?;
        }
        #[cfg(not(unix))]
        std::fs::copy(repo_dir.join("blobs").join(etag), &tmp)?;
        std::fs::rename(&tmp, &pointer).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
        Ok(pointer)
    }

    /// Records that `revision` is at `commit` (`refs/<revision>`), as Python does for every
    /// revision that is not itself the commit hash. Written under a temporary name and renamed.
    /// (The temporary name starts with a dot, so listings of `refs/` skip it.)
    pub fn write_ref(
        &self,
        kind: RepoKind,
        repo: &str,
        revision: &str,
        commit: &str,
    ) -> std::io::Result<()> {
        if revision == commit {
            return Ok(());
        }
        let path = self.repo_dir(kind, repo).join("refs").join(revision);
        if std::fs::read_to_string(&path).is_ok_and(|t| t.trim() == commit) {
            return Ok(());
        }
        let parent = path.parent().expect("a ref has a parent");
        std::fs::create_dir_all(parent)?;
        let tmp = parent.join(temp_name("ref"));
        std::fs::write(&tmp, commit)?;
        std::fs::rename(&tmp, &path).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }
}

/// Every file under `dir` (following symlinks; dangling links, which point at no complete file,
/// are left out) as sorted repository paths.
pub fn list_files(dir: &Path) -> std::io::Result<Vec<String>> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>, depth: usize) -> std::io::Result<()> {
        if depth > 32 {
            return Ok(());
        }
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let rel = format!("{prefix}{name}");
            if path.is_dir() {
                walk(&path, &format!("{rel}/"), out, depth + 1)?;
            } else if path.is_file() && !name.contains(".fusion-tmp-") {
                out.push(rel);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out, 0)?;
    out.sort();
    Ok(out)
}

/// Sorted names of the sub-folders of `dir` (empty when it cannot be read).
fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Collects the ref names under `refs/` (nested refs such as `refs/convert/parquet` included).
fn collect_refs(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        if name.starts_with('.') || name.contains("/.") {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            collect_refs(&path, &format!("{name}/"), out);
        } else {
            out.push(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN: &str = "1111111111111111111111111111111111111111";
    const OLD: &str = "2222222222222222222222222222222222222222";
    const CONVERT: &str = "3333333333333333333333333333333333333333";

    /// A cache with one dataset repository: `main`, tag `v1.0` and `refs/convert/parquet`.
    fn cache() -> (tempfile::TempDir, HubCache) {
        let dir = tempfile::tempdir().unwrap();
        let cache = HubCache::new(dir.path());
        let kind = RepoKind::Dataset;
        let repo = "org/data";
        for (commit, file, etag) in [
            (MAIN, "data/test-00000-of-00001.parquet", "aa"),
            (OLD, "data/test-00000-of-00001.parquet", "bb"),
            (CONVERT, "default/test/0000.parquet", "cc"),
        ] {
            let blob = cache.blob_path(kind, repo, etag);
            std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
            std::fs::write(&blob, etag).unwrap();
            cache.link(kind, repo, commit, file, etag).unwrap();
        }
        cache.write_ref(kind, repo, "main", MAIN).unwrap();
        cache.write_ref(kind, repo, "v1.0", OLD).unwrap();
        cache
            .write_ref(kind, repo, "refs/convert/parquet", CONVERT)
            .unwrap();
        (dir, cache)
    }

    fn commit_of(cache: &HubCache, revision: &str) -> Option<String> {
        match cache.lookup(RepoKind::Dataset, "org/data", revision) {
            Lookup::Snapshot { commit, .. } => Some(commit),
            _ => None,
        }
    }

    #[test]
    fn layout_is_pythons() {
        let (dir, cache) = cache();
        let repo_dir = dir.path().join("datasets--org--data");
        assert_eq!(cache.repo_dir(RepoKind::Dataset, "org/data"), repo_dir);
        assert_eq!(
            cache.repo_dir(RepoKind::Model, "gpt2"),
            dir.path().join("models--gpt2")
        );
        let link = repo_dir.join(format!("snapshots/{MAIN}/data/test-00000-of-00001.parquet"));
        #[cfg(unix)]
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            PathBuf::from("../../../blobs/aa")
        );
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "aa");
        assert_eq!(
            std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
            MAIN
        );
        assert_eq!(
            std::fs::read_to_string(repo_dir.join("refs/refs/convert/parquet")).unwrap(),
            CONVERT
        );
        // No temporary names are left behind.
        assert_eq!(
            list_files(&repo_dir).unwrap(),
            vec![
                "blobs/aa".to_string(),
                "blobs/bb".into(),
                "blobs/cc".into(),
                "refs/main".into(),
                "refs/refs/convert/parquet".into(),
                "refs/v1.0".into(),
                format!("snapshots/{MAIN}/data/test-00000-of-00001.parquet"),
                format!("snapshots/{OLD}/data/test-00000-of-00001.parquet"),
                format!("snapshots/{CONVERT}/default/test/0000.parquet"),
            ]
        );
    }

    #[test]
    fn revisions_by_ref_hash_prefix_and_convert_branch() {
        let (_dir, cache) = cache();
        assert_eq!(commit_of(&cache, "main").as_deref(), Some(MAIN));
        assert_eq!(commit_of(&cache, "v1.0").as_deref(), Some(OLD));
        assert_eq!(commit_of(&cache, OLD).as_deref(), Some(OLD));
        assert_eq!(commit_of(&cache, &OLD[..8]).as_deref(), Some(OLD));
        assert_eq!(commit_of(&cache, &OLD[..6]), None, "too short a prefix");
        assert_eq!(
            commit_of(&cache, "refs/convert/parquet").as_deref(),
            Some(CONVERT)
        );
        assert_eq!(
            commit_of(&cache, "convert/parquet").as_deref(),
            Some(CONVERT)
        );
        assert_eq!(
            cache.lookup(RepoKind::Dataset, "org/other", "main"),
            Lookup::NoRepo
        );
        assert_eq!(
            cache.lookup(RepoKind::Model, "org/data", "main"),
            Lookup::NoRepo,
            "kinds do not mix"
        );
        match cache.lookup(RepoKind::Dataset, "org/data", "v9") {
            Lookup::NoRevision { refs, snapshots } => {
                assert_eq!(refs, vec!["main", "refs/convert/parquet", "v1.0"]);
                assert_eq!(snapshots, vec![MAIN, OLD, CONVERT]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn files_and_listings_show_only_complete_files() {
        let (dir, cache) = cache();
        let kind = RepoKind::Dataset;
        assert!(cache
            .find(kind, "org/data", "main", "data/test-00000-of-00001.parquet")
            .is_some());
        assert!(cache.find(kind, "org/data", "main", "README.md").is_none());
        // A link whose blob is gone (an interrupted copy, a cleaned cache) is not a file.
        std::fs::remove_file(dir.path().join("datasets--org--data/blobs/bb")).unwrap();
        assert!(cache
            .find(kind, "org/data", "v1.0", "data/test-00000-of-00001.parquet")
            .is_none());
        let snapshot = dir
            .path()
            .join(format!("datasets--org--data/snapshots/{OLD}"));
        assert!(list_files(&snapshot).unwrap().is_empty());
        assert!(cache
            .find_in_commit(kind, "org/data", CONVERT, "default/test/0000.parquet")
            .is_some());
    }

    #[test]
    fn ids_revisions_and_names_are_checked() {
        for ok in ["gpt2", "openai/clip-vit-base-patch32", "org/a.b_c", "_x/y_"] {
            assert!(check_repo_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "a/b/c", "/a", "a/", "a--b/c", "a/..", "-a/b", "a/b.", "a b/c",
        ] {
            assert!(check_repo_id(bad).is_err(), "{bad}");
        }
        for ok in ["main", "v1.0", "refs/convert/parquet", MAIN, "refs/pr/1"] {
            assert!(check_revision(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../x", "a/../b", "/main", "main/", "a b", "a\\b"] {
            assert!(check_revision(bad).is_err(), "{bad}");
        }
        for ok in [
            "config.json",
            "data/test-00000-of-00001.parquet",
            ".gitattributes",
        ] {
            assert!(check_filename(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/etc/passwd", "../x", "a//b", "a/./b", "a\\b"] {
            assert!(check_filename(bad).is_err(), "{bad}");
        }
    }
}
