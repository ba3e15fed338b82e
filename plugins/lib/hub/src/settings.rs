//! Where the cache is, which endpoint to ask, with which token, and whether to ask at all:
//! resolved from the environment the way Python's `huggingface_hub` does (hf-hub reads none of
//! these variables itself).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::HubError;

/// The hub's default endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// `huggingface_hub`'s default for `HF_HUB_ETAG_TIMEOUT` and `HF_HUB_DOWNLOAD_TIMEOUT`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the hub client needs to know about its environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubSettings {
    /// The hub cache folder (the one holding `models--org--name`, `datasets--org--name`).
    pub cache_dir: PathBuf,
    /// The hub's base URL, without a trailing `/`.
    pub endpoint: String,
    /// The access token sent as `Authorization: Bearer ...`, if any.
    pub token: Option<String>,
    /// Never touch the network: files must already be in the cache.
    pub offline: bool,
    /// How long to wait for a connection or an answer to a metadata request or a listing
    /// (`HF_HUB_ETAG_TIMEOUT`).
    pub etag_timeout: Duration,
    /// How long to wait for a connection or the next bytes of a file's contents
    /// (`HF_HUB_DOWNLOAD_TIMEOUT`).
    pub download_timeout: Duration,
}

impl HubSettings {
    /// Settings for `cache_dir` and `endpoint`, online, without a token.
    pub fn new(cache_dir: impl Into<PathBuf>, endpoint: impl Into<String>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            endpoint: endpoint.into().trim_end_matches('/').to_string(),
            token: None,
            offline: false,
            etag_timeout: DEFAULT_TIMEOUT,
            download_timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same settings with these timeouts (metadata and listings, file contents).
    pub fn with_timeouts(mut self, etag: Duration, download: Duration) -> Self {
        self.etag_timeout = etag;
        self.download_timeout = download;
        self
    }

    /// The same settings, offline or not.
    pub fn with_offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    /// The same settings with a token.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Resolve the settings from the process environment; `offline_flag` is the command line's
    /// `--offline` (offline when either it or `HF_HUB_OFFLINE` says so).
    pub fn from_env(offline_flag: bool) -> Result<Self, HubError> {
        Self::from_vars(|name| std::env::var_os(name), offline_flag)
    }

    /// Resolve the settings from variables looked up by `var` (empty values count as unset):
    ///
    /// * `HF_HOME`: default `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`;
    /// * the cache: `HF_HUB_CACHE`, else the legacy `HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub`;
    /// * `HF_ENDPOINT`: default `https://huggingface.co`;
    /// * the token: `HF_TOKEN`, else the legacy `HUGGING_FACE_HUB_TOKEN`, else the file
    ///   `HF_TOKEN_PATH` (default `$HF_HOME/token`, where `huggingface-cli login` writes it);
    /// * offline: `HF_HUB_OFFLINE` set to `1`, `true`, `yes` or `on` (any case), or `offline_flag`;
    /// * timeouts in seconds: `HF_HUB_ETAG_TIMEOUT` (metadata, listings) and
    ///   `HF_HUB_DOWNLOAD_TIMEOUT` (file contents), 10 each by default.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<OsString>,
        offline_flag: bool,
    ) -> Result<Self, HubError> {
        let get = |name: &str| var(name).filter(|v| !v.is_empty());
        let path = |name: &str| get(name).map(|v| expand_home(PathBuf::from(v), &get));
        let home =
            match path("HF_HOME") {
                Some(home) => home,
                None => match path("XDG_CACHE_HOME") {
                    Some(xdg) => xdg.join("huggingface"),
                    None => match get("HOME").or_else(|| get("USERPROFILE")) {
                        Some(h) => PathBuf::from(h).join(".cache").join("huggingface"),
                        None => return Err(HubError::Settings(
                            "cannot find the Hugging Face cache: none of HF_HOME, HF_HUB_CACHE, \
                             XDG_CACHE_HOME or HOME is set"
                                .into(),
                        )),
                    },
                },
            };
        let cache_dir = path("HF_HUB_CACHE")
            .or_else(|| path("HUGGINGFACE_HUB_CACHE"))
            .unwrap_or_else(|| home.join("hub"));

        let endpoint = match get("HF_ENDPOINT") {
            None => DEFAULT_ENDPOINT.to_string(),
            Some(v) => {
                let text = v.to_string_lossy().trim().trim_end_matches('/').to_string();
                let valid = ["http://", "https://"]
                    .iter()
                    .any(|scheme| text.len() > scheme.len() && text.starts_with(scheme))
                    && !text.contains(char::is_whitespace);
                if !valid {
                    return Err(HubError::Settings(format!(
                        "HF_ENDPOINT `{}` is not an http(s) URL (e.g. {DEFAULT_ENDPOINT})",
                        v.to_string_lossy()
                    )));
                }
                text
            }
        };

        let token = match get("HF_TOKEN").or_else(|| get("HUGGING_FACE_HUB_TOKEN")) {
            Some(t) => Some(t.to_string_lossy().trim().to_string()),
            None => {
                let file = path("HF_TOKEN_PATH").unwrap_or_else(|| home.join("token"));
                match std::fs::read_to_string(&file) {
                    Ok(text) => Some(text.trim().to_string()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => {
                        return Err(HubError::Settings(format!(
                            "cannot read the Hugging Face token file {}: {e}",
                            file.display()
                        )))
                    }
                }
            }
        }
        .filter(|t| !t.is_empty());

        let offline_env = get("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(
                v.to_string_lossy().trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        });

        let timeout = |name: &str| -> Result<Duration, HubError> {
            let Some(v) = get(name) else {
                return Ok(DEFAULT_TIMEOUT);
            };
            let text = v.to_string_lossy().trim().to_string();
            text.parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| {
                    HubError::Settings(format!(
                        "{name} `{text}` is not a positive number of seconds (default {})",
                        DEFAULT_TIMEOUT.as_secs()
                    ))
                })
        };

