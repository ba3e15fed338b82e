//! A stand-in for the Hugging Face hub on 127.0.0.1, for tests (feature `testing`).
//!
//! It serves the URL paths and headers the hub uses, as hf-hub and `huggingface_hub` read them:
//!
//! * `GET|HEAD /{repo}/resolve/{revision}/{path}` and `/datasets/{repo}/resolve/...`: regular
//!   files directly (`etag`, `x-repo-commit`, `Content-Length`, `Range` → 206 with
//!   `Content-Range`); LFS files (`.safetensors`, `.parquet`, `.bin`) as the hub does, a 302 to
//!   the storage host (here `/lfs/<sha256>` on the same server) with `x-linked-etag` (the
//!   sha256), `x-linked-size` and `x-repo-commit`;
//! * `GET /api/models/{repo}/revision/{revision}` and `/api/datasets/...`: `sha` and `siblings`;
//! * 404 with the hub's `X-Error-Code` for an unknown repository, revision or file.
//!
//! Every request is counted and logged; files can be served corrupted (same length and headers,
//! altered bytes) or cut short, to test what the client does with a bad download.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use fusion_plugin_api::hub::RepoKind;
use sha2::{Digest, Sha256};

use crate::client::hex;

/// One commit of a served repository.
#[derive(Clone)]
struct Commit {
    hash: String,
    files: BTreeMap<String, Arc<Vec<u8>>>,
}

#[derive(Clone)]
struct ServedRepo {
    kind: RepoKind,
    id: String,
    commits: Vec<Commit>,
    /// Branch or tag name -> commit hash.
    refs: BTreeMap<String, String>,
}

#[derive(Default)]
struct State {
    repos: Mutex<Vec<ServedRepo>>,
    hits: AtomicUsize,
    log: Mutex<Vec<String>>,
    /// sha256 of contents served with one byte changed.
    corrupt: Mutex<HashSet<String>>,
    /// sha256 of contents served cut off halfway (the connection closes early).
    cut: Mutex<HashSet<String>>,
    /// sha256 of contents whose size is announced one byte larger than it is.
    oversize: Mutex<HashSet<String>>,
}

/// A fake hub server; stops when dropped.
pub struct FakeHub {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The sha256 of `bytes`, lowercase hex.
pub fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn is_lfs(path: &str) -> bool {
    [".safetensors", ".parquet", ".bin"]
        .iter()
        .any(|ext| path.ends_with(ext))
}

impl FakeHub {
    /// Starts serving on a free port of 127.0.0.1.
    pub fn start() -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(State::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let state = state.clone();
                    std::thread::spawn(move || {
                        let _ = serve(stream, &state, addr);
                    });
                }
            })
        };
        FakeHub {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>`, for `HF_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a commit to `repo` (created if new) holding `files` (repository path, contents);
    /// each name in `refs` (branches, tags) then points at it. Returns the commit hash.
    pub fn add_commit(
        &self,
        kind: RepoKind,
        repo: &str,
        refs: &[&str],
        files: Vec<(String, Vec<u8>)>,
    ) -> String {
        let mut hasher = Sha256::new();
        hasher.update(format!("{kind}/{repo}").as_bytes());
        for (name, bytes) in &files {
            hasher.update(name.as_bytes());
            hasher.update(Sha256::digest(bytes));
        }
        let hash = hex(&hasher.finalize())[..40].to_string();
        let commit = Commit {
            hash: hash.clone(),
            files: files.into_iter().map(|(n, b)| (n, Arc::new(b))).collect(),
        };
        let mut repos = self.state.repos.lock().unwrap();
        let index = match repos.iter().position(|r| r.kind == kind && r.id == repo) {
            Some(i) => i,
            None => {
                repos.push(ServedRepo {
                    kind,
                    id: repo.to_string(),
                    commits: Vec::new(),
                    refs: BTreeMap::new(),
                });
                repos.len() - 1
            }
        };
        let served = &mut repos[index];
        served.commits.push(commit);
        for r in refs {
            served.refs.insert(r.to_string(), hash.clone());
        }
        hash
    }

    /// Like [`add_commit`](Self::add_commit) with every file under `dir` (paths relative to it).
    pub fn add_folder(&self, kind: RepoKind, repo: &str, refs: &[&str], dir: &Path) -> String {
        fn walk(dir: &Path, prefix: &str, out: &mut Vec<(String, Vec<u8>)>) {
            let mut entries: Vec<_> = std::fs::read_dir(dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .flatten()
                .collect();
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let name = format!("{prefix}{}", e.file_name().to_string_lossy());
                if e.path().is_dir() {
                    walk(&e.path(), &format!("{name}/"), out);
                } else {
                    out.push((name, std::fs::read(e.path()).expect("read fixture")));
                }
            }
        }
        let mut files = Vec::new();
        walk(dir, "", &mut files);
        self.add_commit(kind, repo, refs, files)
    }

    fn contents_of(&self, kind: RepoKind, repo: &str, filename: &str) -> String {
        let repos = self.state.repos.lock().unwrap();
        let served = repos
            .iter()
            .find(|r| r.kind == kind && r.id == repo)
            .unwrap_or_else(|| panic!("no served repo {repo}"));
        let bytes = served
            .commits
            .iter()
            .rev()
            .find_map(|c| c.files.get(filename))
            .unwrap_or_else(|| panic!("{repo} serves no {filename}"));
        sha256(bytes)
    }

    /// From now on, serve `filename` of `repo` (its latest commit's contents, wherever they
    /// appear) with one byte changed: same length, same headers.
    pub fn corrupt(&self, kind: RepoKind, repo: &str, filename: &str) {
        let sha = self.contents_of(kind, repo, filename);
        self.state.corrupt.lock().unwrap().insert(sha);
    }

    /// From now on, serve `filename` of `repo` cut off halfway (the connection closes early).
    pub fn cut(&self, kind: RepoKind, repo: &str, filename: &str) {
        let sha = self.contents_of(kind, repo, filename);
        self.state.cut.lock().unwrap().insert(sha);
    }

    /// From now on, announce the size of `filename` of `repo` one byte larger than it is
    /// (`Content-Range` of ranged replies).
    pub fn oversize(&self, kind: RepoKind, repo: &str, filename: &str) {
        let sha = self.contents_of(kind, repo, filename);
        self.state.oversize.lock().unwrap().insert(sha);
    }

    /// Serve every file correctly again.
    pub fn heal(&self) {
        self.state.corrupt.lock().unwrap().clear();
        self.state.cut.lock().unwrap().clear();
        self.state.oversize.lock().unwrap().clear();
    }

    /// The number of requests served so far.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Every request so far, as `METHOD /path`.
    pub fn requests(&self) -> Vec<String> {
        self.state.log.lock().unwrap().clone()
    }

    /// Stops serving: connections are refused from now on.
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop.store(true, Ordering::SeqCst);
            // Wake the accept loop.
            let _ = TcpStream::connect(self.addr);
            let _ = thread.join();
        }
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop();
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Request {
    method: String,
    path: String,
    range: Option<String>,
}

