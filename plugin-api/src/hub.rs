//! Hugging Face hub access: files of model and dataset repositories, from the local cache or
//! downloaded into it.
//!
//! The host owns the hub (its settings come from `HF_HOME`, `HF_HUB_CACHE`, `HF_ENDPOINT`,
//! `HF_TOKEN`, `HF_HUB_OFFLINE` and `--offline`) and hands it to every plugin library right after
//! loading it, so a component reaches it with [`current`] from anywhere, constructors and
//! [`ModelPool::load_model`](crate::ModelPool::load_model) included, without a
//! [`Context`](crate::Context).
//!
//! ```no_run
//! use fusion_plugin_api::hub::{self, RepoKind};
//! # fn main() -> fusion_plugin_api::Result<()> {
//! let hub = hub::current()?;
//! let config = hub.file(RepoKind::Model, "openai/clip-vit-base-patch32", None, "config.json")?;
//! let files = hub.list(RepoKind::Dataset, "tanganke/eurosat", Some("main"))?;
//! # Ok(()) }
//! ```
//!
//! Each plugin library has its own copy of this module's state (a shared library links its own
//! copy of every static), which is why the host installs the hub into each library rather than
//! once. Tests and tools that run components in-process call [`install`] themselves.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::{Error, Result};

/// The kind of a hub repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum RepoKind {
    /// A model repository (`org/name`, cached as `models--org--name`).
    Model,
    /// A dataset repository (`datasets/org/name` on the hub, cached as `datasets--org--name`).
    Dataset,
}

impl RepoKind {
    /// The code that crosses the plugin boundary (an enum there could never gain a variant).
    pub(crate) fn code(self) -> u8 {
        match self {
            RepoKind::Model => 0,
            RepoKind::Dataset => 1,
        }
    }

    pub(crate) fn from_code(code: u8) -> Result<RepoKind> {
        match code {
            0 => Ok(RepoKind::Model),
            1 => Ok(RepoKind::Dataset),
            other => Err(Error::unsupported(format!(
                "unknown hub repository kind {other} (a plugin built against a newer plugin-api?)"
            ))),
        }
    }
}

impl fmt::Display for RepoKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RepoKind::Model => "model",
            RepoKind::Dataset => "dataset",
        })
    }
}

/// Access to Hugging Face hub repositories through the local cache.
///
/// `revision` is a branch, a tag or a commit hash; `None` means `main`. Paths returned point into
/// the cache (`snapshots/<commit>/<filename>`); a returned file is always complete (size and,
/// for LFS files, sha256 checked when it was downloaded).
pub trait Hub: Send + Sync {
    /// The local path of `filename` (a path inside the repository, `/`-separated) in `repo`
    /// (`org/name`) at `revision`: from the cache, or downloaded into it first when it is not
    /// there and offline mode is off. Errors name the repository, the revision and the file.
    fn file(
        &self,
        kind: RepoKind,
        repo: &str,
        revision: Option<&str>,
        filename: &str,
    ) -> Result<PathBuf>;

    /// The files of `repo` at `revision` (repository paths, `/`-separated, sorted): asked of the
    /// hub when online, read from the cached snapshot when offline (or when the hub cannot be
    /// reached), in which case only the files downloaded before are listed.
    fn list(&self, kind: RepoKind, repo: &str, revision: Option<&str>) -> Result<Vec<String>>;
}

static HUB: RwLock<Option<Arc<dyn Hub>>> = RwLock::new(None);

/// Make `hub` the one [`current`] returns in this library (or process, for code linked
/// statically), replacing any earlier one. The host calls it for every plugin library it loads;
/// call it yourself in tests or tools that run components in-process.
pub fn install(hub: Arc<dyn Hub>) {
    *HUB.write().unwrap_or_else(|e| e.into_inner()) = Some(hub);
}

/// The installed hub, if any.
pub fn installed() -> Option<Arc<dyn Hub>> {
    HUB.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The installed hub, or an error saying that none was: this library was loaded by a host
/// without hub support, or in-process code did not call [`install`].
pub fn current() -> Result<Arc<dyn Hub>> {
    installed().ok_or_else(|| {
        Error::unsupported(
            "no Hugging Face hub access in this process: the plugin was loaded by a host without \
             hub support (rebuild or update fusion-host), or in-process code did not call \
             fusion_plugin_api::hub::install",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    struct Fixed;

    impl Hub for Fixed {
        fn file(
            &self,
            kind: RepoKind,
            repo: &str,
            revision: Option<&str>,
            filename: &str,
        ) -> Result<PathBuf> {
            Ok(PathBuf::from(format!(
                "{kind}/{repo}/{}/{filename}",
                revision.unwrap_or("main")
            )))
        }
        fn list(&self, _: RepoKind, repo: &str, _: Option<&str>) -> Result<Vec<String>> {
            if repo == "bad/repo" {
                return Err(Error::io("no such repo"));
            }
            Ok(vec!["a.json".into()])
        }
    }

    #[test]
    fn kinds_round_trip_through_their_codes() {
        for kind in [RepoKind::Model, RepoKind::Dataset] {
            assert_eq!(RepoKind::from_code(kind.code()).unwrap(), kind);
        }
        let err = RepoKind::from_code(7).unwrap_err();
        assert!(err.message().contains("kind 7"), "{err}");
    }

    #[test]
    fn install_then_current_and_across_the_abi() {
        // Before installation: a clear error (this test binary installs below).
        if installed().is_none() {
            assert!(current()
                .err()
                .unwrap()
                .message()
                .contains("no Hugging Face hub"));
        }
        install(Arc::new(Fixed));
        let hub = current().unwrap();
        assert_eq!(
            hub.file(RepoKind::Dataset, "o/n", Some("v1"), "x/y.parquet")
                .unwrap(),
            PathBuf::from("dataset/o/n/v1/x/y.parquet")
        );
        // Through the ABI twin and back, as a plugin sees the host's hub.
        let proxy = crate::abi::hub_through_abi(Arc::new(Fixed));
        assert_eq!(
            proxy
                .file(RepoKind::Model, "o/n", None, "config.json")
                .unwrap(),
            PathBuf::from("model/o/n/main/config.json")
        );
        assert_eq!(
            proxy.list(RepoKind::Model, "o/n", None).unwrap(),
            vec!["a.json"]
        );
        let err = proxy.list(RepoKind::Model, "bad/repo", None).unwrap_err();
        assert_eq!(err.kind, crate::ErrorKind::Io);
        assert_eq!(err.message(), "no such repo");
    }

    struct Named(&'static str);

    impl Hub for Named {
        fn file(&self, _: RepoKind, _: &str, _: Option<&str>, _: &str) -> Result<PathBuf> {
            Ok(PathBuf::from(self.0))
        }
        fn list(&self, _: RepoKind, _: &str, _: Option<&str>) -> Result<Vec<String>> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn the_export_a_library_carries_installs_the_hosts_hub() {
        use abi_stable::StableAbi;
        let export = crate::abi::hub_export();
        // What the host checks before calling it.
        abi_stable::abi_stability::abi_checking::check_layout_compatibility(
            export.layout,
            <crate::abi::HubObj as StableAbi>::LAYOUT,
        )
        .unwrap();
        (export.set_hub)(crate::abi::hub_to_obj(Arc::new(Named("from-the-host"))));
        let got = current()
            .unwrap()
            .file(RepoKind::Model, "o/n", None, "f")
            .unwrap();
        // Another test of this binary may install its own hub meanwhile.
        assert!(
            got == Path::new("from-the-host") || got.starts_with("model/"),
            "{got:?}"
        );
    }
}
