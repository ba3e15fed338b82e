//! Hub ids resolved through the host's hub (fusion-hub, in-process): offline in a fake Hugging
//! Face cache laid out as `huggingface_hub` writes it (`datasets--org--name/{blobs,refs,snapshots}`,
//! snapshot files symlinked to blobs), and online against the fake hub server.

mod common;

use std::path::{Path, PathBuf};

use common::{data, marker};
use fusion_datasets::{open_with_hub, DatasetError, DatasetSpec, ImageDataset};
use fusion_hub::testing::FakeHub;
use fusion_hub::{HubClient, HubSettings};
use fusion_plugin_api::hub::RepoKind;

const MAIN: &str = "1111111111111111111111111111111111111111";
const OLD: &str = "2222222222222222222222222222222222222222";
const CONVERT: &str = "3333333333333333333333333333333333333333";

/// Puts `files` (repo path, fixture path) into snapshot `commit` of `repo_dir`, as blobs plus
/// relative symlinks (plain copies where symlinks are unavailable).
fn add_snapshot(repo_dir: &Path, commit: &str, files: &[(&str, PathBuf)]) {
    let blobs = repo_dir.join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    for (i, (rel, fixture)) in files.iter().enumerate() {
        let blob = blobs.join(format!("{commit}-{i}"));
        std::fs::copy(fixture, &blob).unwrap();
        let target = repo_dir.join("snapshots").join(commit).join(rel);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        #[cfg(unix)]
        {
            let depth = rel.split('/').count() + 1; // snapshots/<commit>/<rel...>
            let up = "../".repeat(depth);
            std::os::unix::fs::symlink(format!("{up}blobs/{commit}-{i}"), &target).unwrap();
        }
        #[cfg(not(unix))]
        std::fs::copy(&blob, &target).unwrap();
    }
}

fn set_ref(repo_dir: &Path, name: &str, commit: &str) {
    let path = repo_dir.join("refs").join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, commit).unwrap();
}

/// A cache with `tanganke/fixture_corrupted`: `main` (test, train, gaussian_noise), an older
/// commit with only `test` = the gaussian_noise rows, and a `refs/convert/parquet` branch.
fn fake_cache() -> tempfile::TempDir {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("datasets--tanganke--fixture_corrupted");
    add_snapshot(
        &repo,
        MAIN,
        &[
            ("README.md", data("hf_parquet/README.md")),
            (
                "data/test-00000-of-00001.parquet",
                data("hf_parquet/data/test-00000-of-00001.parquet"),
            ),
            (
                "data/train-00000-of-00002.parquet",
                data("hf_parquet/data/train-00000-of-00002.parquet"),
            ),
            (
                "data/train-00001-of-00002.parquet",
                data("hf_parquet/data/train-00001-of-00002.parquet"),
            ),
            (
                "data/gaussian_noise-00000-of-00001.parquet",
                data("hf_parquet/data/gaussian_noise-00000-of-00001.parquet"),
            ),
        ],
    );
    add_snapshot(
        &repo,
        OLD,
        &[(
            "data/test-00000-of-00001.parquet",
            data("hf_parquet/data/gaussian_noise-00000-of-00001.parquet"),
        )],
    );
    add_snapshot(
        &repo,
        CONVERT,
        &[
            (
                "default/test/0000.parquet",
                data("hf_convert/cropped_digits/test/0000.parquet"),
            ),
            (
                "default/test/0001.parquet",
                data("hf_convert/cropped_digits/test/0001.parquet"),
            ),
        ],
    );
    set_ref(&repo, "main", &format!("{MAIN}\n"));
    set_ref(&repo, "v1.0", OLD);
    set_ref(&repo, "refs/convert/parquet", CONVERT);
    // A second, legacy id without organisation.
    add_snapshot(
        &cache.path().join("datasets--fixture"),
        MAIN,
        &[(
            "data/test-00000-of-00001.parquet",
            data("hf_parquet/data/test-00000-of-00001.parquet"),
        )],
    );
    set_ref(&cache.path().join("datasets--fixture"), "main", MAIN);
    cache
}

/// Opens `spec` offline in the cache folder `cache`.
fn open_with_hub_cache(
    spec: &DatasetSpec,
    cache: &Path,
) -> Result<Box<dyn ImageDataset>, DatasetError> {
    // Offline: the endpoint is never asked.
    let settings = HubSettings::new(cache, "http://127.0.0.1:9").with_offline(true);
    open_with_hub(spec, &HubClient::new(settings))
}

fn markers(cache: &Path, source: &str, split: &str) -> Vec<u8> {
    let spec = DatasetSpec::new(source).with_split(split);
    let ds = open_with_hub_cache(&spec, cache).unwrap();
    (0..ds.len())
        .map(|i| marker(&ds.get(i).unwrap().image).0)
        .collect()
}

#[test]
fn resolves_main_and_named_splits() {
    let cache = fake_cache();
    let c = cache.path();
    assert_eq!(
        markers(c, "tanganke/fixture_corrupted", "test"),
        vec![0, 1, 2, 3, 4]
    );
    assert_eq!(
        markers(c, "tanganke/fixture_corrupted", "train"),
        (10..17).collect::<Vec<_>>()
    );
    assert_eq!(
        markers(c, "tanganke/fixture_corrupted", "gaussian_noise"),
        vec![20, 21, 22]
    );
    assert_eq!(
        markers(c, "hf://datasets/tanganke/fixture_corrupted", "test").len(),
        5
    );
    assert_eq!(markers(c, "fixture", "test").len(), 5);
    let spec = DatasetSpec::new("tanganke/fixture_corrupted");
    let d = open_with_hub_cache(&spec, c).unwrap().describe();
    assert!(
        d.contains("tanganke/fixture_corrupted") && d.contains(MAIN),
        "{d}"
    );
}

