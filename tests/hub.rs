//! Hugging Face hub ids end to end: the built `fusion-host` with the built plugins, a
//! CLIPVisionModelPool and a CLIPVisionModelTaskPool whose models and test set are hub ids,
//! against a fake hub on 127.0.0.1 (`fusion_hub::testing`) serving the demo's tiny CLIP, one
//! fine-tuned model and one parquet test set: downloads, the cache with the server gone, offline
//! mode, a corrupted download, pinned revisions, and config errors before any download.
//! Run `cargo build --workspace` first (the README's test command does).

use std::path::{Path, PathBuf};

use fusion_e2e::*;
use fusion_hub::testing::{sha256, FakeHub};
use fusion_hub::RepoKind;
use serde_json::Value;

/// The demo's pretrained CLIPModel.
const CLIP: &str = "demo/clip-tiny";
/// A fine-tuned vision tower: `main` is digits_low, tag `v0` is fashion_tops.
const DIGITS: &str = "demo/clip-tiny-digits";
/// The digits_low test set (parquet, Hugging Face layout).
const DATA: &str = "demo/digits_low";

/// The fake hub with the demo repositories, and the commit tag `v0` of [`DIGITS`] points at.
fn serve_demo() -> (FakeHub, String) {
    let hub = FakeHub::start();
    let demo = root().join("demo");
    hub.add_folder(
        RepoKind::Model,
        CLIP,
        &["main"],
        &demo.join("models/pretrained"),
    );
    let v0 = hub.add_folder(
        RepoKind::Model,
        DIGITS,
        &["v0"],
        &demo.join("models/fashion_tops"),
    );
    hub.add_folder(
        RepoKind::Model,
        DIGITS,
        &["main"],
        &demo.join("models/digits_low"),
    );
    hub.add_folder(
        RepoKind::Dataset,
        DATA,
        &["main"],
        &demo.join("data/digits_low"),
    );
    (hub, v0)
}

/// Config folder: `modelpool=hub` and `taskpool=hub` over hub ids (or, with `local`, over the
/// same files in demo/), one task, small batches.
fn hub_configs(digits: &str, local: bool) -> tempfile::TempDir {
    let demo = root().join("demo");
    let (clip, digits, data) = if local {
        (
            demo.join("models/pretrained").display().to_string(),
            demo.join("models/digits_low").display().to_string(),
            demo.join("data/digits_low").display().to_string(),
        )
    } else {
        (CLIP.to_string(), digits.to_string(), DATA.to_string())
    };
    let pool = format!(
        "_target_: fusion_bench.modelpool.CLIPVisionModelPool\n\
         processor: {clip}\n\
         models:\n  _pretrained_: {clip}\n  digits_low: {digits}\n\
         platform: hf\n"
    );
    let tasks = format!(
        "_target_: fusion_bench.taskpool.CLIPVisionModelTaskPool\n\
         test_datasets:\n  digits_low:\n    path: {data}\n    split: test\n    \
         classnames: ['0', '1', '2', '3', '4']\n    \
         templates: ['a photo of the number: \"{{}}\".']\n\
         base_model: {clip}\n\
         dataloader_kwargs:\n  batch_size: 16\n"
    );
    let dir = tempfile::tempdir().unwrap();
    write_configs(
        dir.path(),
        &[("modelpool/hub.yaml", &pool), ("taskpool/hub.yaml", &tasks)],
    );
    dir
}

/// A run's environment: the hub at `endpoint`, the cache under `home`, nothing inherited that
/// could point elsewhere (empty values count as unset).
fn hub_env<'a>(home: &'a str, endpoint: &'a str, offline: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("HF_HOME", home),
        ("HF_ENDPOINT", endpoint),
        ("HF_HUB_OFFLINE", offline),
        ("HF_HUB_CACHE", ""),
        ("HUGGINGFACE_HUB_CACHE", ""),
        ("HF_TOKEN", ""),
        ("HUGGING_FACE_HUB_TOKEN", ""),
        ("HF_TOKEN_PATH", ""),
        ("NO_PROXY", "127.0.0.1,localhost"),
        ("no_proxy", "127.0.0.1,localhost"),
    ]
}

