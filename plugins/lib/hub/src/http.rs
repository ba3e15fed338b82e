//! The hub's HTTP requests, with the timeouts and retries of Python's `huggingface_hub`: every
//! request has a connect timeout and a read timeout (no byte for that long), from
//! `HF_HUB_ETAG_TIMEOUT` for metadata and listings and `HF_HUB_DOWNLOAD_TIMEOUT` for file
//! contents (10 s each by default); a request that times out, loses its connection or gets a
//! 429 or 5xx answer is tried again, [`ATTEMPTS`] times in all with a growing pause, and then
//! fails with an error that names the URL. A download that breaks off resumes where it
//! stopped.
//!
//! The requests are those hf-hub 0.5 makes (and Python's), done here because hf-hub builds its
//! own HTTP agents with no timeout at all, so a server that accepts a connection and never
//! answers hung the run forever:
//!
//! * metadata: `GET <url>` with `Range: bytes=0-0`, relative redirects followed, reading the
//!   commit (`x-repo-commit`) and the etag (`x-linked-etag`, else `etag`); an absolute redirect
//!   (LFS files go to a storage host) is followed for the size (the total of `Content-Range`);
//! * a listing: `GET /api/{models,datasets}/<repo>/revision/<revision>` (JSON: `sha`,
//!   `siblings[].rfilename`);
//! * contents: `GET <url>` with `Range: bytes=<offset>-`, redirects followed, written to a file.

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use fusion_plugin_api::hub::RepoKind;
use ureq::http::Response;
use ureq::{Agent, Body};

use crate::HubSettings;

/// Tries per request (the first one and the retries).
pub(crate) const ATTEMPTS: u32 = 3;
/// The pause after the first failed try; doubled after each further one.
const FIRST_PAUSE: Duration = Duration::from_millis(500);
/// The largest listing read (a repository with very many files).
const LISTING_LIMIT: u64 = 256 << 20;

/// What went wrong with a request.
#[derive(Debug)]
pub(crate) enum HttpError {
    /// The server answered with this status.
    Status { status: u16 },
    /// No connection, or no answer in time, after every try. `message` names the URL.
    Unreachable { message: String },
    /// The answer started but broke off (after every try).
    BrokeOff { message: String },
    /// The answer is not what the hub sends.
    Protocol { message: String },
    /// Writing the downloaded bytes failed.
    Local(std::io::Error),
}

/// A file's metadata as the hub announces it.
pub(crate) struct Metadata {
    pub commit: String,
    pub etag: String,
    pub size: u64,
}

/// The hub's HTTP client.
pub(crate) struct Http {
    endpoint: String,
    token: Option<String>,
    /// Metadata and listings: follows no redirect (the caller decides).
    meta_once: Agent,
    /// Metadata after an absolute redirect, and listings.
    meta: Agent,
    /// File contents.
    data: Agent,
    etag_timeout: Duration,
    download_timeout: Duration,
}

