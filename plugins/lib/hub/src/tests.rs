//! The client against the fake hub on 127.0.0.1 (`testing`): downloads, the cache layout, offline
//! mode, pinned revisions, and what bad downloads leave behind.

use std::path::{Path, PathBuf};

use fusion_plugin_api::hub::{Hub, RepoKind};
use fusion_plugin_api::ErrorKind;

use crate::testing::{sha256, FakeHub};
use crate::{HubClient, HubError, HubSettings};

const MODEL: RepoKind = RepoKind::Model;
const DATASET: RepoKind = RepoKind::Dataset;

/// Contents big enough to span several reads.
fn weights(seed: u8) -> Vec<u8> {
    (0..300_000u32)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A server with `org/model` (config.json, model.safetensors) and `org/data` (a parquet file and
/// a README), a cache folder, and a client on both.
struct Setup {
    hub: FakeHub,
    dir: tempfile::TempDir,
    model_commit: String,
}

impl Setup {
    fn new() -> Setup {
        let hub = FakeHub::start();
        let model_commit = hub.add_commit(
            MODEL,
            "org/model",
            &["main"],
            vec![
                ("config.json".into(), b"{\"a\": 1}".to_vec()),
                ("model.safetensors".into(), weights(1)),
            ],
        );
        hub.add_commit(
            DATASET,
            "org/data",
            &["main"],
            vec![
                ("README.md".into(), b"# data".to_vec()),
                ("data/test-00000-of-00001.parquet".into(), weights(2)),
            ],
        );
        Setup {
            hub,
            dir: tempfile::tempdir().unwrap(),
            model_commit,
        }
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("hub")
    }

    fn client(&self, offline: bool) -> HubClient {
        HubClient::new(HubSettings::new(self.cache(), self.hub.endpoint()).with_offline(offline))
    }

    fn repo_dir(&self, name: &str) -> PathBuf {
        self.cache().join(name)
    }
}

/// Every file or link under `dir`, relative, temporary ones included (empty when `dir` does not
/// exist).
fn tree(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = format!("{prefix}{}", e.file_name().to_string_lossy());
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), &format!("{name}/"), out);
            } else {
                out.push(name);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out);
    out.sort();
    out
}

#[test]
fn downloads_once_into_pythons_layout_then_reads_the_cache() {
    let mut s = Setup::new();
    let client = s.client(false);
    let config = client
        .fetch(MODEL, "org/model", None, "config.json")
        .unwrap();
    let weights_path = client
        .fetch(MODEL, "org/model", None, "model.safetensors")
        .unwrap();
    assert_eq!(std::fs::read(&config).unwrap(), b"{\"a\": 1}");
    assert_eq!(std::fs::read(&weights_path).unwrap(), weights(1));
    assert!(s.hub.hits() > 0);

    // Python's layout: blobs named by etag (the sha256 for LFS files), relative links, the ref.
    let repo = s.repo_dir("models--org--model");
    let commit = &s.model_commit;
    assert_eq!(
        weights_path,
        repo.join(format!("snapshots/{commit}/model.safetensors"))
    );
    let sha = sha256(&weights(1));
    #[cfg(unix)]
    assert_eq!(
        std::fs::read_link(&weights_path).unwrap(),
        PathBuf::from(format!("../../blobs/{sha}"))
    );
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        *commit
    );
    let files = tree(&repo);
    assert_eq!(files.len(), 5, "{files:?}");
    assert!(files.contains(&format!("blobs/{sha}")), "{files:?}");
    assert!(
        !files
            .iter()
            .any(|f| f.contains("incomplete") || f.contains(".part")),
        "nothing temporary is left: {files:?}"
    );

    // Again, in this client and in a new one (a new run): no request at all.
    let hits = s.hub.hits();
    assert_eq!(
        client
            .fetch(MODEL, "org/model", None, "config.json")
            .unwrap(),
        config
    );
    assert_eq!(
        s.client(false)
            .fetch(MODEL, "org/model", Some("main"), "model.safetensors")
            .unwrap(),
        weights_path
    );
    assert_eq!(s.hub.hits(), hits);

    // With the server gone: files from the cache, and the listing from the snapshot.
    s.hub.stop();
    let fresh = s.client(false);
    assert_eq!(
        fresh
            .fetch(MODEL, "org/model", None, "config.json")
            .unwrap(),
        config
    );
    assert_eq!(
        fresh.files(MODEL, "org/model", None).unwrap(),
        vec!["config.json", "model.safetensors"]
    );
}

