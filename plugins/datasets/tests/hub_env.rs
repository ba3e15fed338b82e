//! `open` finds hub ids through `HF_HUB_CACHE` / `HF_HOME`. This binary holds a single test,
//! because it changes the process environment.

mod common;

use fusion_datasets::{hub_cache_dir, open, DatasetSpec};

#[test]
fn open_uses_the_cache_the_environment_names() {
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join("hub");
    let repo = cache.join("datasets--org--tiny");
    let commit = "abcdefabcdefabcdefabcdefabcdefabcdefabcd";
    let target = repo.join("snapshots").join(commit).join("data");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::copy(
        common::data("hf_parquet/data/gaussian_noise-00000-of-00001.parquet"),
        target.join("gaussian_noise-00000-of-00001.parquet"),
    )
    .unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), commit).unwrap();

    std::env::remove_var("HF_HUB_CACHE");
    std::env::remove_var("HUGGINGFACE_HUB_CACHE");
    std::env::set_var("HF_HOME", home.path());
    assert_eq!(hub_cache_dir().unwrap(), cache);
    let spec = DatasetSpec::new("org/tiny").with_split("gaussian_noise");
    assert_eq!(open(&spec).unwrap().len(), 3);

    // HF_HUB_CACHE wins over HF_HOME.
    std::env::set_var("HF_HUB_CACHE", home.path().join("elsewhere"));
    let err = open(&spec).err().expect("not in the other cache");
    assert!(err.to_string().contains("elsewhere"), "{err}");
    std::env::set_var("HF_HUB_CACHE", &cache);
    assert_eq!(open(&spec).unwrap().len(), 3);
}