fn agent(timeout: Duration, redirects: u32) -> Agent {
    Agent::config_builder()
        .timeout_connect(Some(timeout))
        .timeout_recv_response(Some(timeout))
        .timeout_per_read(Some(timeout))
        .max_redirects(redirects)
        .user_agent(format!("fusion-host/{}", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// `repo` as it appears in the hub's URLs.
fn repo_path(kind: RepoKind, repo: &str) -> String {
    match kind {
        RepoKind::Dataset => format!("datasets/{repo}"),
        _ => repo.to_string(),
    }
}

/// A revision in a URL (`refs/convert/parquet` -> `refs%2Fconvert%2Fparquet`).
fn url_revision(revision: &str) -> String {
    revision.replace('/', "%2F")
}

fn header(response: &Response<Body>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

impl Http {
    pub(crate) fn new(settings: &HubSettings) -> Http {
        Http {
            endpoint: settings.endpoint.clone(),
            token: settings.token.clone(),
            meta_once: agent(settings.etag_timeout, 0),
            meta: agent(settings.etag_timeout, 10),
            data: agent(settings.download_timeout, 10),
            etag_timeout: settings.etag_timeout,
            download_timeout: settings.download_timeout,
        }
    }

    /// The URL of `filename` in `repo` at `revision`.
    pub(crate) fn file_url(
        &self,
        kind: RepoKind,
        repo: &str,
        revision: &str,
        filename: &str,
    ) -> String {
        format!(
            "{}/{}/resolve/{}/{filename}",
            self.endpoint,
            repo_path(kind, repo),
            url_revision(revision)
        )
    }

    /// `GET url` on `agent`, with the token where the URL is the hub's own, tried again on
    /// transient failures. `range` is sent as `Range: bytes=<range>`.
    fn get(
        &self,
        agent: &Agent,
        url: &str,
        range: Option<&str>,
        timeout_var: &str,
    ) -> Result<Response<Body>, HttpError> {
        retry(url, timeout_var, self.timeout_of(timeout_var), || {
            let mut request = agent.get(url);
            if let Some(range) = range {
                request = request.header("Range", format!("bytes={range}"));
            }
            if let Some(token) = self.token.as_deref().filter(|_| self.is_hub(url)) {
                request = request.header("Authorization", format!("Bearer {token}"));
            }
            request.call()
        })
    }

    fn timeout_of(&self, var: &str) -> Duration {
        if var == DOWNLOAD_VAR {
            self.download_timeout
        } else {
            self.etag_timeout
        }
    }

    /// Whether `url` is on the hub's own host (the token goes there only, as Python sends it).
    fn is_hub(&self, url: &str) -> bool {
        url.strip_prefix(&self.endpoint)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// The commit and files of `repo` at `revision`.
    pub(crate) fn listing(
        &self,
        kind: RepoKind,
        repo: &str,
        revision: &str,
    ) -> Result<(String, Vec<String>), HttpError> {
        let plural = match kind {
            RepoKind::Dataset => "datasets",
            _ => "models",
        };
        let url = format!(
            "{}/api/{plural}/{repo}/revision/{}",
            self.endpoint,
            url_revision(revision)
        );
        let mut response = self.get(&self.meta, &url, None, ETAG_VAR)?;
        let text = response
            .body_mut()
            .with_config()
            .limit(LISTING_LIMIT)
            .read_to_string()
            .map_err(|e| HttpError::BrokeOff {
                message: format!("reading {url}: {e}"),
            })?;
        let protocol = |what: &str| HttpError::Protocol {
            message: format!("{url}: {what}"),
        };
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| protocol(&format!("not JSON ({e})")))?;
        let sha = json
            .get("sha")
            .and_then(|v| v.as_str())
            .ok_or_else(|| protocol("no `sha` in the answer"))?
            .to_string();
        let files = json
            .get("siblings")
            .and_then(|v| v.as_array())
            .ok_or_else(|| protocol("no `siblings` in the answer"))?
            .iter()
            .map(|s| {
                s.get("rfilename")
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
                    .ok_or_else(|| protocol("a sibling without `rfilename`"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((sha, files))
    }

    /// The commit, etag and size of the file at `url`.
    pub(crate) fn metadata(&self, url: &str) -> Result<Metadata, HttpError> {
        let protocol = |what: String| HttpError::Protocol {
            message: format!("{url}: {what}"),
        };
        let mut current = url.to_string();
        let mut response = self.get(&self.meta_once, &current, Some("0-0"), ETAG_VAR)?;
        // Relative redirects (a renamed repository) stay on the hub.
        for _ in 0..10 {
            if !response.status().is_redirection() {
                break;
            }
            let Some(location) = header(&response, "location") else {
                break;
            };
            if !location.starts_with('/') {
                break;
            }
            let origin_end = current
                .find("://")
                .and_then(|s| current[s + 3..].find('/').map(|p| s + 3 + p))
                .unwrap_or(current.len());
            current = format!("{}{location}", &current[..origin_end]);
            response = self.get(&self.meta_once, &current, Some("0-0"), ETAG_VAR)?;
        }
        let etag = header(&response, "x-linked-etag")
            .or_else(|| header(&response, "etag"))
            .ok_or_else(|| protocol("no `etag` header".into()))?
            .replace('"', "");
        let commit = header(&response, "x-repo-commit")
            .ok_or_else(|| protocol("no `x-repo-commit` header".into()))?;
        if response.status().is_redirection() {
            let location = header(&response, "location")
                .ok_or_else(|| protocol("a redirect without `location`".into()))?;
            response = self.get(&self.meta, &location, Some("0-0"), ETAG_VAR)?;
        }
        let range = header(&response, "content-range")
            .ok_or_else(|| protocol("no `content-range` header".into()))?;
        let size = range
            .rsplit('/')
            .next()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| protocol(format!("cannot read the size in `content-range: {range}`")))?;
        Ok(Metadata { commit, etag, size })
    }

    /// Download `url` into `file` (from its start), calling `progress` with the bytes written
    /// so far. A transfer that breaks off or stalls resumes where it stopped, [`ATTEMPTS`]
    /// times in all. The size is checked by the caller.
    pub(crate) fn download(
        &self,
        url: &str,
        file: &mut std::fs::File,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), HttpError> {
        let mut written = 0u64;
        let mut failures = 0u32;
        loop {
            let range = format!("{written}-");
            let response = self.get(&self.data, url, Some(&range), DOWNLOAD_VAR)?;
            if written > 0 && response.status().as_u16() != 206 {
                // The server ignored the range: start over.
                written = 0;
                file.set_len(0).map_err(HttpError::Local)?;
            }
            file.seek(SeekFrom::Start(written))
                .map_err(HttpError::Local)?;
            let mut reader = response.into_body().into_reader();
            let mut buf = vec![0u8; 1 << 16];
            let broke = loop {
                match reader.read(&mut buf) {
                    Ok(0) => break None,
                    Ok(n) => {
                        file.write_all(&buf[..n]).map_err(HttpError::Local)?;
                        written += n as u64;
                        progress(written);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break Some(e),
                }
            };
            let Some(e) = broke else {
                return Ok(());
            };
            failures += 1;
            let message = if timed_out(&e) {
                format!(
                    "no data from {url} for {} ({DOWNLOAD_VAR}) after {written} bytes",
                    seconds(self.download_timeout)
                )
            } else {
                format!("reading {url} after {written} bytes: {e}")
            };
            if failures >= ATTEMPTS {
                return Err(HttpError::BrokeOff {
                    message: format!("{message}; tried {ATTEMPTS} times"),
                });
            }
            tracing::warn!("{message}; resuming (try {} of {ATTEMPTS})", failures + 1);
            std::thread::sleep(FIRST_PAUSE * 2u32.pow(failures - 1));
        }
    }
}

pub(crate) const ETAG_VAR: &str = "HF_HUB_ETAG_TIMEOUT";
pub(crate) const DOWNLOAD_VAR: &str = "HF_HUB_DOWNLOAD_TIMEOUT";

/// Whether a read error is a timeout (ureq reports its own timeouts wrapped in an I/O error).
fn timed_out(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::TimedOut
        || e.get_ref()
            .and_then(|inner| inner.downcast_ref::<ureq::Error>())
            .is_some_and(|inner| match inner {
                ureq::Error::Timeout(_) => true,
                ureq::Error::Io(io) => io.kind() == std::io::ErrorKind::TimedOut,
                _ => false,
            })
}

fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// Run `call` until it succeeds, fails for good, or has failed [`ATTEMPTS`] times on
/// transient errors (no connection, a timeout, 429 or 5xx).
fn retry(
    url: &str,
    timeout_var: &str,
    timeout: Duration,
    mut call: impl FnMut() -> Result<Response<Body>, ureq::Error>,
) -> Result<Response<Body>, HttpError> {
    let mut tries = 0u32;
    loop {
        tries += 1;
        let error = match call() {
            Ok(response) => return Ok(response),
            Err(e) => e,
        };
        let (transient, final_error) = match &error {
            ureq::Error::StatusCode(status) => (
                matches!(status, 429 | 500 | 502 | 503 | 504),
                HttpError::Status { status: *status },
            ),
            ureq::Error::Timeout(_) => (
                true,
                HttpError::Unreachable {
                    message: format!(
                        "no answer from {url} within {} ({timeout_var})",
                        seconds(timeout)
                    ),
                },
            ),
            ureq::Error::Io(e) if timed_out(e) => (
                true,
                HttpError::Unreachable {
                    message: format!(
                        "no answer from {url} within {} ({timeout_var})",
                        seconds(timeout)
                    ),
                },
            ),
            ureq::Error::Io(_) | ureq::Error::ConnectionFailed => (
                true,
                HttpError::Unreachable {
                    message: format!("{url}: {error}"),
                },
            ),
            ureq::Error::HostNotFound
            | ureq::Error::Tls(_)
            | ureq::Error::ConnectProxyFailed(_) => (
                false,
                HttpError::Unreachable {
                    message: format!("{url}: {error}"),
                },
            ),
            other => (
                false,
                HttpError::Protocol {
                    message: format!("{url}: {other}"),
                },
            ),
        };
        if !transient {
            return Err(final_error);
        }
        if tries >= ATTEMPTS {
            return Err(match final_error {
                HttpError::Unreachable { message } => HttpError::Unreachable {
                    message: format!("{message}; tried {ATTEMPTS} times"),
                },
                other => other,
            });
        }
        tracing::warn!(
            "{url}: {error}; trying again (try {} of {ATTEMPTS})",
            tries + 1
        );
        std::thread::sleep(FIRST_PAUSE * 2u32.pow(tries - 1));
    }
}