#[test]
fn pinned_revisions() {
    let cache = fake_cache();
    let c = cache.path();
    let repo = "tanganke/fixture_corrupted";
    // By tag, by full hash, by short hash: the old commit's test split.
    assert_eq!(
        markers(c, &format!("{repo}@v1.0"), "test"),
        vec![20, 21, 22]
    );
    assert_eq!(
        markers(c, &format!("{repo}@{OLD}"), "test"),
        vec![20, 21, 22]
    );
    assert_eq!(
        markers(c, &format!("{repo}@{}", &OLD[..8]), "test"),
        vec![20, 21, 22]
    );
    assert_eq!(
        markers(c, &format!("{repo}@main"), "test"),
        vec![0, 1, 2, 3, 4]
    );
    // The parquet-conversion branch, long and short forms.
    assert_eq!(
        markers(c, &format!("{repo}@refs/convert/parquet"), "test"),
        vec![40, 41, 42, 43, 44]
    );
    assert_eq!(
        markers(c, &format!("{repo}@convert/parquet"), "default/test").len(),
        5
    );
    // The old commit has no train split.
    let spec = DatasetSpec::new(format!("{repo}@v1.0")).with_split("train");
    let err = open_with_hub_cache(&spec, c).err().expect("no train split");
    assert!(matches!(err, DatasetError::SplitNotFound { .. }), "{err}");
    assert!(
        err.to_string().contains("@v1.0") && err.to_string().contains("test"),
        "{err}"
    );
}

#[test]
fn unknown_revision_lists_refs_and_snapshots() {
    let cache = fake_cache();
    let spec = DatasetSpec::new("tanganke/fixture_corrupted@v9");
    let err = open_with_hub_cache(&spec, cache.path())
        .err()
        .expect("no such revision");
    let msg = err.to_string();
    assert!(matches!(err, DatasetError::Hub { .. }), "{msg}");
    for needle in [
        "`v9`",
        "main",
        "v1.0",
        "refs/convert/parquet",
        OLD,
        "tanganke/fixture_corrupted",
    ] {
        assert!(msg.contains(needle), "{needle} missing from: {msg}");
    }
}

#[test]
fn unknown_dataset_names_cache_and_folder() {
    let cache = fake_cache();
    let spec = DatasetSpec::new("tanganke/not_downloaded");
    let err = open_with_hub_cache(&spec, cache.path())
        .err()
        .expect("not cached");
    let msg = err.to_string();
    assert!(matches!(err, DatasetError::Hub { .. }), "{msg}");
    assert!(
        msg.contains("tanganke/not_downloaded")
            && msg.contains("datasets--tanganke--not_downloaded")
            && msg.contains(&cache.path().display().to_string()),
        "{msg}"
    );
}

#[test]
fn dangling_ref_is_reported() {
    let cache = fake_cache();
    let repo = cache.path().join("datasets--tanganke--fixture_corrupted");
    set_ref(&repo, "broken", "4444444444444444444444444444444444444444");
    let spec = DatasetSpec::new("tanganke/fixture_corrupted@broken");
    let err = open_with_hub_cache(&spec, cache.path())
        .err()
        .expect("dangling");
    assert!(err.to_string().contains("`broken`"), "{err}");
}

/// Online: only the files of the requested split are downloaded; a second open asks nothing
/// but the listing, and an offline one reads the same files.
#[test]
fn online_fetches_only_the_split_then_reads_the_cache() {
    let server = FakeHub::start();
    let commit = server.add_folder(
        RepoKind::Dataset,
        "tanganke/fixture_corrupted",
        &["main"],
        &data("hf_parquet"),
    );
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join("hub");
    let settings = HubSettings::new(&cache, server.endpoint());
    let spec = DatasetSpec::new("tanganke/fixture_corrupted").with_split("train");
    let ds = open_with_hub(&spec, &HubClient::new(settings.clone())).unwrap();
    assert_eq!(ds.len(), 7);
    assert!(ds.describe().contains(&commit), "{}", ds.describe());
    let snapshot = cache
        .join("datasets--tanganke--fixture_corrupted/snapshots")
        .join(&commit);
    let mut fetched = fusion_hub::list_files(&snapshot).unwrap();
    fetched.sort();
    assert_eq!(
        fetched,
        vec![
            "data/train-00000-of-00002.parquet",
            "data/train-00001-of-00002.parquet"
        ]
    );
    let requests = server.requests();
    assert!(
        requests
            .iter()
            .all(|r| !r.contains("test-") && !r.contains("gaussian")),
        "{requests:?}"
    );
    let offline = HubClient::new(settings.with_offline(true));
    assert_eq!(open_with_hub(&spec, &offline).unwrap().len(), 7);
    let err = open_with_hub(&spec.clone().with_split("test"), &offline)
        .err()
        .expect("the test split was never downloaded");
    assert!(
        matches!(err, DatasetError::SplitNotFound { .. }),
        "offline, the cached snapshot lists only the train split: {err}"
    );
}