fn read_request(stream: &TcpStream) -> std::io::Result<Option<Request>> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return Ok(None);
    };
    let mut range = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
        }
    }
    Ok(Some(Request {
        method: method.to_string(),
        path: path.split('?').next().unwrap_or("").to_string(),
        range,
    }))
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send only this many body bytes (after announcing all of them), then close.
    cut_at: Option<usize>,
}

impl Response {
    fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            cut_at: None,
        }
    }
    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }
    fn not_found(code: &str, message: &str) -> Self {
        let mut r = Response::new(404).header("X-Error-Code", code);
        r.body = format!("{{\"error\":\"{message}\"}}").into_bytes();
        r.header("Content-Type", "application/json")
    }
}

fn serve(mut stream: TcpStream, state: &State, addr: SocketAddr) -> std::io::Result<()> {
    let Some(request) = read_request(&stream)? else {
        return Ok(());
    };
    state.hits.fetch_add(1, Ordering::SeqCst);
    state
        .log
        .lock()
        .unwrap()
        .push(format!("{} {}", request.method, request.path));
    let response = respond(&request, state, addr);
    let reason = match response.status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Error",
    };
    let mut head = format!("HTTP/1.1 {} {reason}\r\n", response.status);
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        response.body.len()
    ));
    stream.write_all(head.as_bytes())?;
    if request.method != "HEAD" {
        let end = response.cut_at.unwrap_or(response.body.len());
        stream.write_all(&response.body[..end])?;
    }
    stream.flush()
}

/// Finds the commit a revision names (a ref or a full hash).
fn find_commit<'a>(repo: &'a ServedRepo, revision: &str) -> Option<&'a Commit> {
    let hash = repo
        .refs
        .get(revision)
        .map(String::as_str)
        .unwrap_or(revision);
    repo.commits.iter().find(|c| c.hash == hash)
}

