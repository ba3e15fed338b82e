//! Finding and loading plugin libraries, and looking components up by target name.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fusion_plugin_api::host::{self, Component, ComponentKind, Library, LoadError};
use fusion_plugin_api::hub::Hub;

/// Every plugin library found, and those that were refused.
pub struct Registry {
    pub libraries: Vec<Library>,
    pub refused: Vec<LoadError>,
}

fn is_library(path: &Path) -> bool {
    let ext = std::env::consts::DLL_EXTENSION;
    path.is_file() && path.extension().is_some_and(|e| e == ext)
}

impl Registry {
    /// Load every library in `dirs` (non-recursive), each on its own. A library that fails to
    /// load is recorded (and logged) and the others still load; shared libraries that are not
    /// plugins are skipped.
    pub fn load(dirs: &[PathBuf]) -> Registry {
        let mut seen = HashSet::new();
        let mut libraries = Vec::new();
        let mut refused = Vec::new();
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                tracing::debug!(dir = %dir.display(), "plugin folder not readable; skipped");
                continue;
            };
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_library(p))
                .collect();
            files.sort();
            for file in files {
                let key = file.canonicalize().unwrap_or_else(|_| file.clone());
                if !seen.insert(key) {
                    continue;
                }
                match host::load_library(&file) {
                    Ok(lib) => {
                        tracing::debug!(
                            plugin = %lib.name,
                            file = %file.display(),
                            components = lib.components.len(),
                            "loaded plugin"
                        );
                        libraries.push(lib);
                    }
                    Err(LoadError::NotAPlugin { path }) => {
                        tracing::debug!(file = %path.display(), "not a fusion-host plugin; skipped");
                    }
                    Err(e) => {
                        tracing::warn!("{e}");
                        refused.push(e);
                    }
                }
            }
        }
        Registry { libraries, refused }
    }

    /// Give every library the host's Hugging Face hub. A library built before plugin-api had
    /// hub support still works; only its components cannot reach the hub.
    pub fn connect_hub(&self, hub: &Arc<dyn Hub>) {
        for lib in &self.libraries {
            if !lib.connect_hub(hub) {
                tracing::debug!(
                    plugin = %lib.name,
                    file = %lib.path.display(),
                    "built before hub support: its components cannot reach the Hugging Face hub"
                );
            }
        }
    }

    /// Every component, in load order.
    pub fn components(&self) -> impl Iterator<Item = &Component> {
        self.libraries.iter().flat_map(|l| l.components.iter())
    }

    /// The first component of `kind` answering to `name` (libraries earlier in the search path
    /// win).
    pub fn find(&self, kind: ComponentKind, name: &str) -> Option<&Component> {
        self.components()
            .find(|c| c.kind == kind && c.names.iter().any(|n| n == name))
    }

    /// A component of another kind answering to `name`, for a better error message.
    pub fn find_any_kind(&self, name: &str) -> Option<&Component> {
        self.components()
            .find(|c| c.names.iter().any(|n| n == name))
    }

    /// Known target names of `kind` closest to `name`, best first.
    pub fn closest(&self, kind: ComponentKind, name: &str, n: usize) -> Vec<String> {
        rank(
            name,
            self.components()
                .filter(|c| c.kind == kind)
                .flat_map(|c| c.names.iter().map(String::as_str)),
            n,
        )
    }

    /// The first (short) name of every component of `kind`, in load order.
    pub fn primary_names(&self, kind: ComponentKind) -> Vec<String> {
        self.components()
            .filter(|c| c.kind == kind)
            .filter_map(|c| c.names.first().cloned())
            .collect()
    }
}

/// The `n` candidates closest to `name`, best first.
pub fn rank<'a>(name: &str, candidates: impl Iterator<Item = &'a str>, n: usize) -> Vec<String> {
    let lower = name.to_ascii_lowercase();
    let mut scored: Vec<(f64, String)> = candidates
        .map(|known| {
            let k = known.to_ascii_lowercase();
            let mut score = strsim::jaro_winkler(&lower, &k);
            // `ties` should find `ties_merging`; a class name its full path.
            if k.contains(&lower) || lower.contains(&k) {
                score += 0.5;
            }
            (score, known.to_string())
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(n).map(|(_, s)| s).collect()
}