#[test]
fn listings_online_and_offline() {
    let s = Setup::new();
    let client = s.client(false);
    assert_eq!(
        client.files(DATASET, "org/data", None).unwrap(),
        vec!["README.md", "data/test-00000-of-00001.parquet"]
    );
    // Offline, a listing is what the snapshot has.
    let offline = s.client(true);
    let err = offline.files(DATASET, "org/data", None).unwrap_err();
    assert!(matches!(err, HubError::Offline { .. }), "{err}");
    client
        .fetch(
            DATASET,
            "org/data",
            None,
            "data/test-00000-of-00001.parquet",
        )
        .unwrap();
    assert_eq!(
        offline.files(DATASET, "org/data", None).unwrap(),
        vec!["data/test-00000-of-00001.parquet"]
    );
    // Models and datasets of the same name do not mix.
    assert!(s.repo_dir("datasets--org--data").is_dir());
    assert!(!s.repo_dir("models--org--data").exists());
}

#[test]
fn offline_with_a_cold_cache_is_a_clear_error_and_asks_nothing() {
    let s = Setup::new();
    let err = s
        .client(true)
        .fetch(MODEL, "org/model", None, "config.json")
        .unwrap_err();
    let msg = err.to_string();
    for needle in [
        "model `org/model` file `config.json`",
        "not in the Hugging Face cache",
        "models--org--model",
        "offline mode is on (--offline / HF_HUB_OFFLINE)",
    ] {
        assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
    }
    assert_eq!(fusion_plugin_api::Error::from(err).kind, ErrorKind::Io);
    assert_eq!(s.hub.hits(), 0);
}

#[test]
fn a_corrupted_download_is_refused_and_leaves_nothing() {
    let s = Setup::new();
    s.hub.corrupt(MODEL, "org/model", "model.safetensors");
    let client = s.client(false);
    let err = client
        .fetch(MODEL, "org/model", None, "model.safetensors")
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, HubError::Corrupt { .. }), "{msg}");
    assert!(
        msg.contains("`org/model` file `model.safetensors`")
            && msg.contains(&sha256(&weights(1)))
            && msg.contains("nothing was stored"),
        "{msg}"
    );
    let repo = s.repo_dir("models--org--model");
    assert_eq!(
        tree(&repo),
        Vec::<String>::new(),
        "nothing in blobs/ or snapshots/"
    );
    let offline = s.client(true);
    assert!(offline
        .fetch(MODEL, "org/model", None, "model.safetensors")
        .is_err());

    // Served correctly again, it downloads.
    s.hub.heal();
    let path = client
        .fetch(MODEL, "org/model", None, "model.safetensors")
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), weights(1));
}

#[test]
fn a_download_cut_short_or_short_of_its_size_leaves_nothing() {
    let s = Setup::new();
    s.hub
        .cut(DATASET, "org/data", "data/test-00000-of-00001.parquet");
    let client = s.client(false);
    let err = client
        .fetch(
            DATASET,
            "org/data",
            None,
            "data/test-00000-of-00001.parquet",
        )
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, HubError::Transfer { .. }), "{msg}");
    assert!(
        msg.contains("dataset `org/data` file `data/test-00000-of-00001.parquet`")
            && msg.contains("broke off")
            && msg.contains(&s.hub.endpoint()),
        "{msg}"
    );
    assert_eq!(
        tree(&s.repo_dir("datasets--org--data")),
        Vec::<String>::new()
    );

    // Complete bytes, but not as many as announced.
    s.hub.heal();
    s.hub
        .oversize(DATASET, "org/data", "data/test-00000-of-00001.parquet");
    let err = client
        .fetch(
            DATASET,
            "org/data",
            None,
            "data/test-00000-of-00001.parquet",
        )
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, HubError::Corrupt { .. }), "{msg}");
    assert!(
        msg.contains("300000 bytes received, the hub announced 300001"),
        "{msg}"
    );
    assert_eq!(
        tree(&s.repo_dir("datasets--org--data")),
        Vec::<String>::new()
    );

    s.hub.heal();
    let path = client
        .fetch(
            DATASET,
            "org/data",
            None,
            "data/test-00000-of-00001.parquet",
        )
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), weights(2));
}

#[test]
fn not_found_and_unreachable_name_what_and_where() {
    let mut s = Setup::new();
    let client = s.client(false);
    let endpoint = s.hub.endpoint();
    let cases = [
        (MODEL, "org/model", Some("main"), "nope.json"),
        (MODEL, "org/missing", None, "config.json"),
        (MODEL, "org/model", Some("v9"), "config.json"),
        (DATASET, "org/model", None, "config.json"),
    ];
    for (kind, repo, rev, file) in cases {
        let err = client.fetch(kind, repo, rev, file).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, HubError::NotFound { .. }), "{msg}");
        let want = format!(
            "{kind} `{repo}` file `{file}` (revision `{}`)",
            rev.unwrap_or("main")
        );
        assert!(
            msg.contains(&want) && msg.contains(&endpoint) && msg.contains("404"),
            "{msg}"
        );
    }
    let err = client.files(MODEL, "org/missing", None).unwrap_err();
    assert!(matches!(err, HubError::NotFound { .. }), "{err}");

    s.hub.stop();
    let err = s
        .client(false)
        .fetch(MODEL, "org/model", None, "config.json")
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, HubError::Network { .. }), "{msg}");
    assert!(
        msg.contains(&format!("cannot reach the Hugging Face hub at {endpoint}"))
            && msg.contains("`org/model`"),
        "{msg}"
    );
    let err = s.client(false).files(MODEL, "org/model", None).unwrap_err();
    assert!(matches!(err, HubError::Network { .. }), "{err}");
}

