//! `open` finds hub ids through the installed hub, here fusion-hub with settings from
//! `HF_HOME` / `HF_HUB_CACHE` (as the host resolves them). This binary holds a single test,
//! because it changes the process environment and the process-wide hub.

mod common;

use std::sync::Arc;

use fusion_datasets::{open, DatasetSpec};
use fusion_hub::{HubClient, HubSettings};

fn install_hub_from_env() {
    let settings = HubSettings::from_env(true).expect("settings");
    fusion_plugin_api::hub::install(Arc::new(HubClient::new(settings)));
}

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

    let spec = DatasetSpec::new("org/tiny").with_split("gaussian_noise");
    // No hub installed: a clear error, not a guess at a cache folder.
    let err = open(&spec).err().expect("no hub");
    assert!(
        err.to_string().contains("no Hugging Face hub access"),
        "{err}"
    );

    std::env::remove_var("HF_HUB_CACHE");
    std::env::remove_var("HUGGINGFACE_HUB_CACHE");
    std::env::set_var("HF_HOME", home.path());
    install_hub_from_env();
    assert_eq!(open(&spec).unwrap().len(), 3);

    // HF_HUB_CACHE wins over HF_HOME.
    std::env::set_var("HF_HUB_CACHE", home.path().join("elsewhere"));
    install_hub_from_env();
    let err = open(&spec).err().expect("not in the other cache");
    assert!(err.to_string().contains("elsewhere"), "{err}");
    std::env::set_var("HF_HUB_CACHE", &cache);
    install_hub_from_env();
    assert_eq!(open(&spec).unwrap().len(), 3);
}