/// Merge with task arithmetic and evaluate on one batch of 16 test images.
fn run_merge(work: &Path, cfg: &Path, extra: &[&str], env: &[(&str, &str)]) -> Run {
    let mut args = vec![
        "--device",
        "cpu",
        "--config-path",
        cfg.to_str().unwrap(),
        "modelpool=hub",
        "taskpool=hub",
        "method=task_arithmetic",
        "fast_dev_run=true",
        "print_config=false",
    ];
    args.extend_from_slice(extra);
    run_host_env(work, &args, env)
}

fn report(run: &Run) -> Value {
    assert_eq!(run.code, 0, "{}", run.stderr);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", run.stdout))
}

/// Every file under `dir`, relative to it.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, base, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The one snapshot folder of a cached repository.
fn snapshot(repo_dir: &Path) -> PathBuf {
    let snaps: Vec<PathBuf> = std::fs::read_dir(repo_dir.join("snapshots"))
        .unwrap_or_else(|e| panic!("{}: {e}", repo_dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    snaps[0].clone()
}

#[test]
fn hub_pools_download_once_then_run_from_the_cache_online_and_offline() {
    let (mut hub, _) = serve_demo();
    let endpoint = hub.endpoint();
    let home = tempfile::tempdir().unwrap();
    let home_s = home.path().to_str().unwrap();
    let work = tempfile::tempdir().unwrap();

    // The same evaluation on the demo's local folders, for reference.
    let local = hub_configs("", true);
    let want = report(&run_merge(work.path(), local.path(), &[], &[]));

    // (a) First run: everything is downloaded, and the result is the local one.
    let cfg = hub_configs(DIGITS, false);
    let first = run_merge(
        work.path(),
        cfg.path(),
        &[],
        &hub_env(home_s, &endpoint, ""),
    );
    let got = report(&first);
    assert!(hub.hits() > 0, "nothing was asked of the hub");
    for key in ["accuracy", "loss"] {
        assert_eq!(
            got["digits_low"][key], want["digits_low"][key],
            "{key}: hub {got} vs local {want}"
        );
    }
    assert!(
        got["digits_low"]["accuracy"].as_f64().unwrap() > 0.5,
        "{got}"
    );
    // Python's cache layout under $HF_HOME/hub, only what the run needed.
    let cache = home.path().join("hub");
    let clip = snapshot(&cache.join("models--demo--clip-tiny"));
    let mut clip_files = tree(&clip);
    clip_files.sort();
    assert_eq!(
        clip_files,
        vec![
            "config.json",
            "model.safetensors",
            "preprocessor_config.json",
            "tokenizer.json",
            "tokenizer_config.json"
        ]
    );
    let weights = std::fs::read(root().join("demo/models/pretrained/model.safetensors")).unwrap();
    assert!(
        cache
            .join("models--demo--clip-tiny/blobs")
            .join(sha256(&weights))
            .is_file(),
        "LFS blobs are named by their sha256"
    );
    let data = snapshot(&cache.join("datasets--demo--digits_low"));
    assert_eq!(tree(&data), vec!["data/test-00000-of-00001.parquet"]);
    assert!(cache
        .join("models--demo--clip-tiny-digits/refs/main")
        .is_file());

    // (b) The server is gone: the second run reads the cache.
    hub.stop();
    let second = run_merge(
        work.path(),
        cfg.path(),
        &[],
        &hub_env(home_s, &endpoint, ""),
    );
    let again = report(&second);
    assert_eq!(again["digits_low"], got["digits_low"]);
    // ... and so does an offline one, through the variable and through the flag.
    let offline = run_merge(
        work.path(),
        cfg.path(),
        &[],
        &hub_env(home_s, &endpoint, "1"),
    );
    assert_eq!(report(&offline)["digits_low"], got["digits_low"]);
    let flag = run_merge(
        work.path(),
        cfg.path(),
        &["--offline", "--quiet"],
        &hub_env(home_s, &endpoint, ""),
    );
    assert_eq!(report(&flag)["digits_low"], got["digits_low"]);
}

#[test]
fn offline_with_a_cold_cache_fails_with_a_clear_message() {
    let (hub, _) = serve_demo();
    let endpoint = hub.endpoint();
    let home = tempfile::tempdir().unwrap();
    let home_s = home.path().to_str().unwrap();
    let work = tempfile::tempdir().unwrap();
    let cfg = hub_configs(DIGITS, false);
    for (flag, offline) in [(&["--offline"][..], ""), (&[][..], "1"), (&[][..], "TRUE")] {
        let run = run_merge(
            work.path(),
            cfg.path(),
            flag,
            &hub_env(home_s, &endpoint, offline),
        );
        run.assert_clean_failure(1);
        let err = run.error();
        for needle in [
            "`demo/clip-tiny",
            "not in the Hugging Face cache (",
            "models--demo--clip-tiny",
            "offline mode is on (--offline / HF_HUB_OFFLINE)",
        ] {
            assert!(
                err.contains(needle),
                "{needle:?} missing from:\n{}",
                run.stderr
            );
        }
    }
    assert_eq!(
        hub.hits(),
        0,
        "offline runs asked the hub: {:?}",
        hub.requests()
    );
    assert!(!home
        .path()
        .join("hub")
        .join("models--demo--clip-tiny")
        .exists());
}

#[test]
fn a_corrupted_download_fails_and_leaves_nothing_that_passes_for_complete() {
    let (hub, _) = serve_demo();
    let endpoint = hub.endpoint();
    let home = tempfile::tempdir().unwrap();
    let home_s = home.path().to_str().unwrap();
    let work = tempfile::tempdir().unwrap();
    let cfg = hub_configs(DIGITS, false);
    // The bytes are altered; the headers (x-linked-etag = the real sha256, sizes) are not.
    hub.corrupt(RepoKind::Model, DIGITS, "model.safetensors");
    let run = run_merge(
        work.path(),
        cfg.path(),
        &[],
        &hub_env(home_s, &endpoint, ""),
    );
    run.assert_clean_failure(1);
    let err = run.error();
    let sha =
        sha256(&std::fs::read(root().join("demo/models/digits_low/model.safetensors")).unwrap());
    for needle in [
        "`demo/clip-tiny-digits` file `model.safetensors`",
        "the download is corrupt",
        sha.as_str(),
        "nothing was stored in the cache",
    ] {
        assert!(
            err.contains(needle),
            "{needle:?} missing from:\n{}",
            run.stderr
        );
    }
    let repo = home.path().join("hub/models--demo--clip-tiny-digits");
    let files = tree(&repo);
    assert!(
        !files
            .iter()
            .any(|f| f.contains("model.safetensors") || f.contains(&sha)),
        "the corrupt file was kept: {files:?}"
    );
    assert!(
        !files
            .iter()
            .any(|f| f.contains("incomplete") || f.ends_with(".part")),
        "temporary files were left: {files:?}"
    );

    // Offline, the weights are not taken for cached: the message says they are missing.
    let run = run_merge(
        work.path(),
        cfg.path(),
        &["--offline"],
        &hub_env(home_s, &endpoint, ""),
    );
    run.assert_clean_failure(1);
    assert!(
        run.error()
            .contains("`demo/clip-tiny-digits` file `model.safetensors` (revision `main`): not in the Hugging Face cache"),
        "{}",
        run.stderr
    );

    // Served intact again, the run downloads it and succeeds.
    hub.heal();
    let ok = run_merge(
        work.path(),
        cfg.path(),
        &["--quiet"],
        &hub_env(home_s, &endpoint, ""),
    );
    assert!(report(&ok)["digits_low"]["accuracy"].as_f64().is_some());
    assert!(repo.join("blobs").join(&sha).is_file());
}

#[test]
fn a_pinned_revision_is_the_one_merged() {
    let (hub, v0) = serve_demo();
    let endpoint = hub.endpoint();
    let home = tempfile::tempdir().unwrap();
    let home_s = home.path().to_str().unwrap();
    let work = tempfile::tempdir().unwrap();
    let cfg = hub_configs(&format!("{DIGITS}@v0"), false);
    let merged = work.path().join("merged");
    // Task arithmetic with λ = 1 on one model gives that model back: the pinned fashion_tops
    // weights, not `main`'s digits_low ones.
    let run = run_host_env(
        work.path(),
        &[
            "--device",
            "cpu",
            "--config-path",
            cfg.path().to_str().unwrap(),
            "modelpool=hub",
            "taskpool=dummy",
            "method=task_arithmetic",
            "method.scaling_factor=1.0",
            &format!("merged_model_save_path={}", merged.display()),
        ],
        &hub_env(home_s, &endpoint, ""),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let got = read_f32(&merged.join("model.safetensors"));
    let pinned = read_f32(&root().join("demo/models/fashion_tops/model.safetensors"));
    let main = read_f32(&root().join("demo/models/digits_low/model.safetensors"));
    let (mut to_pinned, mut to_main) = (0f32, 0f32);
    for (name, shape, values) in &got {
        let bare = name.strip_prefix("vision_model.").unwrap_or(name);
        let find = |set: &[(String, Vec<usize>, Vec<f32>)]| {
            set.iter()
                .find(|(n, _, _)| n == bare)
                .unwrap_or_else(|| panic!("no {bare}"))
                .clone()
        };
        let (p, m) = (find(&pinned), find(&main));
        assert_eq!(&p.1, shape, "{name}");
        for ((g, p), m) in values.iter().zip(&p.2).zip(&m.2) {
            to_pinned = to_pinned.max((g - p).abs());
            to_main = to_main.max((g - m).abs());
        }
    }
    assert!(
        to_pinned < 1e-5,
        "merged differs from the pinned weights by {to_pinned}"
    );
    assert!(
        to_main > 1e-3,
        "the pinned and main weights should differ ({to_main})"
    );
    // The cache records the tag; `main` of that repository was never asked for.
    let repo = home.path().join("hub/models--demo--clip-tiny-digits");
    assert_eq!(std::fs::read_to_string(repo.join("refs/v0")).unwrap(), v0);
    assert!(!repo.join("refs/main").exists());
    assert_eq!(snapshot(&repo), repo.join("snapshots").join(&v0));
    assert!(
        hub.requests()
            .iter()
            .any(|r| r.contains("/api/models/demo/clip-tiny-digits/revision/v0")),
        "{:?}",
        hub.requests()
    );
}

#[test]
fn config_errors_come_before_any_download() {
    let (hub, _) = serve_demo();
    let endpoint = hub.endpoint();
    let home = tempfile::tempdir().unwrap();
    let home_s = home.path().to_str().unwrap();
    let work = tempfile::tempdir().unwrap();
    let cfg = hub_configs(DIGITS, false);
    let env = hub_env(home_s, &endpoint, "");
    for (extra, needle) in [
        // A bad method parameter.
        (&["method.scaling_factor=abc"][..], "scaling_factor"),
        // An unknown target.
        (
            &["taskpool._target_=no_such_taskpool"][..],
            "no_such_taskpool",
        ),
        // A mandatory value left unset.
        (&["+method.required=???"][..], "method.required"),
    ] {
        let run = run_merge(work.path(), cfg.path(), extra, &env);
        run.assert_clean_failure(2);
        assert!(run.error().contains(needle), "{needle:?}:\n{}", run.stderr);
    }
    // Bad hub settings are configuration errors too.
    let mut bad = env.clone();
    bad.retain(|(k, _)| *k != "HF_ENDPOINT");
    bad.push(("HF_ENDPOINT", "localhost:8080"));
    let run = run_merge(work.path(), cfg.path(), &[], &bad);
    run.assert_clean_failure(2);
    assert!(
        run.error().contains("HF_ENDPOINT `localhost:8080`"),
        "{}",
        run.stderr
    );
    assert_eq!(hub.hits(), 0, "downloads started: {:?}", hub.requests());
    assert!(!home.path().join("hub").exists());
}

/// A library built against plugin-api before it had hub support (it exports no
/// `fusion_plugin_hub_v1`; its root module is the same) still loads and runs in this host.
#[test]
fn a_plugin_built_before_hub_support_still_loads_and_runs() {
    let api = modified_plugin_api(None, false);
    let api_dir = api.path().join("plugin-api");
    // `export_plugin!` as it was: no hub export.
    let export = api_dir.join("src/export.rs");
    let text = std::fs::read_to_string(&export).unwrap();
    let start = text
        .find("        // The host's Hugging Face hub comes in through this")
        .expect("the hub export in export_plugin!");
    let end_marker = "= $crate::abi::hub_export();\n";
    let end = text[start..]
        .find(end_marker)
        .expect("the end of the hub export")
        + start;
    std::fs::write(
        &export,
        format!("{}{}", &text[..start], &text[end + end_marker.len()..]),
    )
    .unwrap();
    let plugin = build_external_plugin(&root().join("plugins/example"), "old-hub-plugin", &api_dir);
    let work = tempfile::tempdir().unwrap();
    let dir = plugin.path().to_str().unwrap();
    let listed = run_host(work.path(), &["--plugin-dir", dir, "plugins"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert!(
        listed.stdout.contains("libold_hub_plugin") && !listed.stdout.contains("refused:"),
        "{}",
        listed.stdout
    );
    // Its algorithm (listed first, so it wins over the workspace's copy) runs.
    let cfg = tempfile::tempdir().unwrap();
    write_configs(cfg.path(), &[("modelpool/tiny.yaml", &merge_tiny_pool())]);
    let run = run_host(
        work.path(),
        &[
            "--plugin-dir",
            dir,
            "--config-path",
            cfg.path().to_str().unwrap(),
            "-v",
            "modelpool=tiny",
            "method._target_=interpolate",
            "taskpool=dummy",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("old-hub-plugin") && run.stderr.contains("built before hub support"),
        "{}",
        run.stderr
    );
}

/// An `HF_ENDPOINT` that accepts connections and never answers: the run gives up after the
/// timeout (`HF_HUB_ETAG_TIMEOUT`, here 0.2 s) and its retries, with an error naming the URL,
/// instead of hanging for ever.
#[test]
fn a_hub_that_never_answers_times_out_with_the_url_named() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().flatten().collect();
        drop(held);
    });
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let cfg = hub_configs(DIGITS, false);
    let mut env = hub_env(home.path().to_str().unwrap(), &endpoint, "");
    env.push(("HF_HUB_ETAG_TIMEOUT", "0.2"));
    let started = std::time::Instant::now();
    let mut child = std::process::Command::new(host_bin())
        .args([
            "--device",
            "cpu",
            "--config-path",
            cfg.path().to_str().unwrap(),
            "modelpool=hub",
            "taskpool=hub",
            "method=task_arithmetic",
            "fast_dev_run=true",
            "print_config=false",
        ])
        .current_dir(work.path())
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A hang fails the test rather than blocking it.
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(120) {
            child.kill().unwrap();
            panic!("fusion-host hung on a hub that never answers");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("no answer from {endpoint}/"))
            && stderr.contains("within 0.2 s (HF_HUB_ETAG_TIMEOUT)"),
        "{stderr}"
    );
}

/// `fusion-host mergekit` with models named by hub id: downloaded into the cache, merged as
/// mergekit-yaml merged the same models from disk, then again offline from the cache alone.
#[test]
fn mergekit_configs_take_hub_ids() {
    let hub = FakeHub::start();
    let models = data().join("mergekit-tiny/models");
    for m in ["math", "code", "chat"] {
        hub.add_folder(
            RepoKind::Model,
            &format!("tiny/{m}"),
            &["main"],
            &models.join(m),
        );
    }
    let endpoint = hub.endpoint();
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let linear = std::fs::read_to_string(data().join("mergekit-tiny/configs/linear.yaml")).unwrap();
    write_configs(
        work.path(),
        &[("linear.yaml", &linear.replace("models/", "tiny/"))],
    );
    let want = read_f32(&data().join("mergekit-tiny/expected/linear/model.safetensors"));
    for (offline, out) in [("0", "online"), ("1", "offline")] {
        let env = hub_env(home.path().to_str().unwrap(), &endpoint, offline);
        let run = run_host_env(work.path(), &["mergekit", "linear.yaml", out], &env);
        assert_eq!(run.code, 0, "{out}: {}", run.stderr);
        assert_eq!(
            read_f32(&work.path().join(out).join("model.safetensors")),
            want,
            "{out}"
        );
    }
    assert!(home.path().join("hub/models--tiny--math").is_dir());
}