        Ok(Self {
            cache_dir,
            endpoint,
            token,
            offline: offline_flag || offline_env,
            etag_timeout: timeout("HF_HUB_ETAG_TIMEOUT")?,
            download_timeout: timeout("HF_HUB_DOWNLOAD_TIMEOUT")?,
        })
    }
}

/// `~` or `~/...` to the home folder, as Python's `os.path.expanduser` does for these variables.
fn expand_home(path: PathBuf, get: &impl Fn(&str) -> Option<OsString>) -> PathBuf {
    let Ok(rest) = path.strip_prefix("~") else {
        return path;
    };
    match get("HOME").or_else(|| get("USERPROFILE")) {
        Some(home) => PathBuf::from(home).join(rest),
        None => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)], flag: bool) -> Result<HubSettings, HubError> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        HubSettings::from_vars(|name| map.get(name).cloned(), flag)
    }

    #[test]
    fn defaults_follow_python() {
        let s = settings(&[("HOME", "/home/u")], false).unwrap();
        assert_eq!(s.cache_dir, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert_eq!(s.endpoint, "https://huggingface.co");
        assert_eq!(s.token, None);
        assert!(!s.offline);
        let s = settings(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/xdg")], false).unwrap();
        assert_eq!(s.cache_dir, PathBuf::from("/xdg/huggingface/hub"));
    }

    #[test]
    fn hf_home_then_hub_cache_override() {
        let s = settings(&[("HOME", "/h"), ("HF_HOME", "/hf")], false).unwrap();
        assert_eq!(s.cache_dir, PathBuf::from("/hf/hub"));
        let s = settings(
            &[
                ("HF_HOME", "/hf"),
                ("HUGGINGFACE_HUB_CACHE", "/legacy"),
                ("HF_HUB_CACHE", "/cache"),
            ],
            false,
        )
        .unwrap();
        assert_eq!(s.cache_dir, PathBuf::from("/cache"));
        let s = settings(
            &[("HF_HOME", "/hf"), ("HUGGINGFACE_HUB_CACHE", "/legacy")],
            false,
        )
        .unwrap();
        assert_eq!(s.cache_dir, PathBuf::from("/legacy"));
        // Empty counts as unset; `~` is the home folder.
        let s = settings(
            &[("HOME", "/h"), ("HF_HOME", "~/hf"), ("HF_HUB_CACHE", "")],
            false,
        )
        .unwrap();
        assert_eq!(s.cache_dir, PathBuf::from("/h/hf/hub"));
        let err = settings(&[], false).unwrap_err().to_string();
        assert!(err.contains("HF_HOME") && err.contains("HOME"), "{err}");
    }

    #[test]
    fn endpoint_is_checked_and_trimmed() {
        let s = settings(
            &[
                ("HF_HOME", "/hf"),
                ("HF_ENDPOINT", "http://127.0.0.1:8080/"),
            ],
            false,
        )
        .unwrap();
        assert_eq!(s.endpoint, "http://127.0.0.1:8080");
        for bad in ["127.0.0.1:8080", "ftp://x", "https://", "http://a b"] {
            let err = settings(&[("HF_HOME", "/hf"), ("HF_ENDPOINT", bad)], false)
                .unwrap_err()
                .to_string();
            assert!(err.contains("HF_ENDPOINT") && err.contains(bad), "{err}");
        }
    }

    #[test]
    fn token_from_variable_then_file() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path().to_str().unwrap();
        let s = settings(&[("HF_HOME", h)], false).unwrap();
        assert_eq!(s.token, None);
        std::fs::write(home.path().join("token"), "hf_file\n").unwrap();
        let s = settings(&[("HF_HOME", h)], false).unwrap();
        assert_eq!(s.token.as_deref(), Some("hf_file"));
        let s = settings(&[("HF_HOME", h), ("HF_TOKEN", "hf_env")], false).unwrap();
        assert_eq!(s.token.as_deref(), Some("hf_env"));
        let other = home.path().join("other-token");
        std::fs::write(&other, "hf_other").unwrap();
        let s = settings(
            &[("HF_HOME", h), ("HF_TOKEN_PATH", other.to_str().unwrap())],
            false,
        )
        .unwrap();
        assert_eq!(s.token.as_deref(), Some("hf_other"));
    }

    #[test]
    fn timeouts_from_variables() {
        let s = settings(&[("HF_HOME", "/hf")], false).unwrap();
        assert_eq!(s.etag_timeout, Duration::from_secs(10));
        assert_eq!(s.download_timeout, Duration::from_secs(10));
        let s = settings(
            &[
                ("HF_HOME", "/hf"),
                ("HF_HUB_ETAG_TIMEOUT", "0.25"),
                ("HF_HUB_DOWNLOAD_TIMEOUT", "60"),
            ],
            false,
        )
        .unwrap();
        assert_eq!(s.etag_timeout, Duration::from_millis(250));
        assert_eq!(s.download_timeout, Duration::from_secs(60));
        for bad in ["0", "-1", "ten", "inf"] {
            let err = settings(
                &[("HF_HOME", "/hf"), ("HF_HUB_DOWNLOAD_TIMEOUT", bad)],
                false,
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("HF_HUB_DOWNLOAD_TIMEOUT") && err.contains(bad),
                "{err}"
            );
        }
    }

    #[test]
    fn offline_from_flag_or_variable() {
        assert!(settings(&[("HF_HOME", "/hf")], true).unwrap().offline);
        for on in ["1", "true", "TRUE", "yes", "On"] {
            let s = settings(&[("HF_HOME", "/hf"), ("HF_HUB_OFFLINE", on)], false).unwrap();
            assert!(s.offline, "{on}");
        }
        for off in ["0", "false", "no", ""] {
            let s = settings(&[("HF_HOME", "/hf"), ("HF_HUB_OFFLINE", off)], false).unwrap();
            assert!(!s.offline, "{off}");
        }
    }
}
