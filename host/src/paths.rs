//! Where fusion-host looks for configs and plugins.

use std::path::{Path, PathBuf};

fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.canonicalize().ok())
        .and_then(|p| p.parent().map(Path::to_owned))
}

fn split_env(var: &str) -> Vec<PathBuf> {
    std::env::var_os(var)
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// The built-in config roots: `FUSION_CONFIG_PATH` (colon-separated) when set, else the first
/// `configs/` (or `share/fusion-host/configs/`) found walking up from the executable's folder, so
/// both `target/debug/fusion-host` in a checkout and an installed `bin/fusion-host` find theirs.
pub fn builtin_config_roots() -> Vec<PathBuf> {
    let from_env = split_env("FUSION_CONFIG_PATH");
    if !from_env.is_empty() {
        return from_env;
    }
    let Some(mut dir) = exe_dir() else {
        return Vec::new();
    };
    loop {
        for candidate in [dir.join("configs"), dir.join("share/fusion-host/configs")] {
            if candidate.join("fabric_model_fusion.yaml").is_file() {
                return vec![candidate];
            }
        }
        if !dir.pop() {
            return Vec::new();
        }
    }
}

/// Folders searched for plugin libraries, in precedence order: `--plugin-dir`s,
/// `FUSION_PLUGIN_PATH`, the executable's folder and its `plugins/` subfolder.
pub fn plugin_dirs(cli_dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = cli_dirs.to_vec();
    dirs.extend(split_env("FUSION_PLUGIN_PATH"));
    if let Some(exe) = exe_dir() {
        dirs.push(exe.join("plugins"));
        dirs.insert(dirs.len() - 1, exe);
    }
    dirs
}