fn respond(request: &Request, state: &State, addr: SocketAddr) -> Response {
    if request.method != "GET" && request.method != "HEAD" {
        return Response::new(405);
    }
    let path = request.path.trim_start_matches('/');
    if let Some(sha) = path.strip_prefix("lfs/") {
        return serve_lfs(request, state, sha);
    }
    let repos = state.repos.lock().unwrap().clone();
    // /api/{models,datasets}/{repo}/revision/{revision}
    if let Some(rest) = path.strip_prefix("api/") {
        let (kind, rest) = match rest.split_once('/') {
            Some(("models", rest)) => (RepoKind::Model, rest),
            Some(("datasets", rest)) => (RepoKind::Dataset, rest),
            _ => return Response::not_found("EntryNotFound", "unknown API path"),
        };
        let (repo, revision) = match rest.split_once("/revision/") {
            Some((repo, rev)) => (repo, percent_decode(rev)),
            None => (rest, "main".to_string()),
        };
        let Some(served) = repos.iter().find(|r| r.kind == kind && r.id == repo) else {
            return Response::not_found("RepoNotFound", "Repository not found");
        };
        let Some(commit) = find_commit(served, &revision) else {
            return Response::not_found("RevisionNotFound", "Invalid rev id");
        };
        let siblings: Vec<serde_json::Value> = commit
            .files
            .keys()
            .map(|f| serde_json::json!({ "rfilename": f }))
            .collect();
        let body = serde_json::json!({
            "id": repo,
            "sha": commit.hash,
            "siblings": siblings,
        });
        let mut r = Response::new(200).header("Content-Type", "application/json");
        r.body = body.to_string().into_bytes();
        return r;
    }
    // [datasets/]{repo}/resolve/{revision}/{path}
    let (kind, rest) = match path.strip_prefix("datasets/") {
        Some(rest) => (RepoKind::Dataset, rest),
        None => (RepoKind::Model, path),
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let Some(at) = parts
        .iter()
        .position(|p| *p == "resolve")
        .filter(|i| *i == 1 || *i == 2)
    else {
        return Response::not_found("EntryNotFound", "unknown path");
    };
    if parts.len() < at + 3 {
        return Response::not_found("EntryNotFound", "no file in the path");
    }
    let repo = parts[..at].join("/");
    let revision = percent_decode(parts[at + 1]);
    let filename = percent_decode(&parts[at + 2..].join("/"));
    let Some(served) = repos.iter().find(|r| r.kind == kind && r.id == repo) else {
        return Response::not_found("RepoNotFound", "Repository not found");
    };
    let Some(commit) = find_commit(served, &revision) else {
        return Response::not_found("RevisionNotFound", "Invalid rev id");
    };
    let Some(bytes) = commit.files.get(&filename) else {
        return Response::not_found("EntryNotFound", "Entry not found");
    };
    let sha = sha256(bytes);
    if is_lfs(&filename) {
        return Response::new(302)
            .header("Location", format!("http://{addr}/lfs/{sha}"))
            .header("X-Repo-Commit", commit.hash.clone())
            .header("X-Linked-Etag", format!("\"{sha}\""))
            .header("X-Linked-Size", bytes.len().to_string())
            .header("ETag", format!("\"{}\"", &sha[..40]));
    }
    let r = ranged(request, state, bytes, &sha);
    r.header("X-Repo-Commit", commit.hash.clone())
        // A regular file's etag is its git object id; any 40 hex digits do here.
        .header("ETag", format!("\"{}\"", &sha[24..]))
}

fn serve_lfs(request: &Request, state: &State, sha: &str) -> Response {
    let repos = state.repos.lock().unwrap();
    let found = repos
        .iter()
        .flat_map(|r| r.commits.iter())
        .flat_map(|c| c.files.values())
        .find(|b| sha256(b) == sha)
        .cloned();
    drop(repos);
    match found {
        Some(bytes) => ranged(request, state, &bytes, sha).header("ETag", format!("\"{sha}\"")),
        None => Response::not_found("EntryNotFound", "no such object"),
    }
}

/// The file, whole or the requested range, corrupted or cut when asked.
fn ranged(request: &Request, state: &State, bytes: &[u8], sha: &str) -> Response {
    let mut body = bytes.to_vec();
    if state.corrupt.lock().unwrap().contains(sha) && !body.is_empty() {
        let middle = body.len() / 2;
        body[middle] ^= 0xff;
    }
    let total = body.len();
    let announced = total + usize::from(state.oversize.lock().unwrap().contains(sha));
    let range = request
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .map(|(a, b)| {
            let start: usize = a.trim().parse().unwrap_or(0);
            let end: usize = b
                .trim()
                .parse()
                .map(|e: usize| e.min(total.saturating_sub(1)))
                .unwrap_or(total.saturating_sub(1));
            (start, end)
        });
    let mut response = match range {
        Some((start, _)) if start >= total && total > 0 => {
            return Response::new(416).header("Content-Range", format!("bytes */{announced}"))
        }
        Some((start, end)) if total > 0 => {
            let mut r = Response::new(206)
                .header("Content-Range", format!("bytes {start}-{end}/{announced}"));
            r.body = body[start..=end].to_vec();
            r
        }
        _ => {
            let mut r = Response::new(200);
            r.body = body;
            r
        }
    };
    if state.cut.lock().unwrap().contains(sha) && response.body.len() > 1 {
        response.cut_at = Some(response.body.len() / 2);
    }
    response.header("Accept-Ranges", "bytes")
}