#[test]
fn pinned_revisions_by_tag_and_hash() {
    let s = Setup::new();
    let old = s.hub.add_commit(
        MODEL,
        "org/pinned",
        &["v1"],
        vec![("model.safetensors".into(), weights(7))],
    );
    let new = s.hub.add_commit(
        MODEL,
        "org/pinned",
        &["main"],
        vec![("model.safetensors".into(), weights(8))],
    );
    let client = s.client(false);
    let read = |rev: Option<&str>| {
        std::fs::read(
            client
                .fetch(MODEL, "org/pinned", rev, "model.safetensors")
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(read(Some("v1")), weights(7));
    assert_eq!(read(None), weights(8));
    assert_eq!(read(Some(&new)), weights(8));
    let repo = s.repo_dir("models--org--pinned");
    assert_eq!(std::fs::read_to_string(repo.join("refs/v1")).unwrap(), old);
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        new
    );
    assert!(
        !repo.join("refs").join(&new).exists(),
        "no ref is written for a commit hash"
    );
    // Offline: by tag, by hash, by short hash.
    let offline = s.client(true);
    for rev in ["v1", old.as_str(), &old[..10]] {
        let path = offline
            .fetch(MODEL, "org/pinned", Some(rev), "model.safetensors")
            .unwrap();
        assert_eq!(std::fs::read(path).unwrap(), weights(7), "{rev}");
    }
    let err = offline.files(MODEL, "org/pinned", Some("v2")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, HubError::RevisionNotCached { .. }), "{msg}");
    assert!(
        msg.contains("`v2`") && msg.contains("main, v1") && msg.contains(&old),
        "{msg}"
    );
}

#[test]
fn a_run_reads_one_commit_even_when_the_branch_moves() {
    let s = Setup::new();
    let client = s.client(false);
    let first = client.files(MODEL, "org/model", None).unwrap();
    assert!(first.contains(&"model.safetensors".to_string()));
    // The branch moves on the hub after the listing.
    s.hub.add_commit(
        MODEL,
        "org/model",
        &["main"],
        vec![("model.safetensors".into(), weights(9))],
    );
    let path = client
        .fetch(MODEL, "org/model", None, "model.safetensors")
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), weights(1));
    assert!(path.starts_with(
        s.repo_dir("models--org--model")
            .join("snapshots")
            .join(&s.model_commit)
    ));
    // A new run sees the new commit.
    let other = s.client(false);
    other.files(MODEL, "org/model", None).unwrap();
    let path = other
        .fetch(MODEL, "org/model", None, "model.safetensors")
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), weights(9));
}

#[test]
fn a_cache_written_by_python_is_read_without_asking() {
    let s = Setup::new();
    // What `huggingface_hub` leaves: a blob, a relative link, a ref.
    let repo = s.repo_dir("models--org--python");
    let commit = "abcdefabcdefabcdefabcdefabcdefabcdefabcd";
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::write(repo.join("blobs/0123"), b"{}").unwrap();
    std::fs::create_dir_all(repo.join("snapshots").join(commit)).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(
        "../../blobs/0123",
        repo.join("snapshots").join(commit).join("config.json"),
    )
    .unwrap();
    #[cfg(not(unix))]
    std::fs::write(
        repo.join("snapshots").join(commit).join("config.json"),
        b"{}",
    )
    .unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for offline in [false, true] {
        let path = s
            .client(offline)
            .fetch(MODEL, "org/python", None, "config.json")
            .unwrap();
        assert_eq!(std::fs::read(path).unwrap(), b"{}");
    }
    assert_eq!(s.hub.hits(), 0);
}

#[test]
fn concurrent_fetches_of_one_file_agree() {
    let s = Setup::new();
    let client = std::sync::Arc::new(s.client(false));
    let paths: Vec<PathBuf> = (0..4)
        .map(|_| {
            let client = client.clone();
            std::thread::spawn(move || {
                client
                    .fetch(MODEL, "org/model", None, "model.safetensors")
                    .unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert!(paths.iter().all(|p| *p == paths[0]), "{paths:?}");
    assert_eq!(std::fs::read(&paths[0]).unwrap(), weights(1));
    let files = tree(&s.repo_dir("models--org--model"));
    assert!(
        !files.iter().any(|f| f.contains("fusion-")),
        "temporary files were left: {files:?}"
    );
}

#[test]
fn bad_ids_are_config_errors_through_the_plugin_trait() {
    let s = Setup::new();
    let client = s.client(false);
    for (repo, rev, file) in [
        ("a/b/c", None, "x"),
        ("org/model", Some("../x"), "config.json"),
        ("org/model", None, "../../etc/passwd"),
    ] {
        let err = Hub::file(&client, MODEL, repo, rev, file).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Config, "{err}");
        assert!(err.message().contains(repo), "{err}");
    }
    assert_eq!(s.hub.hits(), 0);
}

/// A server on 127.0.0.1 that accepts connections and then answers as `answer` says, holding
/// each connection open afterwards (never closing it). Returns its endpoint.
fn stalling_server(
    answer: impl Fn(&str) -> Option<Vec<u8>> + Send + 'static,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let mut stream = stream;
            if let Some(bytes) = answer(&head) {
                let _ = stream.write_all(&bytes);
                let _ = stream.flush();
            }
            held.push(stream);
        }
    });
    (endpoint, count)
}

#[test]
fn a_server_that_never_answers_times_out_naming_the_url() {
    let (endpoint, connections) = stalling_server(|_| None);
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().to_str().unwrap().to_string();
    let settings = HubSettings::from_vars(
        |name| {
            match name {
                "HF_HOME" => Some(home.clone()),
                "HF_ENDPOINT" => Some(endpoint.clone()),
                "HF_HUB_ETAG_TIMEOUT" => Some("0.2".into()),
                _ => None,
            }
            .map(Into::into)
        },
        false,
    )
    .unwrap();
    let client = HubClient::new(settings);
    // On a thread, so that a hang fails the test instead of blocking it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let fetched = client.fetch(MODEL, "org/model", None, "config.json");
        let listed = client.files(DATASET, "org/data", None);
        let _ = tx.send((fetched, listed));
    });
    let (fetched, listed) = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the hub client hung on a server that never answers");
    let err = fetched.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, HubError::Network { .. }), "{msg}");
    assert!(
        msg.contains(&format!(
            "no answer from {endpoint}/org/model/resolve/main/config.json within 0.2 s (HF_HUB_ETAG_TIMEOUT)"
        )) && msg.contains("tried 3 times"),
        "{msg}"
    );
    let msg = listed.unwrap_err().to_string();
    assert!(
        msg.contains(&format!("{endpoint}/api/datasets/org/data/revision/main")),
        "{msg}"
    );
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 6);
}

#[test]
fn a_download_that_stalls_resumes_then_fails_naming_the_url() {
    let body: Vec<u8> = (0..100u8).collect();
    let answer = move |head: &str| -> Option<Vec<u8>> {
        let head = head.to_ascii_lowercase();
        let start: usize = head
            .split("range: bytes=")
            .nth(1)
            .and_then(|r| r.split('-').next())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let mut out = Vec::new();
        if head.contains("range: bytes=0-0") {
            out.extend_from_slice(
                b"HTTP/1.1 206 Partial Content\r\nx-repo-commit: 0123abcd\r\netag: \"e1\"\r\n\
                  content-range: bytes 0-0/100\r\ncontent-length: 1\r\n\r\n",
            );
            out.push(body[0]);
            return Some(out);
        }
        // 10 bytes of what is asked for, then nothing.
        out.extend_from_slice(
            format!(
                "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes {start}-99/100\r\n\
                 content-length: {}\r\n\r\n",
                100 - start
            )
            .as_bytes(),
        );
        out.extend_from_slice(&body[start..(start + 10).min(100)]);
        Some(out)
    };
    let (endpoint, connections) = stalling_server(answer);
    let dir = tempfile::tempdir().unwrap();
    let settings = HubSettings::new(dir.path().join("hub"), endpoint.clone()).with_timeouts(
        std::time::Duration::from_secs(5),
        std::time::Duration::from_millis(200),
    );
    let client = HubClient::new(settings);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(client.fetch(MODEL, "org/model", None, "weights.bin"));
    });
    let err = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the hub client hung on a download that stalls")
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, HubError::Transfer { .. }), "{msg}");
    // Three tries, each resuming where the last one stopped.
    assert!(
        msg.contains(&format!(
            "no data from {endpoint}/org/model/resolve/0123abcd/weights.bin for 0.2 s (HF_HUB_DOWNLOAD_TIMEOUT) after 30 bytes"
        )),
        "{msg}"
    );
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 4);
    // Nothing half-downloaded stays in the cache.
    assert!(
        !tree(&dir.path().join("hub"))
            .iter()
            .any(|f| f.contains("blobs/e1") || f.contains("snapshots")),
        "{:?}",
        tree(&dir.path().join("hub"))
    );
}
