//! End-to-end tests: the built `fusion-host` with the built plugins, on files in temp dirs.
//! Run `cargo build --workspace` first (the README's test command does).

use std::path::Path;

use fusion_e2e::*;
use serde_json::Value;

/// A config folder with the merge-tiny pool as `modelpool=tiny` and the given extra files.
fn configs(extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_configs(dir.path(), &[("modelpool/tiny.yaml", &merge_tiny_pool())]);
    write_configs(dir.path(), extra);
    dir
}

/// `fusion-host --config-path CFG ARGS...`, run in `work`.
fn run_configs(work: &Path, cfg: impl AsRef<Path>, args: &[&str]) -> Run {
    let cfg = cfg.as_ref().to_str().unwrap();
    run_host(work, &[&["--config-path", cfg], args].concat())
}

/// `fusion-host --plugin-dir PLUGIN --config-path CFG ARGS...`, run in `work`.
fn run_plugin_configs(
    work: &Path,
    plugin: impl AsRef<Path>,
    cfg: impl AsRef<Path>,
    args: &[&str],
) -> Run {
    let plugin = plugin.as_ref().to_str().unwrap();
    let cfg = cfg.as_ref().to_str().unwrap();
    run_host(
        work,
        &[&["--plugin-dir", plugin, "--config-path", cfg], args].concat(),
    )
}

/// The testkit plugin (tests/plugins/testkit), built outside the workspace against this
/// plugin-api; the folder holds only its library.
fn testkit_plugin() -> tempfile::TempDir {
    build_external_plugin(
        &root().join("tests/plugins/testkit"),
        "fusion-testkit",
        &root().join("plugin-api"),
    )
}

/// The testkit's `probe` task pool reported the sum of the first tensor it read as that
/// tensor's sum in `model` (within f32 rounding).
fn assert_probe_read(report: &Value, model: &[(String, Vec<usize>, Vec<f32>)]) {
    let first = report["first_tensor"].as_str().unwrap();
    let sum: f64 = model
        .iter()
        .find(|t| t.0 == first)
        .unwrap()
        .2
        .iter()
        .map(|v| *v as f64)
        .sum();
    assert!((report["first_sum"].as_f64().unwrap() - sum).abs() < 1e-3);
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

fn tiny_param_count() -> u64 {
    read_f32(&data().join("merge-tiny/models/_pretrained_.safetensors"))
        .iter()
        .map(|(_, shape, _)| shape.iter().product::<usize>() as u64)
        .sum()
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

#[test]
fn dummy_flow_writes_report_config_and_log() {
    let cfg = configs(&[]);
    let work = tempfile::tempdir().unwrap();
    let cp = cfg.path().to_str().unwrap();
    let run = run_configs(
        work.path(),
        cp,
        &[
            "--config-name",
            "fabric_model_fusion",
            "modelpool=tiny",
            "method=dummy",
            "taskpool=dummy",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = json(&run.stdout);
    let params = tiny_param_count();
    assert_eq!(report["model_info"]["all_params"], params);
    assert_eq!(report["model_info"]["num_tensors"], 10);
    assert_eq!(report["model_info"]["dtypes"]["F32"], 10);

    // outputs/<config_name>/<timestamp>/{program_report.json, config.yaml, fusion-host.log}
    let runs: Vec<_> = std::fs::read_dir(work.path().join("outputs/fabric_model_fusion"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(runs.len(), 1);
    let dir = runs[0].path();
    assert_eq!(
        json(&std::fs::read_to_string(dir.join("program_report.json")).unwrap()),
        report
    );
    let composed: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(dir.join("config.yaml")).unwrap()).unwrap();
    assert_eq!(
        composed["method"]["_target_"].as_str(),
        Some("fusion_bench.method.DummyAlgorithm")
    );
    // The log file holds the run's log lines, also those from before it was opened.
    let log = std::fs::read_to_string(dir.join("fusion-host.log")).unwrap();
    assert!(
        log.contains("modelpool: fusion_bench.modelpool.BaseModelPool"),
        "{log}"
    );
    // The profiling summary names the stages.
    for stage in [
        "compose config",
        "load plugins",
        "run method",
        "evaluate",
        "Total",
    ] {
        assert!(
            run.stderr.contains(stage),
            "missing stage {stage}:\n{}",
            run.stderr
        );
    }
}

#[test]
fn cfg_job_prints_the_composed_yaml_and_runs_nothing() {
    let cfg = configs(&[]);
    let work = tempfile::tempdir().unwrap();
    let run = run_configs(
        work.path(),
        cfg.path(),
        &["--cfg", "job", "modelpool=tiny", "method=dummy", "seed=7"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let composed: serde_norway::Value = serde_norway::from_str(&run.stdout).unwrap();
    assert_eq!(composed["seed"].as_i64(), Some(7));
    assert_eq!(
        composed["taskpool"]["_target_"].as_str(),
        Some("fusion_bench.taskpool.DummyTaskPool")
    );
    assert!(composed["modelpool"]["models"]["task_d"]
        .as_str()
        .unwrap()
        .ends_with("task_d.safetensors"));
    // Interpolations are printed unresolved, as Hydra does without --resolve.
    assert!(composed["path"]["log_dir"].as_str().unwrap().contains("${"));
    assert!(
        !work.path().join("outputs").exists(),
        "--cfg job must not create outputs"
    );

    let resolved = run_configs(
        work.path(),
        cfg.path(),
        &["--cfg", "job", "--resolve", "modelpool=tiny"],
    );
    assert_eq!(resolved.code, 0, "{}", resolved.stderr);
    let composed: serde_norway::Value = serde_norway::from_str(&resolved.stdout).unwrap();
    assert!(composed["path"]["log_dir"]
        .as_str()
        .unwrap()
        .starts_with("./outputs/fabric_model_fusion/"));
}

#[test]
fn saves_the_merged_model_whole_sharded_and_converted() {
    let cfg = configs(&[]);
    let work = tempfile::tempdir().unwrap();
    let cp = cfg.path().to_str().unwrap();
    let base = read_f32(&data().join("merge-tiny/models/_pretrained_.safetensors"));

    let run = run_configs(
        work.path(),
        cp,
        &["modelpool=tiny", "merged_model_save_path=merged"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        read_f32(&work.path().join("merged/model.safetensors")),
        base
    );

    // Sharded past a small limit, with an index naming every tensor, in bf16.
    let run = run_configs(
        work.path(),
        cp,
        &[
            "modelpool=tiny",
            "merged_model_save_path=\"{log_dir}/sharded\"",
            "merged_model_save_kwargs={dtype: bfloat16, max_shard_size: 4KB}",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = files_under(&work.path().join("outputs"));
    let index_path = out
        .iter()
        .find(|f| f.ends_with("sharded/model.safetensors.index.json"))
        .expect("index written");
    let index = json(&std::fs::read_to_string(index_path).unwrap());
    let weight_map = index["weight_map"].as_object().unwrap();
    assert_eq!(weight_map.len(), 10);
    let dir = Path::new(index_path).parent().unwrap();
    let mut shards: Vec<String> = weight_map
        .values()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    shards.sort();
    shards.dedup();
    assert!(shards.len() > 1, "expected several shards: {shards:?}");
    let mut tensors = Vec::new();
    for s in &shards {
        let size = std::fs::metadata(dir.join(s)).unwrap().len();
        tensors.extend(read_f32(&dir.join(s)));
        assert!(size < 4000 + 4000, "shard {s} is {size} bytes");
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(tensors.len(), base.len());
    for ((n1, s1, v1), (n2, s2, v2)) in tensors.iter().zip(&base) {
        assert_eq!((n1, s1), (n2, s2));
        for (a, b) in v1.iter().zip(v2) {
            // bf16 keeps 8 bits of mantissa.
            assert!((a - b).abs() <= b.abs() / 128.0 + 1e-30, "{n1}: {a} vs {b}");
        }
    }
    // No temporary files are left behind.
    assert!(!out.iter().any(|f| f.contains(".partial")), "{out:?}");
}

/// Hidden files (temporary files) anywhere under `dir`.
fn hidden_under(dir: &Path) -> Vec<String> {
    files_under(dir)
        .into_iter()
        .filter(|f| {
            Path::new(f)
                .strip_prefix(dir)
                .unwrap()
                .components()
                .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
        })
        .collect()
}

#[test]
fn saving_into_a_folder_replaces_only_the_model_files() {
    let cfg = configs(&[]);
    let cp = cfg.path().to_str().unwrap();
    let work = tempfile::tempdir().unwrap();
    let base = read_f32(&data().join("merge-tiny/models/_pretrained_.safetensors"));
    let victim = work.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("notes.txt"), "x").unwrap();
    std::fs::write(victim.join("pytorch_model.bin"), "not ours").unwrap();
    // Weights of an earlier sharded save, and the temporary file of a save killed long ago
    // (no process has this id); the one of a live process (1) stays.
    for f in [
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model.safetensors.index.json",
    ] {
        std::fs::write(victim.join(f), "old").unwrap();
    }
    std::fs::write(victim.join(".model.safetensors.partial-999999999"), "dead").unwrap();
    std::fs::write(victim.join(".notes.txt.partial-1"), "live").unwrap();
    let save = |path: &str, extra: &[&str]| {
        let mut args = vec![
            "--config-path",
            cp,
            "modelpool=tiny",
            "method=task_arithmetic",
            "taskpool=dummy",
            "print_config=false",
        ];
        let arg = format!("merged_model_save_path={path}");
        args.push(&arg);
        args.extend_from_slice(extra);
        run_host(work.path(), &args)
    };

    let run = save("victim", &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let mut left: Vec<String> = std::fs::read_dir(&victim)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            ".notes.txt.partial-1",
            "model.safetensors",
            "notes.txt",
            "pytorch_model.bin"
        ],
        "the stale shards, index and dead temporary file go; the rest stays"
    );
    assert_eq!(
        std::fs::read_to_string(victim.join("notes.txt")).unwrap(),
        "x"
    );
    let merged = read_f32(&victim.join("model.safetensors"));
    assert_eq!(merged.len(), base.len());

    // Sharded into the same folder: the single file goes, the notes stay.
    let run = save(
        "victim",
        &["merged_model_save_kwargs={max_shard_size: 4KB}"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!victim.join("model.safetensors").exists());
    assert!(victim.join("model.safetensors.index.json").is_file());
    assert_eq!(
        std::fs::read_to_string(victim.join("notes.txt")).unwrap(),
        "x"
    );
    assert!(victim.join("pytorch_model.bin").is_file());

    // Into the working folder itself: the model lands beside what is there.
    std::fs::write(work.path().join("keep.txt"), "k").unwrap();
    let run = save(".", &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(read_f32(&work.path().join("model.safetensors")), merged);
    assert_eq!(
        std::fs::read_to_string(work.path().join("keep.txt")).unwrap(),
        "k"
    );

    // A file where a folder is wanted, a folder where a file is wanted: errors naming them,
    // before any work, and nothing touched.
    std::fs::write(work.path().join("file"), "mine").unwrap();
    let run = save("file", &[]);
    run.assert_clean_failure(2);
    assert!(
        run.error().contains("file is a file, not a folder"),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_to_string(work.path().join("file")).unwrap(),
        "mine"
    );
    std::fs::create_dir(work.path().join("dir.safetensors")).unwrap();
    let run = save("dir.safetensors", &[]);
    run.assert_clean_failure(2);
    assert!(
        run.error().contains("dir.safetensors is a folder"),
        "{}",
        run.stderr
    );
    let run = save("out.safetensors", &["report_save_path=victim"]);
    run.assert_clean_failure(2);
    assert!(
        run.error().contains("report_save_path victim is a folder"),
        "{}",
        run.stderr
    );
    assert!(!work.path().join("out.safetensors").exists());
    assert_eq!(
        hidden_under(work.path()),
        [victim.join(".notes.txt.partial-1").display().to_string()]
    );
}

#[test]
fn a_malformed_base_config_json_is_named_before_anything_is_written() {
    let work = tempfile::tempdir().unwrap();
    let models = data().join("merge-tiny/models");
    let base = work.path().join("base");
    std::fs::create_dir(&base).unwrap();
    std::fs::copy(
        models.join("_pretrained_.safetensors"),
        base.join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(base.join("config.json"), "{\"model_type\": \"clip\",").unwrap();
    let cfg = configs(&[(
        "modelpool/p.yaml",
        &format!(
            "_target_: fusion_bench.modelpool.BaseModelPool\nmodels:\n  _pretrained_: {}\n  task_a: {}\n  task_b: {}\n",
            base.display(),
            models.join("task_a.safetensors").display(),
            models.join("task_b.safetensors").display()
        ),
    )]);
    let run = run_configs(
        work.path(),
        cfg.path(),
        &[
            "method=task_arithmetic",
            "modelpool=p",
            "taskpool=dummy",
            "merged_model_save_path=merged",
        ],
    );
    run.assert_clean_failure(1);
    let err = run.error();
    assert!(
        err.contains(&base.join("config.json").display().to_string())
            && err.contains("not valid JSON"),
        "{}",
        run.stderr
    );
    assert!(!work.path().join("merged").exists());
}

/// Non-finite merged values are reported (a warning naming the tensor and the count, counted
/// on the device), and fail the run with `FUSION_NONFINITE=error` before anything is saved; so
/// do values that overflow float16 when the save converts them.
#[test]
fn non_finite_merged_values_are_reported_and_can_fail_the_run() {
    let models = data().join("merge-tiny/models");
    let work = tempfile::tempdir().unwrap();
    // task_a with a NaN in one tensor and an infinity in another.
    let mut task_a = read_f32(&models.join("task_a.safetensors"));
    task_a[0].2[3] = f32::NAN;
    task_a[1].2[0] = f32::INFINITY;
    let (nan_tensor, inf_tensor) = (task_a[0].0.clone(), task_a[1].0.clone());
    let tensors: Vec<(&str, Vec<usize>, Vec<f32>)> = task_a
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.clone()))
        .collect();
    let bad = work.path().join("task_a_bad.safetensors");
    write_f32(&bad, &tensors);
    let cfg = configs(&[(
        "modelpool/p.yaml",
        &format!(
            "_target_: fusion_bench.modelpool.BaseModelPool\nmodels:\n  _pretrained_: {}\n  task_a: {}\n  task_b: {}\n",
            models.join("_pretrained_.safetensors").display(),
            bad.display(),
            models.join("task_b.safetensors").display()
        ),
    )]);
    let cp = cfg.path().to_str().unwrap();
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec![
            "--config-path",
            cp,
            "method=task_arithmetic",
            "modelpool=p",
            "taskpool=dummy",
            "print_config=false",
        ];
        args.extend_from_slice(extra);
        run_host_env(work.path(), &args, env)
    };

    let warned = run(&["merged_model_save_path=merged"], &[]);
    assert_eq!(warned.code, 0, "{}", warned.stderr);
    assert!(
        warned.stderr.contains(&format!(
            "merged tensor `{nan_tensor}`: 1 of {} values are NaN or infinite",
            task_a[0].2.len()
        )) && warned
            .stderr
            .contains(&format!("merged tensor `{inf_tensor}`: 1 of")),
        "{}",
        warned.stderr
    );
    let saved = read_f32(&work.path().join("merged/model.safetensors"));
    assert!(saved[0].2[3].is_nan() && saved[1].2[0].is_infinite());
    assert_eq!(
        saved
            .iter()
            .flat_map(|t| &t.2)
            .filter(|v| !v.is_finite())
            .count(),
        2
    );

    let failed = run(
        &["merged_model_save_path=strict"],
        &[("FUSION_NONFINITE", "error")],
    );
    failed.assert_clean_failure(1);
    assert!(
        failed
            .error()
            .contains(&format!("merged tensor `{nan_tensor}`: 1 of"))
            && failed.error().contains("FUSION_NONFINITE=error"),
        "{}",
        failed.stderr
    );
    assert!(!work.path().join("strict").exists());
    assert_eq!(hidden_under(work.path()), Vec::<String>::new());

    // A scaling factor of 1e300 (infinite in f32) makes every merged tensor non-finite: named
    // one by one up to a limit, then summed up.
    let huge = run(
        &["method.scaling_factor=1e300", "merged_model_save_path=huge"],
        &[],
    );
    assert_eq!(huge.code, 0, "{}", huge.stderr);
    assert!(
        huge.stderr.contains("merged tensors in all hold"),
        "{}",
        huge.stderr
    );
    let bad_policy = run(&[], &[("FUSION_NONFINITE", "maybe")]);
    bad_policy.assert_clean_failure(2);
    assert!(
        bad_policy.error().contains("FUSION_NONFINITE=`maybe`"),
        "{}",
        bad_policy.stderr
    );

    // Finite merged values that overflow float16 on the save.
    let f16 = [
        "merged_model_save_path=half",
        "merged_model_save_kwargs={dtype: float16}",
    ];
    let pool = ["modelpool=tiny", "method.scaling_factor=1e6"];
    let args: Vec<&str> = f16.iter().chain(&pool).copied().collect();
    let overflow = run(&args, &[]);
    assert_eq!(overflow.code, 0, "{}", overflow.stderr);
    assert!(
        overflow.stderr.contains("are too large for F16"),
        "{}",
        overflow.stderr
    );
    let overflow = run(&args, &[("FUSION_NONFINITE", "error")]);
    overflow.assert_clean_failure(1);
    assert!(
        overflow.error().contains("are too large for F16"),
        "{}",
        overflow.stderr
    );
    assert_eq!(hidden_under(work.path()), Vec::<String>::new());
}

/// Start the host saving slowly (the testkit's `slow` method) into `work/merged`, and wait
/// until a temporary file of the save is there.
fn start_slow_save(work: &Path, plugin: &Path, cp: &str) -> std::process::Child {
    let child = std::process::Command::new(host_bin())
        .args([
            "--plugin-dir",
            plugin.to_str().unwrap(),
            "--config-path",
            cp,
            "modelpool=tiny",
            "method._target_=slow",
            "+method.delay_ms=400",
            "merged_model_save_path=merged",
        ])
        .current_dir(work)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !files_under(&work.join("merged"))
        .iter()
        .any(|f| f.contains(".model.safetensors.partial-"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the save never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child
}

#[test]
fn an_interrupted_save_leaves_nothing_behind_and_a_killed_one_is_collected_later() {
    let plugin = testkit_plugin();
    let cfg = configs(&[]);
    let cp = cfg.path().to_str().unwrap();
    for signal in ["TERM", "INT"] {
        let work = tempfile::tempdir().unwrap();
        std::fs::create_dir(work.path().join("merged")).unwrap();
        std::fs::write(work.path().join("merged/notes.txt"), "x").unwrap();
        let mut child = start_slow_save(work.path(), plugin.path(), cp);
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = child.wait().unwrap();
        assert!(!status.success(), "SIG{signal}: {status:?}");
        let mut left = files_under(&work.path().join("merged"));
        left.retain(|f| !f.ends_with("notes.txt"));
        assert!(left.is_empty(), "SIG{signal} left {left:?}");
        assert_eq!(
            std::fs::read_to_string(work.path().join("merged/notes.txt")).unwrap(),
            "x"
        );
    }

    // SIGKILL cannot be caught: its temporary file stays until the next save into the folder.
    let work = tempfile::tempdir().unwrap();
    let mut child = start_slow_save(work.path(), plugin.path(), cp);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!hidden_under(work.path()).is_empty());
    let run = run_configs(
        work.path(),
        cp,
        &["modelpool=tiny", "merged_model_save_path=merged"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(work.path().join("merged/model.safetensors").is_file());
    assert_eq!(hidden_under(work.path()), Vec::<String>::new());
}

#[test]
fn template_plugin_built_outside_the_workspace_runs_in_the_prebuilt_host() {
    let plugin = build_external_plugin(
        &root().join("plugins/example"),
        "my-interpolate",
        &root().join("plugin-api"),
    );
    let cfg = configs(&[(
        "method/interpolate.yaml",
        "_target_: interpolate\nalpha: 0.25\n",
    )]);
    let work = tempfile::tempdir().unwrap();
    let run = run_plugin_configs(
        work.path(),
        plugin.path(),
        cfg.path(),
        &[
            "modelpool=tiny",
            "method=interpolate",
            "merged_model_save_path=out.safetensors",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    // The plugin's tracing event reached the host's log, tagged with the plugin.
    assert!(
        run.stderr.contains("interpolating") && run.stderr.contains("my-interpolate"),
        "{}",
        run.stderr
    );

    let models: Vec<_> = ["_pretrained_", "task_a", "task_b", "task_c", "task_d"]
        .iter()
        .map(|m| read_f32(&data().join(format!("merge-tiny/models/{m}.safetensors"))))
        .collect();
    let merged = read_f32(&work.path().join("out.safetensors"));
    let alpha = 0.25f32;
    for (t, (name, _, got)) in merged.iter().enumerate() {
        for (i, g) in got.iter().enumerate() {
            let mean: f32 = models[1..].iter().map(|m| m[t].2[i]).sum::<f32>() / 4.0;
            let want = (1.0 - alpha) * models[0][t].2[i] + alpha * mean;
            assert!(
                (g - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{name}[{i}]: {g} vs {want}"
            );
        }
    }

    // A bad parameter is a config error naming it.
    let run = run_plugin_configs(
        work.path(),
        plugin.path(),
        cfg.path(),
        &["modelpool=tiny", "method=interpolate", "method.alpha=2"],
    );
    run.assert_clean_failure(2);
    assert!(
        run.error()
            .contains("`alpha` must be between 0 and 1, got 2"),
        "{}",
        run.stderr
    );
}

#[test]
fn panicking_plugin_gives_an_error_naming_it_and_no_trace() {
    let plugin = testkit_plugin();
    let dir = plugin.path().to_str().unwrap();
    let cfg = configs(&[]);
    let cp = cfg.path().to_str().unwrap();
    for (stage, needle) in [
        ("run", "index out of bounds"),
        ("construct", "deliberate panic while constructing"),
        ("data", "deliberate panic while reading"),
    ] {
        let work = tempfile::tempdir().unwrap();
        let run = run_plugin_configs(
            work.path(),
            dir,
            cp,
            &[
                "modelpool=tiny",
                "method._target_=panicky",
                &format!("+method.panic_in={stage}"),
                "merged_model_save_path=merged",
            ],
        );
        run.assert_clean_failure(1);
        let err = run.error();
        // Constructor and algorithm panics name the component; a panic inside a model the
        // component returned names the plugin that made the model.
        let origin = if stage == "data" {
            "plugin `fusion-testkit` panicked at src/lib.rs:"
        } else {
            "plugin `fusion-testkit` component `panicky` panicked at src/lib.rs:"
        };
        assert!(err.contains(origin), "{stage}: {err}");
        assert!(err.contains(needle), "{stage}: {err}");
        // Nothing half-written: no merged model, no report.
        let left = files_under(work.path());
        assert!(
            !left
                .iter()
                .any(|f| f.contains("merged") || f.ends_with("program_report.json")),
            "{stage}: {left:?}"
        );
    }
}

#[test]
fn the_context_carries_seed_fast_dev_run_and_the_config() {
    let plugin = testkit_plugin();
    let cfg = configs(&[(
        "taskpool/probe.yaml",
        "_target_: probe\nbatch_size: 16\nnested: {a: [1, 2]}\nname: ${.batch_size}\n",
    )]);
    let work = tempfile::tempdir().unwrap();
    let run = run_plugin_configs(
        work.path(),
        plugin.path(),
        cfg.path(),
        &[
            "modelpool=tiny",
            "taskpool=probe",
            "seed=42",
            "fast_dev_run=true",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = json(&run.stdout);
    assert_eq!(report["seed"], 42);
    assert_eq!(report["fast_dev_run"], true);
    assert_eq!(report["config"]["nested"]["a"], serde_json::json!([1, 2]));
    assert_eq!(
        report["config"]["name"], 16,
        "interpolations are resolved before the component sees them"
    );
    let base = read_f32(&data().join("merge-tiny/models/_pretrained_.safetensors"));
    assert_probe_read(&report, &base);
    // Plugin logs reach the host at their level, with their fields.
    assert!(
        run.stderr.contains("probe evaluating") && run.stderr.contains("probe-warn"),
        "{}",
        run.stderr
    );
}

/// A run that saves and evaluates computes each merged tensor once (issue 15): the evaluation
/// reads the checkpoint just written. The testkit's `once` method fails on a second read of a
/// tensor; the probe task pool reads the first tensor after the save.
#[test]
fn a_run_that_saves_and_evaluates_computes_each_tensor_once() {
    let plugin = testkit_plugin();
    let cfg = configs(&[("taskpool/probe.yaml", "_target_: probe\n")]);
    let work = tempfile::tempdir().unwrap();
    let base = read_f32(&data().join("merge-tiny/models/_pretrained_.safetensors"));
    for dest in ["merged", "single/merged.safetensors"] {
        let run = run_plugin_configs(
            work.path(),
            plugin.path(),
            cfg.path(),
            &[
                "modelpool=tiny",
                "method._target_=once",
                "taskpool=probe",
                &format!("merged_model_save_path={dest}"),
            ],
        );
        assert_eq!(run.code, 0, "{dest}: {}", run.stderr);
        let report = json(&run.stdout);
        assert_probe_read(&report, &base);
    }
    // Without a save, the merged model itself is evaluated (and computed once as well).
    let run = run_plugin_configs(
        work.path(),
        plugin.path(),
        cfg.path(),
        &["modelpool=tiny", "method._target_=once", "taskpool=probe"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
}

/// A plugin built before plugin-api could return several models (its library lacks the
/// `fusion_plugin_models_v1` export) still loads, and its methods run for their one model.
#[test]
fn a_plugin_without_the_several_models_export_still_runs() {
    let api = modified_plugin_api(None, false);
    let export = api.path().join("plugin-api/src/export.rs");
    let src = std::fs::read_to_string(&export).unwrap();
    let start = src
        .find("        // How the host runs the algorithms for several models")
        .expect("the export's start");
    let end = src
        .find("        fn __fusion_root_module()")
        .expect("the export's end");
    std::fs::write(&export, format!("{}{}", &src[..start], &src[end..])).unwrap();
    let plugin = build_external_plugin(
        &root().join("tests/plugins/testkit"),
        "pre-models-plugin",
        &api.path().join("plugin-api"),
    );
    let lib = std::fs::read_dir(plugin.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("pre_models_plugin"))
        .expect("the built library");
    let bytes = std::fs::read(&lib).unwrap();
    assert!(
        !bytes
            .windows(b"fusion_plugin_models_v1".len())
            .any(|w| w == b"fusion_plugin_models_v1"),
        "the library still exports the several-models symbol"
    );
    let cfg = configs(&[("taskpool/probe.yaml", "_target_: probe\n")]);
    let work = tempfile::tempdir().unwrap();
    let run = run_plugin_configs(
        work.path(),
        plugin.path(),
        cfg.path(),
        &[
            "modelpool=tiny",
            "method._target_=once",
            "taskpool=probe",
            "merged_model_save_path=merged",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = json(&run.stdout);
    assert!(report["first_tensor"].is_string(), "{report}");
    assert!(work.path().join("merged/model.safetensors").is_file());
}

/// TSV-M with `return_single_task_models: true` returns a model per task beside `merged`; the
/// host evaluates each with the CLIP task pool and reports them under their names (FusionBench's
/// report for a dict of models), saves each into its own folder, and `merged` scores exactly as
/// the method does without the flag. Two of the demo's six tasks keep the test short.
#[test]
fn a_method_that_returns_several_models_gets_each_evaluated_and_saved() {
    let out = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = [
        "--device",
        "cpu",
        "modelpool=CLIPVisionModelPool/demo",
        "taskpool=CLIPVisionModelTaskPool/demo",
        "method=task_singular_vector/TaskSingularVectorMerging",
        "~modelpool.models.fashion_negative",
        "~modelpool.models.digits_low",
        "~modelpool.models.digits_high",
        "~modelpool.models.digits_negative",
        "print_config=false",
    ]
    .map(String::from)
    .to_vec();
    args.push(format!(
        "path.log_dir={}",
        out.path().join("logs_plain").display()
    ));
    let plain = run_args(&root(), &args);
    assert_eq!(plain.code, 0, "{}", plain.stderr);
    let plain = json(&plain.stdout);
    args.pop();
    args.extend([
        "method.return_single_task_models=true".to_string(),
        format!(
            "merged_model_save_path={}",
            out.path().join("saved").display()
        ),
        format!("path.log_dir={}", out.path().join("logs").display()),
    ]);
    let run = run_args(&root(), &args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = json(&run.stdout);
    let names: Vec<&String> = report.as_object().unwrap().keys().collect();
    assert_eq!(
        names,
        ["fashion_tops", "fashion_other", "merged"],
        "{report}"
    );
    for name in ["fashion_tops", "fashion_other", "merged"] {
        let saved = out.path().join("saved").join(name);
        assert!(
            saved.join("model.safetensors").is_file() && saved.join("config.json").is_file(),
            "{name} is not saved in {}",
            saved.display()
        );
        assert!(report[name]["average"]["accuracy"].is_number(), "{report}");
        assert!(
            run.stderr.contains(&format!("model `{name}`")),
            "a table per model: {}",
            run.stderr
        );
    }
    for task in ["fashion_tops", "digits_low", "average"] {
        assert_eq!(
            report["merged"][task]["accuracy"], plain[task]["accuracy"],
            "{task}: {report} vs {plain}"
        );
        assert_eq!(
            report["merged"][task]["loss"], plain[task]["loss"],
            "{task}"
        );
    }
    assert_ne!(
        report["fashion_tops"]["fashion_tops"]["loss"], report["merged"]["fashion_tops"]["loss"],
        "a single-task model is not the merged model"
    );
}

/// Ensembles on the demo, from FusionBench's `ensemble/*` configs: nothing is merged, and the
/// CLIP task pool combines the members' pooled outputs before the projection. A weighted
/// ensemble with weights [1, 0] ([0, 1]) scores as its first (second) member alone; the mean
/// and the maximum of two members score as neither, and count both members' parameters.
#[test]
fn ensembles_combine_their_members_outputs_in_the_clip_task_pool() {
    let out = tempfile::tempdir().unwrap();
    let run = |keep: &[&str], method: &[&str], tag: &str| -> Value {
        let mut args: Vec<String> = [
            "--device",
            "cpu",
            "modelpool=CLIPVisionModelPool/demo",
            "taskpool=CLIPVisionModelTaskPool/demo",
            "print_config=false",
        ]
        .map(String::from)
        .to_vec();
        for m in [
            "_pretrained_",
            "fashion_tops",
            "fashion_other",
            "fashion_negative",
            "digits_low",
            "digits_high",
            "digits_negative",
        ] {
            if !keep.contains(&m) {
                args.push(format!("~modelpool.models.{m}"));
            }
        }
        args.extend(method.iter().map(|m| m.to_string()));
        args.push(format!("path.log_dir={}", out.path().join(tag).display()));
        let r = run_args(&root(), &args);
        assert_eq!(r.code, 0, "{tag}: {}", r.stderr);
        json(&r.stdout)
    };
    let tasks = ["fashion_tops", "digits_low", "fashion_other", "average"];
    let same = |a: &Value, b: &Value, what: &str| {
        for t in tasks {
            assert_eq!(a[t]["accuracy"], b[t]["accuracy"], "{what}: {t}");
            let (la, lb) = (
                a[t]["loss"].as_f64().unwrap(),
                b[t]["loss"].as_f64().unwrap(),
            );
            assert!((la - lb).abs() < 1e-4, "{what}: {t} loss {la} vs {lb}");
        }
    };
    let a = run(&["fashion_tops"], &["method=dummy"], "a");
    let b = run(&["digits_low"], &["method=dummy"], "b");
    let both = ["fashion_tops", "digits_low"];
    let first = run(
        &both,
        &["method=ensemble/weighted_ensemble", "method.weights=[1,0]"],
        "first",
    );
    same(&first, &a, "weights [1, 0]");
    let second = run(
        &both,
        &["method=ensemble/weighted_ensemble", "method.weights=[0,1]"],
        "second",
    );
    same(&second, &b, "weights [0, 1]");
    // One weight per model, or a clear error before any work.
    let mut bad: Vec<String> = [
        "--device",
        "cpu",
        "modelpool=CLIPVisionModelPool/demo",
        "taskpool=CLIPVisionModelTaskPool/demo",
        "method=ensemble/weighted_ensemble",
        "method.weights=[1,2,3]",
    ]
    .map(String::from)
    .to_vec();
    bad.push(format!("path.log_dir={}", out.path().join("bad").display()));
    let failed = run_args(&root(), &bad);
    assert_eq!(failed.code, 2, "{}", failed.stderr);
    assert!(
        failed
            .error()
            .contains("`weights` has 3 values for the 6 models"),
        "{}",
        failed.stderr
    );
    let params = a["model_info"]["all_params"].as_u64().unwrap();
    for method in ["ensemble/simple_ensemble", "ensemble/max_model_predictor"] {
        let r = run(&both, &[&format!("method={method}")], method);
        assert_eq!(r["model_info"]["all_params"].as_u64(), Some(2 * params));
        for single in [&a, &b] {
            assert_ne!(
                r["average"]["loss"], single["average"]["loss"],
                "{method} scores as one of its members"
            );
        }
    }
}

#[test]
fn a_plugin_built_against_another_plugin_api_version_is_refused() {
    let api = modified_plugin_api(Some("0.0.9"), false);
    // The testkit's targets exist nowhere else (the template's are also in the workspace build).
    let plugin = build_external_plugin(
        &root().join("tests/plugins/testkit"),
        "old-api-plugin",
        &api.path().join("plugin-api"),
    );
    let work = tempfile::tempdir().unwrap();
    let run = run_host(
        work.path(),
        &["--plugin-dir", plugin.path().to_str().unwrap(), "plugins"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("refused:") && run.stdout.contains("libold_api_plugin"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("plugin-api 0.0.9") && run.stdout.contains("plugin-api 0.1.0"),
        "{}",
        run.stdout
    );
    // The other plugins still load.
    assert!(
        run.stdout.contains("fusion.modelpool.BaseModelPool")
            || run.stdout.contains("fusion_bench.modelpool.BaseModelPool")
    );

    let cfg = configs(&[]);
    let run = run_plugin_configs(
        work.path(),
        plugin.path(),
        cfg.path(),
        &["modelpool=tiny", "method._target_=panicky"],
    );
    run.assert_clean_failure(2);
    assert!(
        run.error().contains("unknown algorithm target `panicky`"),
        "{}",
        run.stderr
    );
    assert!(
        run.error().contains("0.0.9"),
        "the refused plugin is named: {}",
        run.stderr
    );
}

#[test]
fn a_plugin_with_another_abi_layout_is_refused() {
    let api = modified_plugin_api(None, true);
    let plugin = build_external_plugin(
        &root().join("plugins/example"),
        "other-abi-plugin",
        &api.path().join("plugin-api"),
    );
    let work = tempfile::tempdir().unwrap();
    let run = run_host(
        work.path(),
        &["--plugin-dir", plugin.path().to_str().unwrap(), "plugins"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("refused:") && run.stdout.contains("libother_abi_plugin"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("does not match the ABI"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("dummy | fusion_bench.method.DummyAlgorithm"),
        "{}",
        run.stdout
    );
}

#[test]
fn v01_name_and_type_keys_resolve_through_the_alias_table() {
    let cfg = configs(&[
        ("method/old.yaml", "name: dummy\n"),
        ("taskpool/old.yaml", "type: dummy\n"),
    ]);
    let work = tempfile::tempdir().unwrap();
    let run = run_configs(
        work.path(),
        cfg.path(),
        &["modelpool=tiny", "method=old", "taskpool=old"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        json(&run.stdout)["model_info"]["all_params"],
        tiny_param_count()
    );
    assert!(
        run.stderr.contains("v0.1"),
        "a deprecation note: {}",
        run.stderr
    );
}

#[test]
fn dry_run_resolves_everything_and_writes_nothing() {
    let cfg = configs(&[]);
    let work = tempfile::tempdir().unwrap();
    let run = run_configs(work.path(), cfg.path(), &["modelpool=tiny", "dry_run=true"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.is_empty());
    assert!(!work.path().join("outputs").exists());
    // ... but an unknown target is still caught.
    let run = run_configs(
        work.path(),
        cfg.path(),
        &["modelpool=tiny", "dry_run=true", "method._target_=nope"],
    );
    run.assert_clean_failure(2);
}

// ---- bad input: one paragraph, non-zero exit, no trace, nothing half-written ----------------

#[test]
fn malformed_yaml_names_the_file_and_line() {
    let cfg = configs(&[(
        "method/broken.yaml",
        "_target_: dummy\nscaling_factor: [0.3\nthreshold: 20\n",
    )]);
    let work = tempfile::tempdir().unwrap();
    let run = run_configs(
        work.path(),
        cfg.path(),
        &["modelpool=tiny", "method=broken"],
    );
    run.assert_clean_failure(2);
    let err = run.error();
    assert!(err.contains("broken.yaml"), "{err}");
    assert!(err.contains("line 3") || err.contains(":3:"), "{err}");
    assert!(!work.path().join("outputs").exists());
}

#[test]
fn unknown_group_option_lists_the_options() {
    let cfg = configs(&[]);
    let work = tempfile::tempdir().unwrap();
    let run = run_configs(work.path(), cfg.path(), &["modelpool=tiny", "method=dumy"]);
    run.assert_clean_failure(2);
    let err = run.error();
    assert!(err.contains("dumy") && err.contains("dummy"), "{err}");
}

#[test]
fn unknown_target_lists_the_closest_known_targets() {
    let cfg = configs(&[]);
    let work = tempfile::tempdir().unwrap();
    let run = run_configs(
        work.path(),
        cfg.path(),
        &[
            "modelpool=tiny",
            "method._target_=fusion_bench.method.DumyAlgorithm",
        ],
    );
    run.assert_clean_failure(2);
    let err = run.error();
    assert!(
        err.contains("unknown algorithm target `fusion_bench.method.DumyAlgorithm`"),
        "{err}"
    );
    assert!(
        err.contains("closest known targets: fusion_bench.method.DummyAlgorithm"),
        "{err}"
    );
    // A target of the wrong kind says so.
    let run = run_configs(
        work.path(),
        cfg.path(),
        &[
            "modelpool=tiny",
            "method._target_=fusion_bench.modelpool.BaseModelPool",
        ],
    );
    run.assert_clean_failure(2);
    assert!(run.error().contains("is a modelpool"), "{}", run.stderr);
}

#[test]
fn a_missing_mandatory_value_is_named() {
    let cfg = configs(&[(
        "taskpool/needs.yaml",
        "_target_: dummy\ntest_datasets: ???\n",
    )]);
    let work = tempfile::tempdir().unwrap();
    let run = run_configs(
        work.path(),
        cfg.path(),
        &["modelpool=tiny", "taskpool=needs"],
    );
    run.assert_clean_failure(2);
    assert!(
        run.error().contains("taskpool.test_datasets"),
        "{}",
        run.stderr
    );
    assert!(!work.path().join("outputs").exists());
}

#[test]
fn overriding_a_key_that_does_not_exist_suggests_plus() {
    let cfg = configs(&[]);
    let work = tempfile::tempdir().unwrap();
    let run = run_configs(
        work.path(),
        cfg.path(),
        &["modelpool=tiny", "method.scaling_factor=0.5"],
    );
    run.assert_clean_failure(2);
    assert!(
        run.error().contains("+method.scaling_factor"),
        "{}",
        run.stderr
    );
}

#[test]
fn missing_and_truncated_checkpoints_are_named() {
    let work = tempfile::tempdir().unwrap();
    let bad = work.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let full = std::fs::read(data().join("merge-tiny/models/task_a.safetensors")).unwrap();
    std::fs::write(bad.join("truncated.safetensors"), &full[..full.len() - 100]).unwrap();
    let pool = |entry: &str| {
        format!(
            "_target_: fusion_bench.modelpool.BaseModelPool\nmodels:\n  _pretrained_: {}\n",
            entry
        )
    };
    let missing = bad.join("nowhere.safetensors");
    let truncated = bad.join("truncated.safetensors");
    for (entry, needle) in [
        (
            missing.display().to_string(),
            format!("checkpoint not found: {}", missing.display()),
        ),
        (
            truncated.display().to_string(),
            format!(
                "{} is not a valid safetensors file (truncated or corrupt?)",
                truncated.display()
            ),
        ),
    ] {
        let cfg = configs(&[("modelpool/bad.yaml", &pool(&entry))]);
        let run = run_configs(
            work.path(),
            cfg.path(),
            &["modelpool=bad", "merged_model_save_path=merged"],
        );
        run.assert_clean_failure(1);
        assert!(run.error().contains(&needle), "{}", run.stderr);
        assert!(
            run.error().contains("model `_pretrained_`"),
            "{}",
            run.stderr
        );
        assert!(!work.path().join("merged").exists());
    }
}

#[test]
fn embed_matches_the_transformers_golden_outputs() {
    let golden_dir = root().join("plugins/lib/clip/tests/data/clip-tiny");
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("emb.safetensors");
    let run = run_host(
        work.path(),
        &[
            "--device",
            "cpu",
            "embed",
            "--model",
            golden_dir.join("model").to_str().unwrap(),
            "--inputs",
            golden_dir.join("golden.safetensors").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        !run.stderr.contains("error"),
        "stderr carries no errors: {}",
        run.stderr
    );
    let golden = read_f32(&golden_dir.join("golden.safetensors"));
    let got = read_f32(&out);
    for name in [
        "image_embeds",
        "text_embeds",
        "logits_per_image",
        "pixel_values",
    ] {
        let g = golden.iter().find(|t| t.0 == name).unwrap();
        let o = got
            .iter()
            .find(|t| t.0 == name)
            .unwrap_or_else(|| panic!("{name} not written"));
        assert_eq!(g.1, o.1, "{name} shape");
        let worst =
            g.2.iter()
                .zip(&o.2)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
        assert!(worst <= 1e-4, "{name}: max abs error {worst}");
    }

    // From the PNG files and the texts, through fusion-host's own preprocessing and tokenizer.
    let images: Vec<String> = (0..6)
        .map(|i| {
            golden_dir
                .join(format!("images/{i}.png"))
                .display()
                .to_string()
        })
        .collect();
    let mut args = vec!["--device", "cpu", "embed", "--model"];
    let model = golden_dir.join("model").display().to_string();
    args.push(&model);
    args.push("--images");
    args.extend(images.iter().map(String::as_str));
    args.extend([
        "--texts",
        "a photo of a t-shirt.",
        "a photo of a trouser.",
        "--out",
    ]);
    let out2 = work.path().join("emb2.safetensors").display().to_string();
    args.push(&out2);
    let run = run_host(work.path(), &args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let got = read_f32(Path::new(&out2));
    let g = golden.iter().find(|t| t.0 == "image_embeds").unwrap();
    let o = got.iter().find(|t| t.0 == "image_embeds").unwrap();
    let worst =
        g.2.iter()
            .zip(&o.2)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
    assert!(worst <= 1e-4, "image_embeds from PNGs: {worst}");
    let logits = got.iter().find(|t| t.0 == "logits_per_image").unwrap();
    assert_eq!(logits.1, vec![6, 2]);
}

/// `fusion-host NAME ...` runs `fusion-host-NAME` (beside the host, else on PATH) with the
/// arguments after NAME and the host's `--device` as FUSION_DEVICE, exiting with its code; a
/// NAME with no executable is a usage error that says where it looked.
#[test]
fn unknown_commands_run_fusion_host_name_from_path_or_are_named() {
    let work = tempfile::tempdir().unwrap();
    let bin = work.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let script = bin.join("fusion-host-hello");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"args: $*; device: $FUSION_DEVICE\"\nexit 7\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = run_host_env(
        work.path(),
        &["--device", "cpu", "hello", "a", "--b", "c=d"],
        &[("PATH", &path)],
    );
    assert_eq!(run.code, 7, "{}", run.stderr);
    assert_eq!(run.stdout.trim(), "args: a --b c=d; device: cpu");

    let run = run_host(work.path(), &["hello"]);
    run.assert_clean_failure(2);
    assert!(
        run.error().contains("no such command `hello`")
            && run.error().contains("fusion-host-hello")
            && run.error().contains("on PATH"),
        "{}",
        run.stderr
    );
    // Overrides are still overrides, and options for runs are refused before a command.
    let run = run_host_env(
        work.path(),
        &["--config-name", "x", "hello"],
        &[("PATH", &path)],
    );
    run.assert_clean_failure(2);
    assert!(run.error().contains("--config-name"), "{}", run.stderr);
}

/// `fusion-host bench all --quick`: every figure measured, positive and finite, in the JSON
/// record with the adapter, driver and versions, and in the markdown table; `--compare` of a
/// record with itself gives ratios of 1. (No timing is asserted.)
#[test]
fn bench_quick_writes_a_record_with_every_figure() {
    let work = tempfile::tempdir().unwrap();
    let json_path = work.path().join("bench.json");
    let run = run_host(
        work.path(),
        &[
            "--device",
            "cpu",
            "bench",
            "all",
            "--quick",
            "--json",
            json_path.to_str().unwrap(),
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let record = json(&std::fs::read_to_string(&json_path).unwrap());
    assert_eq!(record["format"], "fusion-host-bench/1");
    assert_eq!(record["quick"], true);
    assert_eq!(record["versions"]["fusion-host"], env!("CARGO_PKG_VERSION"));
    assert!(record["versions"]["wgpu"]
        .as_str()
        .is_some_and(|v| !v.is_empty()));
    for field in ["name", "backend", "device_type", "driver_info"] {
        assert!(
            record["adapter"][field]
                .as_str()
                .is_some_and(|v| !v.is_empty()),
            "adapter.{field}: {record}"
        );
    }
    assert!(record["date"].as_str().is_some_and(|d| d.ends_with('Z')));
    let figures = record["figures"].as_array().unwrap();
    for (suite, name, unit) in [
        ("kernels", "copy", "GB/s"),
        ("kernels", "weighted_sum_4", "GB/s"),
        ("kernels", "matmul_f32", "GFLOP/s"),
        ("merge", "task_arithmetic", "GB/s"),
        ("merge", "ties_merging", "GB/s"),
        ("clip", "vision_images", "images/s"),
    ] {
        let f = figures
            .iter()
            .find(|f| f["suite"] == suite && f["name"] == name)
            .unwrap_or_else(|| panic!("no {suite}/{name} in {record}"));
        assert_eq!(f["unit"], unit);
        for key in ["value", "seconds"] {
            let v = f[key].as_f64().unwrap();
            assert!(v.is_finite() && v > 0.0, "{suite}/{name} {key} = {v}");
        }
        assert!(
            run.stdout
                .lines()
                .any(|l| l.starts_with(&format!("| {suite} | {name} | "))),
            "{}",
            run.stdout
        );
    }
    assert_eq!(figures.len(), 6, "{record}");

    let p = json_path.to_str().unwrap();
    let run = run_host(work.path(), &["bench", "--compare", p, p]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let rows: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| {
            l.starts_with("| kernels") || l.starts_with("| merge") || l.starts_with("| clip")
        })
        .collect();
    assert_eq!(rows.len(), 6, "{}", run.stdout);
    assert!(
        rows.iter().all(|r| r.ends_with("| 1.00 |")),
        "{}",
        run.stdout
    );

    // A file that is not a record is named.
    std::fs::write(work.path().join("x.json"), "{}").unwrap();
    let run = run_host(work.path(), &["bench", "--compare", p, "x.json"]);
    run.assert_clean_failure(2);
    assert!(
        run.error()
            .contains("x.json is not a fusion-host bench record"),
        "{}",
        run.stderr
    );
    // A --json target that cannot be written is refused before anything is measured.
    let missing = work.path().join("no-such-folder/bench.json");
    let run = run_host(work.path(), &["bench", "--json", missing.to_str().unwrap()]);
    run.assert_clean_failure(2);
    assert!(run.error().contains("no folder"), "{}", run.stderr);
    assert!(!run.stderr.contains("measured"), "{}", run.stderr);
}

/// TIES through the host, streamed and with task vectors kept on the device between passes
/// (`FUSION_DEVICE_CACHE`; on lavapipe only merged tensors and elected sums are kept by
/// default): all of them
/// (merged by the multi-input kernels), and a budget that holds only some (both paths in one
/// run), must give the same tensors as fusion-bench, for each `merge_func`.
#[test]
fn ties_merging_through_the_host_matches_fusion_bench() {
    let cfg = configs(&[]);
    // (budget, merge_func with its golden case's scaling factor and threshold, tensors cached
    // after the passes: 10 keys x (4 task vectors + the base + the elected sum); "" for some
    // but not all). `auto` keeps only the 10 merged tensors on lavapipe (each key is merged in
    // the sign-election pass); `0` nothing.
    for (budget, (merge, lambda, threshold), cached) in [
        ("auto", ("sum", "0.3", "20"), "10"),
        ("0", ("sum", "0.3", "20"), "0"),
        ("64M", ("sum", "0.3", "20"), "60"),
        ("60K", ("sum", "0.3", "20"), ""),
        ("64M", ("mean", "0.7", "30"), "60"),
        ("60K", ("max", "0.5", "10"), ""),
    ] {
        let want = read_f32(&data().join(format!(
            "merge-tiny/expected/ties_merging_{merge}.safetensors"
        )));
        let merge_args = [
            format!("method.merge_func={merge}"),
            format!("method.scaling_factor={lambda}"),
            format!("method.threshold={threshold}"),
        ];
        let work = tempfile::tempdir().unwrap();
        let env = [("FUSION_DEVICE_CACHE", budget)];
        let run = run_host_env(
            work.path(),
            &[
                "--device",
                "cpu",
                "--config-path",
                cfg.path().to_str().unwrap(),
                "modelpool=tiny",
                "method=ties_merging",
                &merge_args[0],
                &merge_args[1],
                &merge_args[2],
                "merged_model_save_path=ties.safetensors",
            ],
            &env,
        );
        assert_eq!(run.code, 0, "{budget}: {}", run.stderr);
        let got_cached = run.log_field("cached_tensors").to_string();
        if cached.is_empty() {
            let k: usize = got_cached.parse().unwrap();
            assert!(
                (1..60).contains(&k),
                "{budget}: {k} tensors cached, expected some"
            );
        } else {
            assert_eq!(got_cached, cached, "{budget}");
        }
        let got = read_f32(&work.path().join("ties.safetensors"));
        assert_eq!(got.len(), want.len());
        for ((n1, s1, v1), (n2, s2, v2)) in got.iter().zip(&want) {
            assert_eq!((n1, s1), (n2, s2));
            let scale = v2.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
            let worst = v1
                .iter()
                .zip(v2)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst / scale <= 1e-5,
                "{budget} {n1}: relative error {}",
                worst / scale
            );
        }
    }
}

/// TIES merges each tensor in its sign-election pass, before the majority sign is known, with
/// majority +1; a tensor with entries whose elected sum is 0 and where the majority decides is
/// merged again once it is known. Two tensors: `a` votes the majority (negative, or positive
/// with `flip`), `b` has entries where two models cancel exactly. Every `merge_func` must match
/// FusionBench's formulas computed here and the merge with nothing kept between passes.
#[test]
fn ties_early_merges_are_redone_where_the_majority_sign_decides() {
    let dir = tempfile::tempdir().unwrap();
    let zeros = vec![0.0f32; 8];
    let b_rows = [
        [1.0, -1.0, 0.5, 0.25, 0.0, 2.0, -0.75, 0.0],
        [-1.0, 1.0, -0.5, 0.0, 0.0, -2.0, 0.75, 0.0],
        [0.0, 0.0, 0.0, -0.25, 0.0, 0.0, 0.0, 0.125],
    ];
    for flip in [1.0f32, -1.0] {
        let a_rows: Vec<Vec<f32>> = (0..3)
            .map(|i| {
                (0..8)
                    .map(|j| flip * -(1.0 + (i + j) as f32 * 0.125))
                    .collect()
            })
            .collect();
        let mut pool = String::from("_target_: fusion_bench.modelpool.BaseModelPool\nmodels:\n");
        let base = dir.path().join("base.safetensors");
        write_f32(
            &base,
            &[
                ("a", vec![8], zeros.clone()),
                ("b", vec![2, 4], zeros.clone()),
            ],
        );
        pool.push_str(&format!("  _pretrained_: {}\n", base.display()));
        for i in 0..3 {
            let path = dir.path().join(format!("m{i}_{flip}.safetensors"));
            write_f32(
                &path,
                &[
                    ("a", vec![8], a_rows[i].clone()),
                    ("b", vec![2, 4], b_rows[i].to_vec()),
                ],
            );
            pool.push_str(&format!("  m{i}: {}\n", path.display()));
        }
        let cfg = tempfile::tempdir().unwrap();
        write_configs(cfg.path(), &[("modelpool/cancel.yaml", &pool)]);
        for merge in ["sum", "mean", "max"] {
            // FusionBench's formulas; threshold 100 keeps every entry.
            let rows: Vec<Vec<f32>> = (0..3)
                .map(|i| a_rows[i].iter().chain(&b_rows[i]).copied().collect())
                .collect();
            let sums: Vec<f32> = (0..16).map(|j| rows.iter().map(|r| r[j]).sum()).collect();
            let signs: f32 = sums
                .iter()
                .map(|&s| {
                    if s > 0.0 {
                        1.0
                    } else if s < 0.0 {
                        -1.0
                    } else {
                        0.0
                    }
                })
                .sum();
            let majority = if signs > 0.0 {
                1.0
            } else if signs < 0.0 {
                -1.0
            } else {
                0.0
            };
            assert_eq!(majority, -flip);
            let want: Vec<f32> = (0..16)
                .map(|j| {
                    let s = if sums[j] > 0.0 {
                        1.0
                    } else if sums[j] < 0.0 {
                        -1.0
                    } else {
                        majority
                    };
                    let kept: Vec<f32> = rows
                        .iter()
                        .map(|r| r[j])
                        .filter(|&v| if s > 0.0 { v > 0.0 } else { v < 0.0 })
                        .collect();
                    let m = match merge {
                        "sum" => kept.iter().sum(),
                        "mean" => kept.iter().sum::<f32>() / kept.len().max(1) as f32,
                        _ => kept.iter().fold(0.0f32, |m, v| m.max(v.abs())) * s,
                    };
                    0.0 + 0.5 * m
                })
                .collect();
            for budget in ["auto", "0"] {
                let work = tempfile::tempdir().unwrap();
                let merge_arg = format!("method.merge_func={merge}");
                let run = run_host_env(
                    work.path(),
                    &[
                        "--device",
                        "cpu",
                        "--config-path",
                        cfg.path().to_str().unwrap(),
                        "modelpool=cancel",
                        "method=ties_merging",
                        &merge_arg,
                        "method.scaling_factor=0.5",
                        "method.threshold=100",
                        "merged_model_save_path=out.safetensors",
                    ],
                    &[("FUSION_DEVICE_CACHE", budget)],
                );
                assert_eq!(run.code, 0, "{merge} {budget}: {}", run.stderr);
                let early = run.log_field("merged_early").to_string();
                let redone = run.stderr.contains("they are merged again");
                // With the majority +1 both early merges stand; otherwise `b`, which has
                // entries with a zero sum, is merged again (`a` has none).
                let (want_early, want_redone) = match (budget, flip > 0.0) {
                    ("0", _) => ("0", false),
                    (_, true) => ("1", true),
                    (_, false) => ("2", false),
                };
                assert_eq!(
                    (early.as_str(), redone),
                    (want_early, want_redone),
                    "{merge} {budget} flip {flip}:\n{}",
                    run.stderr
                );
                let got = read_f32(&work.path().join("out.safetensors"));
                let flat: Vec<f32> = got.iter().flat_map(|t| t.2.clone()).collect();
                assert_eq!(flat, want, "{merge} {budget} flip {flip}");
            }
        }
    }
}

/// TIES from one read of the models (thresholds settled in ranges guessed from a sample, every
/// other entry here, the models having 2^21 + 11 entries; the positions the ranges leave open
/// merged again) equals the strict streaming schedule (radix select, then election), bit for
/// bit in the merged model, also where the sample misleads: model `m0` of the "adversarial"
/// pool has large values exactly at the sampled positions, so its guess misses, the one read
/// is thrown away and it takes the radix passes.
#[test]
fn ties_thresholds_from_a_sampled_range_equal_the_radix_select() {
    let n = (1usize << 21) + 6;
    // A reproducible value in [-1, 1) for entry `j` of stream `s`.
    let noise = |j: usize, s: u64| {
        let h = (j as u64 ^ (s << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
        h as f32 / (1u64 << 23) as f32 - 1.0
    };
    let dir = tempfile::tempdir().unwrap();
    // Where every guess holds, one read of the models does it all; where one misses, that
    // read is thrown away and the thresholds come from the bracket and radix passes.
    let one_read = "TIES: thresholds, election and merge in one read of the models";
    let missed = "a threshold lies outside the range its sample gave";
    let settled_1_of_2 = "TIES thresholds: 1 of 2 models settled in one pass";
    for (case, lines) in [
        ("random", &[one_read][..]),
        ("adversarial", &[missed, settled_1_of_2][..]),
    ] {
        let mut pool = String::from("_target_: fusion_bench.modelpool.BaseModelPool\nmodels:\n");
        let base = dir.path().join(format!("{case}_base.safetensors"));
        let base_w: Vec<f32> = (0..n).map(|j| 0.01 * noise(j, 7)).collect();
        write_f32(
            &base,
            &[("v", vec![5], vec![0.0; 5]), ("w", vec![n], base_w.clone())],
        );
        pool.push_str(&format!("  _pretrained_: {}\n", base.display()));
        for m in 0..2u64 {
            // `v` comes first in the flattened row: entry j of `w` is at position j + 5, and
            // the sample takes the even positions.
            let w: Vec<f32> = (0..n)
                .map(|j| {
                    let d = if case == "adversarial" && m == 0 {
                        if (j + 5) % 2 == 0 {
                            1.0 + 0.5 * noise(j, m)
                        } else {
                            0.001 * noise(j, m)
                        }
                    } else {
                        noise(j, m)
                    };
                    base_w[j] + d
                })
                .collect();
            let v: Vec<f32> = (0..5).map(|j| noise(j, 10 + m)).collect();
            let path = dir.path().join(format!("{case}_m{m}.safetensors"));
            write_f32(&path, &[("v", vec![5], v), ("w", vec![n], w)]);
            pool.push_str(&format!("  m{m}: {}\n", path.display()));
        }
        let cfg = tempfile::tempdir().unwrap();
        write_configs(cfg.path(), &[("modelpool/big.yaml", &pool)]);
        let mut outputs = Vec::new();
        // FUSION_DEVICE_CACHE=0 streams strictly: radix passes, no guess.
        for budget in ["auto", "0"] {
            let work = tempfile::tempdir().unwrap();
            let run = run_host_env(
                work.path(),
                &[
                    "--device",
                    "cpu",
                    "--config-path",
                    cfg.path().to_str().unwrap(),
                    "modelpool=big",
                    "method=ties_merging",
                    "merged_model_save_path=out.safetensors",
                ],
                &[("FUSION_DEVICE_CACHE", budget)],
            );
            assert_eq!(run.code, 0, "{case} {budget}: {}", run.stderr);
            for line in lines {
                assert_eq!(
                    run.stderr.contains(line),
                    budget == "auto",
                    "{case} {budget}: expected `{line}` only with the cache on:\n{}",
                    run.stderr
                );
            }
            if lines.contains(&one_read) && budget == "auto" {
                // Some positions were left open by the ranges, and merged again.
                let redone: u64 = run.log_field("positions_redone").parse().unwrap();
                assert!(
                    redone > 0 && redone < n as u64 / 10,
                    "{case}: {redone} redone"
                );
            }
            outputs.push(std::fs::read(work.path().join("out.safetensors")).unwrap());
        }
        assert!(outputs[0] == outputs[1], "{case}: the merged models differ");
    }
}

/// A test set without samples is an error naming the task, not an accuracy of 0 that enters
/// the average.
#[test]
fn an_empty_test_set_is_an_error_naming_the_task() {
    let data_dir = tempfile::tempdir().unwrap();
    // IDX files (the MNIST format) holding no images.
    let mut images = vec![0u8, 0, 0x08, 3];
    for d in [0u32, 28, 28] {
        images.extend(d.to_be_bytes());
    }
    std::fs::write(data_dir.path().join("t10k-images-idx3-ubyte"), images).unwrap();
    let mut labels = vec![0u8, 0, 0x08, 1];
    labels.extend(0u32.to_be_bytes());
    std::fs::write(data_dir.path().join("t10k-labels-idx1-ubyte"), labels).unwrap();
    let demo =
        std::fs::read_to_string(root().join("configs/taskpool/CLIPVisionModelTaskPool/demo.yaml"))
            .unwrap();
    let empty = demo.replace(
        "path: demo/data/digits_high",
        &format!("path: {}", data_dir.path().display()),
    );
    assert_ne!(empty, demo);
    let cfg = configs(&[("taskpool/CLIPVisionModelTaskPool/empty.yaml", &empty)]);
    let run = run_host(
        &root(),
        &[
            "--device",
            "cpu",
            "--config-path",
            cfg.path().to_str().unwrap(),
            "modelpool=CLIPVisionModelPool/demo",
            "taskpool=CLIPVisionModelTaskPool/empty",
            "method=dummy",
            "print_config=false",
            "report_save_path=false",
        ],
    );
    run.assert_clean_failure(2);
    assert!(
        run.error().contains("task `digits_high`") && run.error().contains("has no samples"),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout.is_empty(),
        "a report was printed: {}",
        run.stdout
    );
}

/// The demo, as the README runs it: the shipped tiny CLIP pool merged by TIES and scored
/// zero-shot on the shipped test sets, against the same evaluation done in Python with
/// transformers (`demo/expected_results.json`, made by tools/make_demo.py).
#[test]
fn demo_matches_the_python_reference_and_merging_beats_pretrained() {
    let expected =
        json(&std::fs::read_to_string(root().join("demo/expected_results.json")).unwrap());
    let out = tempfile::tempdir().unwrap();
    let mut averages = Vec::new();
    for (method, key) in [
        ("ties_merging", "ties_merging(0.3)"),
        ("dummy", "pretrained"),
    ] {
        let report_path = out.path().join(format!("{method}.json"));
        let run = run_host(
            &root(),
            &[
                "--device",
                "cpu",
                "modelpool=CLIPVisionModelPool/demo",
                "taskpool=CLIPVisionModelTaskPool/demo",
                &format!("method={method}"),
                "print_config=false",
                &format!("report_save_path={}", report_path.display()),
            ],
        );
        assert_eq!(run.code, 0, "{method}: {}", run.stderr);
        let report = json(&run.stdout);
        let want = &expected["results"][key];
        for task in expected["tasks"].as_array().unwrap() {
            let task = task.as_str().unwrap();
            let (a, b) = (
                report[task]["accuracy"].as_f64().unwrap(),
                want[task]["accuracy"].as_f64().unwrap(),
            );
            // Same preprocessing and ~1e-6 forward agreement: at most a near-tie may flip.
            assert!(
                (a - b).abs() <= 2.0 / 256.0,
                "{method} {task}: accuracy {a} vs Python {b}"
            );
            let (l1, l2) = (
                report[task]["loss"].as_f64().unwrap(),
                want[task]["loss"].as_f64().unwrap(),
            );
            assert!(
                (l1 - l2).abs() <= 1e-3,
                "{method} {task}: loss {l1} vs Python {l2}"
            );
        }
        assert!(
            run.stderr.contains("average"),
            "the per-task table is printed: {}",
            run.stderr
        );
        averages.push(report["average"]["accuracy"].as_f64().unwrap());
    }
    assert!(
        averages[0] > averages[1],
        "TIES {} should beat the pretrained model {}",
        averages[0],
        averages[1]
    );
    // The runs wrote only under their own outputs: the report went where it was told.
    assert!(out.path().join("ties_merging.json").is_file());
}

// ---- reliability (issue 16): no abort, no panic, the culprit named, every run's records ------

/// The issue's setting: `--config-path cfg method=task_arithmetic modelpool=tiny taskpool=dummy`.
fn ta_args(cfg: &Path) -> Vec<String> {
    [
        "--config-path",
        cfg.to_str().unwrap(),
        "method=task_arithmetic",
        "modelpool=tiny",
        "taskpool=dummy",
        "print_config=false",
    ]
    .map(String::from)
    .to_vec()
}

fn run_args(cwd: &Path, args: &[String]) -> Run {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_host(cwd, &args)
}

/// The run folders under `outputs/fabric_model_fusion`.
fn run_dirs(work: &Path) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir(work.join("outputs/fabric_model_fusion"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs
}

#[test]
fn unbounded_input_is_refused_with_an_error_not_a_stack_overflow() {
    let mut chain = String::new();
    for i in 0..10_000 {
        chain.push_str(&format!("a{i}: ${{.a{}}}\n", i + 1));
    }
    chain.push_str("a10000: 1\n");
    let cfg = configs(&[
        ("loop.yaml", "defaults:\n  - loop\n  - _self_\n"),
        ("chain/long.yaml", &chain),
    ]);
    let work = tempfile::tempdir().unwrap();
    let cp = cfg.path().to_str().unwrap();
    let run = run_configs(work.path(), cp, &["--config-name", "loop"]);
    run.assert_clean_failure(2);
    assert!(
        run.error().contains("cycle") && run.error().contains("loop.yaml -> "),
        "{}",
        run.stderr
    );

    let deep_value = format!("+junk={}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_key = format!("+{}=1", vec!["k"; 20_000].join("."));
    for (what, args) in [
        ("value", vec!["modelpool=tiny", deep_value.as_str()]),
        ("key", vec!["modelpool=tiny", deep_key.as_str()]),
        ("interpolation chain", vec!["modelpool=tiny", "+chain=long"]),
    ] {
        let mut all = vec!["--config-path", cp, "dry_run=true"];
        all.extend(args);
        let run = run_host(work.path(), &all);
        run.assert_clean_failure(2);
        assert!(
            run.error().contains("more than 128 levels deep"),
            "{what}: {}",
            run.stderr
        );
        assert!(
            run.stderr.len() < 2000,
            "{what}: a short error: {}",
            run.stderr
        );
    }
    assert!(!work.path().join("outputs").exists());
}

#[cfg(unix)]
#[test]
fn an_argument_that_is_not_utf8_is_named() {
    use std::os::unix::ffi::OsStrExt;
    let work = tempfile::tempdir().unwrap();
    let out = host_command(work.path())
        .arg("--cfg")
        .arg("job")
        .arg(std::ffi::OsStr::from_bytes(b"+x=caf\xe9"))
        .output()
        .unwrap();
    let run = Run::of(out);
    run.assert_clean_failure(2);
    assert!(
        run.error().contains("not valid UTF-8") && run.error().contains("+x=caf\u{fffd}"),
        "{}",
        run.stderr
    );
}

/// `> /dev/full`: the outputs are still written, then a clean error about stdout.
#[cfg(target_os = "linux")]
#[test]
fn a_failed_write_to_stdout_is_an_error_after_the_outputs_are_written() {
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    let cfg = configs(&[]);
    let work = tempfile::tempdir().unwrap();
    let out = host_command(work.path())
        .args(ta_args(cfg.path()))
        .arg("merged_model_save_path=merged")
        .stdout(full())
        .output()
        .unwrap();
    let run = Run::of(out);
    run.assert_clean_failure(1);
    assert!(run.error().contains("standard output"), "{}", run.stderr);
    let dirs = run_dirs(work.path());
    assert_eq!(dirs.len(), 1);
    let report = json(&std::fs::read_to_string(dirs[0].join("program_report.json")).unwrap());
    assert_eq!(report["model_info"]["num_tensors"], 10);
    assert_eq!(
        read_f32(&work.path().join("merged/model.safetensors")).len(),
        10
    );
    let log = std::fs::read_to_string(dirs[0].join("fusion-host.log")).unwrap();
    assert!(
        log.contains("ERROR") && log.contains("standard output"),
        "{log}"
    );

    for args in [vec!["plugins"], vec!["--cfg", "job"], vec!["devices"]] {
        let out = host_command(work.path())
            .args(&args)
            .stdout(full())
            .output()
            .unwrap();
        let run = Run::of(out);
        run.assert_clean_failure(1);
        assert!(
            run.error().contains("standard output"),
            "{args:?}: {}",
            run.stderr
        );
    }
}

#[test]
fn a_missing_config_path_or_plugin_dir_is_named() {
    let cfg = configs(&[]);
    let work = tempfile::tempdir().unwrap();
    let missing = work.path().join("no-such-configs");
    let file = cfg.path().join("modelpool/tiny.yaml");
    for (dir, why) in [(&missing, "no such folder"), (&file, "not a folder")] {
        let run = run_configs(work.path(), dir.to_str().unwrap(), &["--cfg", "job"]);
        run.assert_clean_failure(2);
        assert!(
            run.error()
                .contains(&format!("--config-path {}: {why}", dir.display())),
            "{}",
            run.stderr
        );
        assert!(run.stdout.is_empty());
    }
    for args in [
        vec!["--plugin-dir", missing.to_str().unwrap(), "plugins"],
        vec!["plugins", "--plugin-dir", file.to_str().unwrap()],
    ] {
        let run = run_host(work.path(), &args);
        run.assert_clean_failure(2);
        assert!(run.error().contains("--plugin-dir"), "{}", run.stderr);
    }
    let mut args = ta_args(cfg.path());
    args.extend(["--plugin-dir".to_string(), missing.display().to_string()]);
    run_args(work.path(), &args).assert_clean_failure(2);
}

#[test]
fn a_device_that_cannot_be_created_is_named_with_where_it_came_from() {
    let cfg = configs(&[]);
    let work = tempfile::tempdir().unwrap();
    let no_device = "no-such-adapter-anywhere";
    // The merge needs the device: the error says it could not be created, and why.
    let mut args = ta_args(cfg.path());
    args.extend([
        "merged_model_save_path=merged".into(),
        "--device".into(),
        no_device.into(),
    ]);
    let run = run_args(work.path(), &args);
    run.assert_clean_failure(1);
    assert!(
        run.error().contains(&format!(
            "could not create the compute device (--device {no_device})"
        )),
        "{}",
        run.stderr
    );
    // The same value from FUSION_DEVICE names the variable.
    let mut args = ta_args(cfg.path());
    args.push("merged_model_save_path=merged2".into());
    let run = Run::of(
        host_command(work.path())
            .args(&args)
            .env("FUSION_DEVICE", no_device)
            .output()
            .unwrap(),
    );
    run.assert_clean_failure(1);
    assert!(
        run.error()
            .contains(&format!("FUSION_DEVICE = \"{no_device}\"")),
        "{}",
        run.stderr
    );
    let run = Run::of(
        host_command(work.path())
            .args([
                "--config-path",
                cfg.path().to_str().unwrap(),
                "--cfg",
                "job",
            ])
            .env("FUSION_DEVICE", " ")
            .output()
            .unwrap(),
    );
    run.assert_clean_failure(2);
    assert!(
        run.error().contains("FUSION_DEVICE") && !run.error().contains("--device"),
        "{}",
        run.stderr
    );

    // `embed` and the CLIP task pool say the device could not be created, not that a tensor
    // exceeds a binding size of 0 bytes.
    let clip = root().join("plugins/lib/clip/tests/data/clip-tiny");
    let run = run_host(
        work.path(),
        &[
            "--device",
            no_device,
            "embed",
            "--model",
            clip.join("model").to_str().unwrap(),
            "--inputs",
            clip.join("golden.safetensors").to_str().unwrap(),
            "--out",
            work.path().join("emb.safetensors").to_str().unwrap(),
        ],
    );
    run.assert_clean_failure(1);
    assert!(
        run.error().contains("could not create the compute device")
            && !run.error().contains("0 bytes"),
        "{}",
        run.stderr
    );
    assert!(!work.path().join("emb.safetensors").exists());
    let run = run_host(
        &root(),
        &[
            "--device",
            no_device,
            "modelpool=CLIPVisionModelPool/demo",
            "taskpool=CLIPVisionModelTaskPool/demo",
            "method=dummy",
            "print_config=false",
            &format!("path.log_dir={}", work.path().join("clip-log").display()),
        ],
    );
    run.assert_clean_failure(1);
    assert!(
        run.error().contains("could not create the compute device")
            && !run.error().contains("0 bytes"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_failed_run_records_its_error_in_a_log_without_colour() {
    let cfg = configs(&[]);
    let work = tempfile::tempdir().unwrap();
    // Colour allowed on stderr (no NO_COLOR): the log file must still be plain text.
    let mut ok = host_command(work.path());
    ok.args(ta_args(cfg.path())).env_remove("NO_COLOR");
    let run = Run::of(ok.output().unwrap());
    assert_eq!(run.code, 0, "{}", run.stderr);
    let mut args = ta_args(cfg.path());
    args.push("+method.scaling_factr=0.5".into());
    let run = run_args(work.path(), &args);
    run.assert_clean_failure(2);
    let dirs = run_dirs(work.path());
    assert_eq!(dirs.len(), 2, "{dirs:?}");
    let logs: Vec<String> = dirs
        .iter()
        .map(|d| std::fs::read_to_string(d.join("fusion-host.log")).unwrap())
        .collect();
    for log in &logs {
        assert!(
            !log.contains('\x1b'),
            "colour codes in the log file:\n{log}"
        );
        assert!(
            log.contains("run method") || log.contains("scaling_factr"),
            "{log}"
        );
    }
    let failed = logs.iter().find(|l| l.contains("scaling_factr")).unwrap();
    let last = failed.lines().last().unwrap();
    assert!(
        last.contains("ERROR") && last.contains("unknown parameter `scaling_factr`"),
        "the fatal error is the log's last line:\n{failed}"
    );
}

#[test]
fn every_run_gets_its_own_output_folder() {
    let cfg = configs(&[]);
    let work = tempfile::tempdir().unwrap();
    // A fixed folder, as runs started in the same second get; four at once.
    let fixed = work.path().join("runs/same");
    let mut args = ta_args(cfg.path());
    args.push(format!("path.log_dir={}", fixed.display()));
    let children: Vec<_> = (0..4)
        .map(|i| {
            host_command(work.path())
                .args(&args)
                .arg(format!("method.scaling_factor=0.{}", i + 1))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let run = Run::of(c.wait_with_output().unwrap());
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    let mut dirs: Vec<_> = std::fs::read_dir(work.path().join("runs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    dirs.sort();
    assert_eq!(dirs, ["same", "same_1", "same_2", "same_3"]);
    let mut factors: Vec<String> = dirs
        .iter()
        .map(|d| {
            let dir = work.path().join("runs").join(d);
            assert!(dir.join("program_report.json").is_file(), "{d}");
            let cfg: serde_norway::Value =
                serde_norway::from_str(&std::fs::read_to_string(dir.join("config.yaml")).unwrap())
                    .unwrap();
            // Each folder's config names that folder: `path.log_dir` was resolved again.
            assert_eq!(
                cfg["path"]["log_dir"].as_str().unwrap(),
                dir.to_str().unwrap(),
                "{d}"
            );
            let log = std::fs::read_to_string(dir.join("fusion-host.log")).unwrap();
            assert_eq!(log.matches("run started").count(), 1, "{d}: one run's log");
            format!("{:?}", cfg["method"]["scaling_factor"])
        })
        .collect();
    factors.sort();
    factors.dedup();
    assert_eq!(
        factors.len(),
        4,
        "every run kept its own config: {factors:?}"
    );
    // An empty folder made for the run is used as it is.
    let empty = work.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let mut args = ta_args(cfg.path());
    args.push(format!("path.log_dir={}", empty.display()));
    assert_eq!(run_args(work.path(), &args).code, 0);
    assert!(empty.join("program_report.json").is_file());
}

#[test]
fn a_misspelt_method_parameter_is_an_error_listing_the_parameters() {
    let cfg = configs(&[(
        "method/v01.yaml",
        "name: task_arithmetic\nscaling_factor: 0.5\nlegacy_knob: 1\n",
    )]);
    let work = tempfile::tempdir().unwrap();
    let cp = cfg.path().to_str().unwrap();
    let run = run_configs(
        work.path(),
        cp,
        &[
            "modelpool=tiny",
            "method=ties_merging",
            "+method.treshold=90",
        ],
    );
    run.assert_clean_failure(2);
    let err = run.error();
    for part in [
        "unknown parameter `treshold` (did you mean `threshold`?)",
        "`scaling_factor`",
        "`merge_func`",
    ] {
        assert!(err.contains(part), "{part:?} in {err}");
    }
    assert!(!work.path().join("merged").exists());
    // A v0.1 config (selected by `name:`) gets a warning: FusionBench v0.1 hands the whole
    // config to the algorithm, which ignores what it does not read.
    let run = run_configs(work.path(), cp, &["modelpool=tiny", "method=v01"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("unknown parameter `legacy_knob`"),
        "{}",
        run.stderr
    );
}

/// FusionBench's own method files for the CPU linear-algebra family run through the host:
/// TSV-M (`task_singular_vector/TaskSingularVectorMerging`) saves what fusion-bench produced
/// on merge-tiny, and magnitude-difference pruning with FusionBench's default `rescale: false`
/// returns the pretrained model unchanged, with a warning saying why.
#[test]
fn linalg_methods_from_fusionbench_config_files() {
    let cfg = configs(&[]);
    let work = tempfile::tempdir().unwrap();
    let run = run_configs(
        work.path(),
        cfg.path(),
        &[
            "modelpool=tiny",
            "method=task_singular_vector/TaskSingularVectorMerging",
            "merged_model_save_path=tsvm.safetensors",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let err = max_rel_error_files(
        &work.path().join("tsvm.safetensors"),
        &data().join("merge-tiny/expected/task_singular_vector.safetensors"),
    );
    assert!(err <= 1e-4, "TSV-M through the host: relative error {err}");

    let run = run_configs(
        work.path(),
        cfg.path(),
        &[
            "modelpool=tiny",
            "~modelpool.models.task_b",
            "~modelpool.models.task_c",
            "~modelpool.models.task_d",
            "method=pruning/magnitude_diff_pruning",
            "merged_model_save_path=pruned.safetensors",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("returns the pretrained model unchanged")
            || run
                .stderr
                .contains("the result is the pretrained model unchanged"),
        "{}",
        run.stderr
    );
    let got = read_f32(&work.path().join("pruned.safetensors"));
    let base = read_f32(&data().join("merge-tiny/models/_pretrained_.safetensors"));
    assert_eq!(max_rel_f32(&got, &base), 0.0);
}

// ---- the researcher's workflow (issue 19): multirun sweeps and `report` ---------------------

/// The one sweep folder under `outputs/multirun/fabric_model_fusion`.
fn sweep_dir(work: &Path) -> std::path::PathBuf {
    let dirs: Vec<_> = std::fs::read_dir(work.join("outputs/multirun/fabric_model_fusion"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(dirs.len(), 1, "one sweep folder: {dirs:?}");
    dirs[0].clone()
}

/// CSV rows as maps from the header's names.
fn csv_rows(text: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .map(|l| {
            header
                .iter()
                .map(|h| h.to_string())
                .zip(l.split(',').map(String::from))
                .collect()
        })
        .collect()
}

#[test]
fn multirun_sweeps_leave_a_folder_per_job_and_a_summary() {
    let cfg = configs(&[]);
    let work = tempfile::tempdir().unwrap();
    let run = run_configs(
        work.path(),
        cfg.path(),
        &[
            "-m",
            "method=task_arithmetic",
            "method.scaling_factor=0.1,0.3,0.5",
            "modelpool=tiny",
            "taskpool=dummy",
            "print_config=false",
            "merged_model_save_path=\"{log_dir}/merged.safetensors\"",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let sweep = sweep_dir(work.path());
    // Hydra's layout as FusionBench sets it: <sweep.dir>/<job.num>.
    let name = sweep.file_name().unwrap().to_str().unwrap();
    assert_eq!(name.len(), "2024-05-17_13-45-09".len(), "{name}");
    let base = read_f32(&data().join("merge-tiny/models/_pretrained_.safetensors"));
    let tasks: Vec<_> = ["task_a", "task_b", "task_c", "task_d"]
        .iter()
        .map(|t| read_f32(&data().join(format!("merge-tiny/models/{t}.safetensors"))))
        .collect();
    for (num, factor) in [(0, 0.1f32), (1, 0.3), (2, 0.5)] {
        let dir = sweep.join(num.to_string());
        assert!(dir.join("program_report.json").is_file(), "job {num}");
        let overrides: Vec<String> =
            serde_norway::from_str(&std::fs::read_to_string(dir.join("overrides.yaml")).unwrap())
                .unwrap();
        assert!(
            overrides.contains(&format!("method.scaling_factor={factor}")),
            "{overrides:?}"
        );
        // Each job merged with its own factor: pretrained + factor * sum of task vectors.
        let merged = read_f32(&dir.join("merged.safetensors"));
        for (i, (name, _, values)) in merged.iter().enumerate() {
            for (j, v) in values.iter().enumerate() {
                let p = base[i].2[j];
                let want = p + factor * tasks.iter().map(|t| t[i].2[j] - p).sum::<f32>();
                assert!(
                    (v - want).abs() < 1e-5,
                    "job {num} {name}[{j}]: {v} vs {want}"
                );
            }
        }
    }
    let rows = csv_rows(&std::fs::read_to_string(sweep.join("summary.csv")).unwrap());
    assert_eq!(rows.len(), 3);
    let params = tiny_param_count().to_string();
    for (row, (num, factor)) in rows.iter().zip([("0", "0.1"), ("1", "0.3"), ("2", "0.5")]) {
        assert_eq!(row["job"], num);
        assert_eq!(row["method.scaling_factor"], factor);
        assert_eq!(row["status"], "ok");
        assert_eq!(row["model_info.all_params"], params);
    }
    let md = std::fs::read_to_string(sweep.join("summary.md")).unwrap();
    assert!(
        md.starts_with("| job | method.scaling_factor | status |"),
        "{md}"
    );
    assert_eq!(run.stdout, md, "the summary is printed");
}

#[test]
fn a_failing_job_is_reported_and_the_others_run_in_parallel() {
    let cfg = configs(&[]);
    let work = tempfile::tempdir().unwrap();
    let run = run_configs(
        work.path(),
        cfg.path(),
        &[
            "--multirun",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "method=task_arithmetic",
            "method.scaling_factor=0.2,oops,0.4",
            "modelpool=tiny",
            "taskpool=dummy",
            "print_config=false",
        ],
    );
    run.assert_clean_failure(1);
    let err = run.error();
    assert!(
        err.contains("1 of 3 jobs failed")
            && err.contains("#1 (")
            && err.contains("method.scaling_factor=oops")
            && err.contains("scaling_factor"),
        "{err}"
    );
    assert!(run.stderr.contains("2 at a time"), "{}", run.stderr);
    let sweep = sweep_dir(work.path());
    let rows = csv_rows(&std::fs::read_to_string(sweep.join("summary.csv")).unwrap());
    let status: Vec<&str> = rows.iter().map(|r| r["status"].as_str()).collect();
    assert_eq!(status, ["ok", "failed (exit 2)", "ok"]);
    assert_eq!(rows[1]["model_info.all_params"], "");
    assert_eq!(
        rows[2]["model_info.all_params"],
        tiny_param_count().to_string()
    );
    // The failed job's folder keeps its error.
    let stderr = std::fs::read_to_string(sweep.join("1/stderr.log")).unwrap();
    assert!(
        stderr.contains("error: ") && stderr.contains("oops"),
        "{stderr}"
    );
    assert!(!sweep.join("1/program_report.json").exists());
    assert!(sweep.join("2/program_report.json").is_file());
}

#[test]
fn multirun_expands_ranges_globs_and_products_and_honours_cfg() {
    let cfg = configs(&[]);
    let work = tempfile::tempdir().unwrap();
    // --cfg job: each job prints its config, nothing is written. range x glob: 2 x 2 jobs, the
    // first key outermost.
    let run = run_configs(
        work.path(),
        cfg.path(),
        &[
            "-m",
            "--cfg",
            "job",
            "-p",
            "method",
            "method=glob([t*_*],exclude=*_x)",
            "method.scaling_factor=range(0.1,0.5,0.2)",
            "modelpool=tiny",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let headers: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("# job"))
        .collect();
    assert_eq!(headers.len(), 4, "{}", run.stdout);
    assert!(headers[0].contains("method=task_arithmetic method.scaling_factor=0.1"));
    assert!(headers[1].contains("method=task_arithmetic method.scaling_factor=0.30000000000000004"));
    assert!(headers[2].contains("method=ties_merging method.scaling_factor=0.1"));
    assert_eq!(
        run.stdout.matches("scaling_factor: 0.1\n").count(),
        2,
        "{}",
        run.stdout
    );
    assert!(!work.path().join("outputs").exists());

    // dry_run per job: every job resolves, none runs.
    let run = run_configs(
        work.path(),
        cfg.path(),
        &[
            "-m",
            "method=task_arithmetic",
            "method.scaling_factor=0.1,0.2",
            "modelpool=tiny",
            "dry_run=true",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let sweep = sweep_dir(work.path());
    for job in ["0", "1"] {
        assert!(!sweep.join(job).join("program_report.json").exists());
        let log = std::fs::read_to_string(sweep.join(job).join("stderr.log")).unwrap();
        assert!(log.contains("dry_run"), "{log}");
    }
}

#[test]
fn the_sweep_folder_and_job_folders_follow_hydra_sweep_settings() {
    let cfg = configs(&[]);
    let work = tempfile::tempdir().unwrap();
    let run = run_configs(
        work.path(),
        cfg.path(),
        &[
            "-m",
            "hydra.sweep.dir=sweeps/ta",
            "hydra.sweep.subdir=${hydra.job.override_dirname}",
            "method=task_arithmetic",
            "method.scaling_factor=0.1,0.2",
            "modelpool=tiny",
            "taskpool=dummy",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    // Hydra's override_dirname: the job's overrides but `hydra.*`, sorted, joined with ','.
    for f in ["0.1", "0.2"] {
        let dir = work.path().join(format!(
            "sweeps/ta/method.scaling_factor={f},method=task_arithmetic,modelpool=tiny,taskpool=dummy"
        ));
        assert!(
            dir.join("program_report.json").is_file(),
            "{}",
            dir.display()
        );
    }
    assert!(work.path().join("sweeps/ta/summary.csv").is_file());
}

#[test]
fn a_bad_sweep_is_named_with_exit_2() {
    let cfg = configs(&[]);
    let work = tempfile::tempdir().unwrap();
    for (sweep, want) in [
        ("method.scaling_factor=range(5,1)", "empty"),
        ("method.scaling_factor=range(0.1,x)", "number"),
        (
            "method.scaling_factor=choice(1,[2)",
            "method.scaling_factor=choice(1,[2)",
        ),
        ("method=glob(nothing*)", "empty"),
        ("method.scaling_factor=interval(0,1)", "interval"),
        ("hydra.launcher.n_jobs=1,2", "'hydra.launcher.n_jobs'"),
    ] {
        let run = run_configs(
            work.path(),
            cfg.path(),
            &["-m", "method=task_arithmetic", sweep, "modelpool=tiny"],
        );
        run.assert_clean_failure(2);
        assert!(
            run.error().contains(sweep) && run.error().contains(want),
            "{sweep}: {}",
            run.error()
        );
    }
    assert!(!work.path().join("outputs").exists(), "nothing written");
    // Without -m, a sweep says how to run it.
    let run = run_configs(
        work.path(),
        cfg.path(),
        &[
            "method=task_arithmetic",
            "method.scaling_factor=0.1,0.2",
            "modelpool=tiny",
        ],
    );
    run.assert_clean_failure(2);
    assert!(run.error().contains("--multirun"), "{}", run.error());
}

#[test]
fn report_collects_runs_and_sweeps_into_one_table_and_plot() {
    let cfg = configs(&[]);
    let work = tempfile::tempdir().unwrap();
    let cp = cfg.path().to_str().unwrap();
    let run = run_configs(
        work.path(),
        cp,
        &["modelpool=tiny", "taskpool=dummy", "print_config=false"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = run_configs(
        work.path(),
        cp,
        &[
            "-m",
            "method=task_arithmetic",
            "method.scaling_factor=0.3,0.7",
            "modelpool=tiny",
            "taskpool=dummy",
            "print_config=false",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    // Reports as FusionBench's CLIP task pools write them, from another machine.
    for (name, factor, acc) in [("a", "0.2", 0.61), ("b", "0.4", 0.65)] {
        let dir = work.path().join("outputs/clip").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("program_report.json"),
            format!(
                r#"{{"mnist": {{"accuracy": {acc}, "loss": 1.5}}, "average": {{"accuracy": {acc}, "loss": 1.5}}}}"#
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("overrides.yaml"),
            format!("- method=ties_merging\n- method.scaling_factor={factor}\n"),
        )
        .unwrap();
    }
    let csv = work.path().join("all.csv");
    let plots = work.path().join("plots");
    let run = run_host(
        work.path(),
        &[
            "report",
            "outputs",
            "--csv",
            csv.to_str().unwrap(),
            "--plot-dir",
            plots.to_str().unwrap(),
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let rows = csv_rows(&std::fs::read_to_string(&csv).unwrap());
    assert_eq!(rows.len(), 5, "{rows:?}");
    let by_method = |m: &str| rows.iter().filter(|r| r["method"] == m).count();
    assert_eq!(by_method("DummyAlgorithm"), 1);
    assert_eq!(by_method("task_arithmetic"), 2);
    assert_eq!(by_method("ties_merging"), 2);
    let factors: Vec<&str> = rows
        .iter()
        .map(|r| r["method.scaling_factor"].as_str())
        .collect();
    assert_eq!(factors, ["0.2", "0.4", "", "0.3", "0.7"]);
    assert_eq!(rows[1]["average.accuracy"], "0.65");
    assert_eq!(
        rows[3]["model_info.all_params"],
        tiny_param_count().to_string()
    );
    // The overrides that differ between runs are columns; the runs from elsewhere lack some.
    assert!(
        run.stdout
            .starts_with("| run | method | method.scaling_factor | modelpool | taskpool | print_config | status |"),
        "{}",
        run.stdout
    );
    assert_eq!(run.stdout.lines().count(), 7);
    let svg = std::fs::read_to_string(plots.join("accuracy_vs_method.scaling_factor.svg")).unwrap();
    assert_eq!(
        svg.matches("<circle").count(),
        2,
        "the two runs with an accuracy"
    );
    // The runs with an accuracy side by side, named by their method and settings.
    let bars = std::fs::read_to_string(plots.join("average_accuracy.svg")).unwrap();
    assert_eq!(bars.matches("<rect x=").count(), 2, "{bars}");
    assert!(
        bars.contains(">ties_merging method.scaling_factor=0.4"),
        "{bars}"
    );
    assert!(bars.contains(">0.65<"), "{bars}");

    // A folder with no report, or none at all, is named.
    std::fs::create_dir(work.path().join("empty")).unwrap();
    for bad in ["empty", "missing"] {
        let run = run_host(work.path(), &["report", bad]);
        run.assert_clean_failure(2);
        assert!(run.error().contains(bad), "{}", run.error());
    }
}

/// A fake Slurm on PATH: `sbatch` logs its arguments, runs every task of the array one after
/// another (as Slurm would, with SLURM_ARRAY_TASK_ID set) and prints a job id; `squeue` logs its
/// arguments and lists nothing (the array is done).
#[cfg(unix)]
fn fake_slurm(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let log = dir.join("calls.log");
    let sbatch = format!(
        r#"#!/bin/bash
echo "sbatch $*" >> '{log}'
script="${{@: -1}}"
cp "$script" '{dir}/submitted.sh'
read first last <<< "$(sed -n 's/^#SBATCH --array=\([0-9]*\)-\([0-9]*\)%.*/\1 \2/p' "$script")"
for i in $(seq "$first" "$last"); do SLURM_ARRAY_TASK_ID=$i bash "$script"; done
echo "4242;cluster"
"#,
        log = log.display(),
        dir = dir.display()
    );
    let squeue = format!("#!/bin/bash\necho \"squeue $*\" >> '{}'\n", log.display());
    for (name, text) in [("sbatch", sbatch), ("squeue", squeue)] {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[cfg(unix)]
#[test]
fn the_slurm_launcher_submits_one_job_array_and_collects_the_reports() {
    let cfg = configs(&[]);
    let work = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    fake_slurm(bin.path());
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = run_host_env(
        work.path(),
        &[
            "--config-path",
            cfg.path().to_str().unwrap(),
            "-m",
            "hydra/launcher=submitit_slurm",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.gpus_per_node=1",
            "hydra.launcher.cpus_per_task=4",
            "hydra.launcher.mem_gb=16",
            "hydra.launcher.timeout_min=30",
            "hydra.launcher.array_parallelism=2",
            "hydra.launcher.additional_parameters={mail_type: END}",
            "method=task_arithmetic",
            "method.scaling_factor=0.1,bad,0.5",
            "modelpool=tiny",
            "taskpool=dummy",
            "print_config=false",
        ],
        &[("PATH", &path)],
    );
    run.assert_clean_failure(1);
    assert!(
        run.error().contains("1 of 3 jobs failed") && run.error().contains("scaling_factor=bad"),
        "{}",
        run.error()
    );
    let sweep = sweep_dir(work.path());
    let script = std::fs::read_to_string(bin.path().join("submitted.sh")).unwrap();
    for line in [
        "#SBATCH --job-name=fusion_host",
        "#SBATCH --array=0-2%2",
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=16GB",
        "#SBATCH --time=30",
        "#SBATCH --mail-type=END",
    ] {
        assert!(
            script.lines().any(|l| l == line),
            "{line} not in:\n{script}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(sweep.join("slurm_array.sh")).unwrap(),
        script,
        "the script is kept in the sweep folder"
    );
    let calls = std::fs::read_to_string(bin.path().join("calls.log")).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls[0].starts_with("sbatch --parsable ") && calls[0].ends_with("slurm_array.sh"));
    assert!(calls[1].contains("--jobs 4242"), "{calls:?}");
    let rows = csv_rows(&std::fs::read_to_string(sweep.join("summary.csv")).unwrap());
    let status: Vec<&str> = rows.iter().map(|r| r["status"].as_str()).collect();
    assert_eq!(status, ["ok", "failed (exit 2)", "ok"]);
    assert_eq!(rows[2]["method.scaling_factor"], "0.5");
    assert_eq!(
        rows[2]["model_info.all_params"],
        tiny_param_count().to_string()
    );

    // Without Slurm's commands: the culprit named, exit 2.
    let empty = tempfile::tempdir().unwrap();
    let run = run_host_env(
        work.path(),
        &[
            "--config-path",
            cfg.path().to_str().unwrap(),
            "-m",
            "hydra/launcher=submitit_slurm",
            "method=task_arithmetic",
            "method.scaling_factor=0.1,0.2",
            "modelpool=tiny",
        ],
        &[("PATH", empty.path().to_str().unwrap())],
    );
    run.assert_clean_failure(2);
    assert!(run.error().contains("sbatch"), "{}", run.error());
}

/// A work folder with the mergekit-tiny models and configs (run from there, as mergekit-yaml's
/// configs name the models by relative path).
fn mergekit_work() -> tempfile::TempDir {
    let work = tempfile::tempdir().unwrap();
    let src = data().join("mergekit-tiny");
    copy_dir(&src.join("models"), &work.path().join("models"));
    copy_dir(&src.join("configs"), &work.path().join("configs"));
    work
}

/// All tensors of a written checkpoint folder (one file or shards), by name.
fn checkpoint_tensors(dir: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            out.extend(read_f32(&path));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn mergekit_runs_a_frankenmerge_config_into_a_sharded_folder_like_mergekit_yaml() {
    let work = mergekit_work();
    // A tokenizer on the first model, which gives the output its config and tokenizer.
    let math = work.path().join("models/math");
    std::fs::write(
        math.join("tokenizer_config.json"),
        r#"{"model_max_length": 64}"#,
    )
    .unwrap();
    std::fs::write(math.join("tokenizer.json"), r#"{"version": "1.0"}"#).unwrap();
    let run = run_host(
        work.path(),
        &[
            "mergekit",
            "configs/passthrough_frankenmerge.yaml",
            "out",
            "--out-shard-size",
            "50K",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = work.path().join("out");
    let index = json(&std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap());
    let shards: std::collections::BTreeSet<&str> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(shards.len() > 1, "{shards:?}");
    let expected = data().join("mergekit-tiny/expected/passthrough_frankenmerge");
    let got = checkpoint_tensors(&out);
    let want = read_f32(&expected.join("model.safetensors"));
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "tensor {}", w.0);
    }
    let config = json(&std::fs::read_to_string(out.join("config.json")).unwrap());
    assert_eq!(config["num_hidden_layers"], 6);
    assert_eq!(
        std::fs::read_to_string(out.join("mergekit_config.yml")).unwrap(),
        std::fs::read_to_string(work.path().join("configs/passthrough_frankenmerge.yaml")).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(out.join("tokenizer.json")).unwrap(),
        r#"{"version": "1.0"}"#
    );
}

#[test]
fn mergekit_writes_out_dtype_and_refuses_bad_configs_before_writing() {
    let work = mergekit_work();
    let linear = std::fs::read_to_string(work.path().join("configs/linear.yaml")).unwrap();
    write_configs(
        work.path(),
        &[("bf16.yaml", &format!("{linear}out_dtype: bfloat16\n"))],
    );
    let run = run_host(work.path(), &["mergekit", "bf16.yaml", "out"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let got = read_f32(&work.path().join("out/model.safetensors"));
    let want = read_f32(&data().join("mergekit-tiny/expected/linear/model.safetensors"));
    for ((name, _, g), (_, _, w)) in got.iter().zip(&want) {
        for (a, b) in g.iter().zip(w) {
            // bfloat16 keeps 8 significant bits: half a unit in the last place is 2⁻⁹ relative.
            assert!(
                (a - b).abs() <= b.abs() * 2f32.powi(-8),
                "{name}: {a} vs {b}"
            );
        }
    }
    let config = json(&std::fs::read_to_string(work.path().join("out/config.json")).unwrap());
    assert_eq!(config["dtype"], "bfloat16");

    let cases = [
        ("merge_method: lineer\nmodels:\n- model: models/math\n  parameters: {weight: 1}\n", "lineer"),
        (
            "merge_method: passthrough\nslices:\n- sources:\n  - model: models/code\n    layer_range: [0, 9]\n",
            "past its 4 layers",
        ),
        ("merge_method: ties\nmodels:\n- model: models/math\n  parameters: {weight: 1}\n", "base_model"),
        ("merge_method: linear\nmodels:\n- model: models/math\n  parameters: {weihgt: 1}\n", "weihgt"),
    ];
    for (i, (yaml, culprit)) in cases.iter().enumerate() {
        let name = format!("bad{i}.yaml");
        write_configs(work.path(), &[(&name, yaml)]);
        let run = run_host(work.path(), &["mergekit", &name, "bad_out"]);
        run.assert_clean_failure(2);
        assert!(run.error().contains(culprit), "{}", run.error());
        assert!(!work.path().join("bad_out").exists(), "nothing is written");
    }
    let run = run_host(work.path(), &["mergekit", "missing.yaml", "bad_out"]);
    run.assert_clean_failure(2);
    assert!(run.error().contains("missing.yaml"), "{}", run.error());
}

/// Issue 15, the merged model stays on the device: with the WGSL CLIP backend (what a hardware
/// GPU gets; forced here on lavapipe), the task pool takes every merged weight of the
/// device-merged model where the merge left it (`weights_on_device` in the log counts them),
/// and scores as the native backend, which reads the merged bytes, does.
#[test]
fn the_task_pool_takes_merged_weights_on_the_device() {
    let args = [
        "--device",
        "cpu",
        "modelpool=CLIPVisionModelPool/demo",
        "taskpool=CLIPVisionModelTaskPool/demo",
        "method=task_arithmetic",
        "print_config=false",
        // One batch per task: the weights load in full either way.
        "fast_dev_run=true",
    ];
    let native = run_host_env(&root(), &args, &[("FUSION_CLIP_BACKEND", "native")]);
    assert_eq!(native.code, 0, "{}", native.stderr);
    assert_eq!(
        native.log_field("weights_on_device"),
        "0",
        "{}",
        native.stderr
    );
    let wgsl = run_host_env(&root(), &args, &[("FUSION_CLIP_BACKEND", "wgsl")]);
    assert_eq!(wgsl.code, 0, "{}", wgsl.stderr);
    // The demo's vision towers have 3 layers of 16 weights plus 7 outside the encoder, all f32
    // and all merged.
    assert_eq!(wgsl.log_field("weights_on_device"), "55", "{}", wgsl.stderr);
    let (a, b) = (json(&native.stdout), json(&wgsl.stdout));
    for (task, scores) in a.as_object().unwrap() {
        let Some(loss) = scores.get("loss").and_then(Value::as_f64) else {
            continue;
        };
        let (acc_a, acc_b) = (
            scores["accuracy"].as_f64().unwrap(),
            b[task]["accuracy"].as_f64().unwrap(),
        );
        assert!(
            (acc_a - acc_b).abs() <= 2.0 / 256.0,
            "{task}: {acc_a} vs {acc_b}"
        );
        let other = b[task]["loss"].as_f64().unwrap();
        assert!(
            (loss - other).abs() <= 1e-3,
            "{task}: loss {loss} vs {other}"
        );
    }
}

// ---- FusionBench's causal-LM side (issue 18, item 4): CausalLMPool and the LLM methods ----------

/// The tiny Llama checkpoints (and the Mistral and tokenizer of `llm-tiny`).
fn tiny_llm(name: &str) -> std::path::PathBuf {
    match name {
        "mistral" => data().join("llm-tiny/models/mistral"),
        "tokenizer" => data().join("llm-tiny/tokenizer"),
        // A path under tests/data (cases.json's convention).
        m if m.contains('/') => data().join(m),
        m => data().join("mergekit-tiny/models").join(m),
    }
}

/// A CausalLMPool config over tiny models, in FusionBench's `_target_` form, with the llm-tiny
/// tokenizer.
fn llm_pool_yaml(models: &[(&str, &str)]) -> String {
    let mut s = String::from(
        "_target_: fusion_bench.modelpool.CausalLMPool\n_recursive_: false\nmodels:\n",
    );
    for (name, dir) in models {
        s.push_str(&format!(
            "  {name}:\n    _target_: transformers.LlamaForCausalLM.from_pretrained\n    \
             pretrained_model_name_or_path: {}\n",
            tiny_llm(dir).display()
        ));
    }
    s.push_str(&format!(
        "model_kwargs:\n  torch_dtype: float32\ntokenizer:\n  _target_: transformers.AutoTokenizer.from_pretrained\n  pretrained_model_name_or_path: {}\n",
        tiny_llm("tokenizer").display()
    ));
    s
}

/// A JSON value as a Hydra override value.
fn override_value(v: &Value) -> String {
    match v {
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(override_value)
                .collect::<Vec<_>>()
                .join(",")
        ),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The largest |got − want| over a tensor, relative to the tensor's largest |want|.
fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
        / scale
}

/// Run one llm-tiny golden case through the host; returns the saved folder.
fn run_llm_case(work: &Path, case: &Value, extra: &[&str]) -> (Run, std::path::PathBuf) {
    let models: Vec<(String, String)> = case["models"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let refs: Vec<(&str, &str)> = models
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let cfg = configs(&[(
        "modelpool/CausalLMPool/llm_tiny.yaml",
        &llm_pool_yaml(&refs),
    )]);
    let name = case["name"].as_str().unwrap();
    let method = case["method"].as_str().unwrap();
    let out = work.join(name);
    let mut args: Vec<String> = vec![
        "--config-path".into(),
        cfg.path().to_str().unwrap().into(),
        "modelpool=CausalLMPool/llm_tiny".into(),
        format!("method={method}"),
    ];
    for (k, v) in case["params"].as_object().unwrap() {
        args.push(format!("method.{k}={}", override_value(v)));
    }
    // Each method saves where FusionBench's does: its own `model_save_path` /
    // `merged_model_save_path`, else the program's.
    let key = if method.ends_with("_for_causallm") || method == "slerp/slerp_lm" {
        "method.model_save_path"
    } else if method == "linear/weighted_average_for_llama" {
        "method.merged_model_save_path"
    } else {
        "merged_model_save_path"
    };
    args.push(format!("{key}={}", out.display()));
    args.extend(extra.iter().map(|s| s.to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    (run_host(work, &argv), out)
}

#[test]
fn causal_lm_methods_match_fusion_bench_on_the_tiny_llamas() {
    let spec = json(&std::fs::read_to_string(data().join("llm-tiny/cases.json")).unwrap());
    let work = tempfile::tempdir().unwrap();
    let tokenizer = std::fs::read_to_string(tiny_llm("tokenizer").join("tokenizer.json")).unwrap();
    for case in spec["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (run, out) = run_llm_case(work.path(), case, &[]);
        assert_eq!(run.code, 0, "case {name}:\n{}", run.stderr);
        let got: std::collections::BTreeMap<String, Vec<f32>> = checkpoint_tensors(&out)
            .into_iter()
            .map(|(n, _, v)| (n, v))
            .collect();
        // Every tensor of the model is written, as save_pretrained does (38 with tied
        // embeddings, 39 without).
        let first = case["models"].as_object().unwrap().values().next().unwrap();
        let held = read_f32(&tiny_llm(first.as_str().unwrap()).join("model.safetensors")).len();
        assert_eq!(got.len(), held, "case {name}: {:?}", got.keys());
        let want = read_f32(&data().join(format!("llm-tiny/expected/{name}.safetensors")));
        // Pruning copies or zeroes entries: exact. The merges compute in f32 (on the device for
        // the averages, TIES and SLERP): 1e-5 of each tensor's largest magnitude.
        let exact = case["method"].as_str().unwrap().starts_with("pruning/");
        for (tensor, _, w) in &want {
            let g = &got[tensor];
            let err = rel_err(g, w);
            if exact {
                assert!(
                    g == w,
                    "case {name}: tensor {tensor} differs (relative error {err})"
                );
            } else {
                assert!(
                    err <= 1e-5,
                    "case {name}: tensor {tensor}: relative error {err}"
                );
            }
        }
        // The folder loads with AutoModelForCausalLM and AutoTokenizer: config.json, and the
        // pool's tokenizer files unless the method was told not to save them.
        let config = json(&std::fs::read_to_string(out.join("config.json")).unwrap());
        assert_eq!(
            config["architectures"][0], "LlamaForCausalLM",
            "case {name}"
        );
        let saves_tokenizer = case["params"]["save_tokenizer"] != Value::Bool(false);
        assert_eq!(
            out.join("tokenizer.json").is_file(),
            saves_tokenizer,
            "case {name}: {:?}",
            files_under(&out)
        );
        if saves_tokenizer {
            assert_eq!(
                std::fs::read_to_string(out.join("tokenizer.json")).unwrap(),
                tokenizer
            );
        }
    }
}

#[test]
fn llama_random_pruning_prunes_exact_fractions_and_n_m_groups_reproducibly() {
    let work = tempfile::tempdir().unwrap();
    let case = |name: &str, params: Value| {
        serde_json::json!({
            "name": name,
            "method": "pruning/llama_random_pruning",
            "params": params,
            "models": {"_pretrained_": "chat", "math": "math"},
        })
    };
    let run = |name: &str, params: Value, seed: u64| {
        let seed = format!("seed={seed}");
        let (run, out) = run_llm_case(work.path(), &case(name, params), &[seed.as_str()]);
        assert_eq!(run.code, 0, "{name}:\n{}", run.stderr);
        checkpoint_tensors(&out)
    };
    let original = read_f32(&tiny_llm("chat").join("model.safetensors"));
    let unstructured = serde_json::json!({"prune_type": "unstructured", "sparsity_ratio": 0.3});
    let a = run("u1", unstructured.clone(), 1);
    let b = run("u2", unstructured.clone(), 1);
    let c = run("u3", unstructured, 2);
    assert_eq!(a, b, "the same seed prunes the same entries");
    assert_ne!(a, c, "another seed prunes other entries");
    let two_four = run(
        "s1",
        serde_json::json!({"prune_type": "semistructured", "n": 2, "m": 4}),
        1,
    );
    let mut pruned_tensors = 0;
    let mut column_hits = vec![0usize; 32];
    let mut rows = 0usize;
    for (((name, shape, orig), (_, _, u)), (_, _, s)) in original.iter().zip(&a).zip(&two_four) {
        let pruned = name.starts_with("model.layers.") && shape.len() == 2;
        if !pruned {
            assert_eq!(
                u, orig,
                "{name} is not a decoder-layer linear weight: unchanged"
            );
            assert_eq!(s, orig, "{name}: unchanged");
            continue;
        }
        pruned_tensors += 1;
        let cols = shape[1];
        for (row, (ur, or)) in u.chunks(cols).zip(orig.chunks(cols)).enumerate() {
            // ⌊cols · 0.3⌋ zeroed per row; the others keep their values.
            let zeroed: Vec<usize> = (0..cols)
                .filter(|&j| ur[j] == 0.0 && or[j] != 0.0)
                .collect();
            assert_eq!(
                zeroed.len(),
                (cols as f64 * 0.3) as usize,
                "{name} row {row}"
            );
            assert!(
                ur.iter().zip(or).all(|(x, o)| *x == 0.0 || x == o),
                "{name} row {row}"
            );
            if cols == 32 {
                rows += 1;
                zeroed.iter().for_each(|&j| column_hits[j] += 1);
            }
        }
        for (group, og) in s.chunks(4).zip(orig.chunks(4)) {
            assert_eq!(
                group
                    .iter()
                    .zip(og)
                    .filter(|(x, o)| **x == 0.0 && **o != 0.0)
                    .count(),
                2,
                "{name}: 2 of 4"
            );
            assert!(
                group.iter().zip(og).all(|(x, o)| *x == 0.0 || x == o),
                "{name}"
            );
        }
    }
    assert_eq!(pruned_tensors, 28);
    // Random, not positional: every column is pruned in about 30% of the rows.
    for (j, hits) in column_hits.iter().enumerate() {
        let frac = *hits as f64 / rows as f64;
        assert!(
            (0.15..0.45).contains(&frac),
            "column {j} pruned in {frac} of {rows} rows"
        );
    }
}

#[test]
fn llama_expo_with_dare_is_expo_of_the_dare_average() {
    let spec = json(&std::fs::read_to_string(data().join("llm-tiny/cases.json")).unwrap());
    let golden = spec["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "expo_average")
        .unwrap()
        .clone();
    let work = tempfile::tempdir().unwrap();
    // With nothing dropped, DARE's average is the plain average: the ExPO golden.
    let mut case = golden.clone();
    case["name"] = "dare0".into();
    case["method"] = "linear/llama_expo_with_dare".into();
    case["params"]["dare_sparsity_ratio"] = 0.0.into();
    let (run, out) = run_llm_case(work.path(), &case, &["seed=3"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let got: std::collections::BTreeMap<String, Vec<f32>> = checkpoint_tensors(&out)
        .into_iter()
        .map(|(n, _, v)| (n, v))
        .collect();
    for (tensor, _, w) in read_f32(&data().join("llm-tiny/expected/expo_average.safetensors")) {
        let err = rel_err(&got[&tensor], &w);
        assert!(err <= 1e-5, "{tensor}: relative error {err}");
    }
    // Half dropped: reproducible per seed, and not the plain ExPO.
    case["params"]["dare_sparsity_ratio"] = 0.5.into();
    let runs: Vec<_> = ["a", "b"]
        .iter()
        .map(|n| {
            case["name"] = format!("dare5{n}").into();
            let (run, out) = run_llm_case(work.path(), &case, &["seed=3"]);
            assert_eq!(run.code, 0, "{}", run.stderr);
            checkpoint_tensors(&out)
        })
        .collect();
    assert_eq!(runs[0], runs[1]);
    let q = "model.layers.0.mlp.gate_proj.weight";
    let dropped = &runs[0].iter().find(|t| t.0 == q).unwrap().2;
    assert!(rel_err(dropped, &got[q]) > 1e-3);
}

#[test]
fn fusionbench_causal_lm_pool_configs_compose_and_run_from_the_hub_cache() {
    // Every CausalLMPool config of FusionBench's tree composes.
    let root = root().join("configs/modelpool/CausalLMPool");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&root).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap().flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                names.push(format!(
                    "{}/{}",
                    p.file_name().unwrap().to_string_lossy(),
                    n
                ));
            }
        } else {
            names.push(entry.file_name().to_string_lossy().to_string());
        }
    }
    // FusionBench's 25, and our llm-tiny.
    assert_eq!(names.len(), 26, "{names:?}");
    assert!(names.iter().any(|n| n == "llm-tiny.yaml"));
    let work = tempfile::tempdir().unwrap();
    for name in &names {
        let stem = name.trim_end_matches(".yaml");
        let run = run_host(
            work.path(),
            &[
                "--cfg",
                "job",
                "--resolve",
                "-p",
                "modelpool",
                &format!("modelpool=CausalLMPool/{stem}"),
                "method=dummy",
            ],
        );
        assert_eq!(run.code, 0, "{name}:\n{}", run.stderr);
        assert!(
            run.stdout
                .contains("_target_: fusion_bench.modelpool.CausalLMPool"),
            "{name}:\n{}",
            run.stdout
        );
        assert!(
            run.stdout.contains("_pretrained_"),
            "{name}:\n{}",
            run.stdout
        );
        assert!(
            !run.stdout.contains("${"),
            "{name}: unresolved interpolation\n{}",
            run.stdout
        );
        // The pool component resolves (nothing is loaded in a dry run).
        let run = run_host(
            work.path(),
            &[
                &format!("modelpool=CausalLMPool/{stem}"),
                "method=dummy",
                "dry_run=true",
            ],
        );
        assert_eq!(run.code, 0, "{name}:\n{}", run.stderr);
    }

    // FusionBench's MergeBench Llama-3.2-3B pool, unchanged, with its six hub ids in the cache.
    let home = tempfile::tempdir().unwrap();
    let ids = [
        ("meta-llama/Llama-3.2-3B", "base"),
        ("MergeBench/Llama-3.2-3B_instruction", "chat"),
        ("MergeBench/Llama-3.2-3B_math", "math"),
        ("MergeBench/Llama-3.2-3B_coding", "code"),
        ("MergeBench/Llama-3.2-3B_multilingual", "chat"),
        ("MergeBench/Llama-3.2-3B_safety", "math"),
    ];
    for (id, dir) in ids {
        let repo = home
            .path()
            .join("hub")
            .join(format!("models--{}", id.replace('/', "--")));
        let rev = "0123456789abcdef0123456789abcdef01234567";
        copy_dir(&tiny_llm(dir), &repo.join("snapshots").join(rev));
        if dir == "base" {
            copy_dir(&tiny_llm("tokenizer"), &repo.join("snapshots").join(rev));
        }
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), rev).unwrap();
    }
    let out = work.path().join("merged");
    let run = run_host_env(
        work.path(),
        &[
            "modelpool=CausalLMPool/mergebench/Llama-3.2-3B",
            "method=linear/task_arithmetic_for_causallm",
            &format!("method.model_save_path={}", out.display()),
        ],
        &[
            ("HF_HOME", home.path().to_str().unwrap()),
            ("HF_HUB_OFFLINE", "1"),
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    // θ₀ + 0.3 Σ τᵢ over the five experts, stored as model_kwargs.torch_dtype (bfloat16).
    let got = checkpoint_tensors(&out);
    let load = |d: &str| read_f32(&tiny_llm(d).join("model.safetensors"));
    let (base, chat, math, code) = (load("base"), load("chat"), load("math"), load("code"));
    for (i, (name, _, g)) in got.iter().enumerate() {
        let want: Vec<f32> = (0..g.len())
            .map(|j| {
                let b = base[i].2[j];
                let t = |m: &Vec<(String, Vec<usize>, Vec<f32>)>| m[i].2[j] - b;
                b + 0.3 * (2.0 * t(&chat) + 2.0 * t(&math) + t(&code))
            })
            .collect();
        // bfloat16 inputs and output: 8 bits of mantissa.
        assert!(rel_err(g, &want) < 2e-2, "{name}: {}", rel_err(g, &want));
    }
    let config = json(&std::fs::read_to_string(out.join("config.json")).unwrap());
    assert_eq!(config["torch_dtype"], "bfloat16");
    assert!(
        out.join("tokenizer.json").is_file(),
        "{:?}",
        files_under(&out)
    );

    // v0.1: `type: LLamaForCausalLMPool` with a list of {name, path}.
    let cfg = configs(&[(
        "modelpool/v01_llama.yaml",
        &format!(
            "type: LLamaForCausalLMPool\nmodels:\n  - name: _pretrained_\n    path: {}\n  - name: expert_1\n    path: {}\ndtype: float32\n",
            tiny_llm("base").display(),
            tiny_llm("chat").display()
        ),
    )]);
    let run = run_configs(
        work.path(),
        cfg.path(),
        &[
            "modelpool=v01_llama",
            "method=slerp/slerp_lm",
            "method.model_save_path=null",
            "merged_model_save_path=v01",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(work.path().join("v01/config.json").is_file());
}

#[test]
fn causal_lm_bad_input_is_named_with_exit_2() {
    let work = tempfile::tempdir().unwrap();
    let run_with = |models: &[(&str, &str)], method: &[&str]| {
        let cfg = configs(&[("modelpool/CausalLMPool/bad.yaml", &llm_pool_yaml(models))]);
        let mut args = vec![
            "--config-path",
            cfg.path().to_str().unwrap(),
            "modelpool=CausalLMPool/bad",
        ];
        args.extend_from_slice(method);
        let run = run_host(work.path(), &args);
        run.assert_clean_failure(2);
        run
    };
    // Models of different architectures.
    let run = run_with(
        &[("_pretrained_", "base"), ("mistral_expert", "mistral")],
        &[
            "method=linear/task_arithmetic_for_causallm",
            "method.model_save_path=null",
        ],
    );
    let e = run.error();
    assert!(
        e.contains("mistral_expert")
            && e.contains("MistralForCausalLM")
            && e.contains("LlamaForCausalLM"),
        "{e}"
    );
    // A model path that does not exist.
    let run = run_with(
        &[("_pretrained_", "base"), ("expert", "no_such_model")],
        &[
            "method=linear/simple_average_for_causallm",
            "method.model_save_path=null",
        ],
    );
    let e = run.error();
    assert!(
        e.contains("`expert`") && e.contains("no_such_model") && e.contains("does not exist"),
        "{e}"
    );
    // An unknown pruning type.
    let run = run_with(
        &[("_pretrained_", "base")],
        &[
            "method=pruning/llama_magnitude_pruning",
            "method.prune_type=blockwise",
        ],
    );
    let e = run.error();
    assert!(
        e.contains("prune_type") && e.contains("blockwise") && e.contains("semistructured"),
        "{e}"
    );
    // merge_backbone without a `_pretrained_` model.
    let run = run_with(
        &[("a", "chat"), ("b", "math")],
        &[
            "method=linear/simple_average_for_causallm",
            "method.merge_backbone=true",
            "method.model_save_path=null",
        ],
    );
    assert!(run.error().contains("_pretrained_"), "{}", run.error());
}

// ---- methods that return several models, and task-vector analysis (issue 17) ----------------

/// A config folder with the linalg-tiny pool as `modelpool=linalg` and the given extra files.
fn linalg_configs(extra: &[(&str, &str)]) -> tempfile::TempDir {
    let models = data().join("linalg-tiny").join("models");
    let mut pool = String::from("_target_: fusion_bench.modelpool.BaseModelPool\nmodels:\n");
    for m in ["_pretrained_", "task_a", "task_b", "task_c", "task_d"] {
        pool.push_str(&format!(
            "  {m}: {}\n",
            models.join(format!("{m}.safetensors")).display()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    write_configs(dir.path(), &[("modelpool/linalg.yaml", &pool)]);
    write_configs(dir.path(), extra);
    dir
}

/// The largest `max|a − b| / max|b|` over the tensors of two checkpoints with the same names.
fn max_rel_error_files(got: &Path, want: &Path) -> f32 {
    max_rel_f32(&read_f32(got), &read_f32(want))
}

/// TALL masks from FusionBench's `tall_mask/task_arithmetic.yaml` return
/// `{"models": {name: model}, "metadata": None}`: the report takes that shape (each model's
/// report under `models`, `metadata` null, as FusionBench's `evaluate_merged_model` builds it),
/// each model is saved under `merged_model_save_path/models/NAME` and matches fusion-bench's
/// tensors. EMR from `emr_merging/emr_merging.yaml` returns a model per task, reported under the
/// pool's names and saved beside a `.safetensors` path as `STEM_NAME.safetensors`.
#[test]
fn tall_masks_and_emr_return_a_model_per_task_reported_and_saved_as_fusionbench_does() {
    let cfg = linalg_configs(&[]);
    let work = tempfile::tempdir().unwrap();
    let cp = cfg.path().to_str().unwrap();
    let run = run_configs(
        work.path(),
        cp,
        &[
            "modelpool=linalg",
            "method=tall_mask/task_arithmetic",
            "taskpool=dummy",
            "merged_model_save_path=saved",
            "path.log_dir=logs",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = json(&run.stdout);
    let keys: Vec<&String> = report.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["models", "metadata"], "{report}");
    assert!(report["metadata"].is_null(), "{report}");
    let tasks: Vec<&String> = report["models"].as_object().unwrap().keys().collect();
    assert_eq!(tasks, ["task_a", "task_b", "task_c", "task_d"], "{report}");
    let saved_report = std::fs::read_to_string(work.path().join("logs/program_report.json"));
    assert_eq!(json(&saved_report.unwrap()), report);
    for task in ["task_a", "task_b", "task_c", "task_d"] {
        assert!(
            report["models"][task]["model_info"]["all_params"].as_u64() > Some(0),
            "{report}"
        );
        let err = max_rel_error_files(
            &work
                .path()
                .join(format!("saved/models/{task}/model.safetensors")),
            &data().join(format!("linalg-tiny/expected/tall_mask/{task}.safetensors")),
        );
        assert!(err <= 1e-5, "TALL {task}: relative error {err}");
    }
    assert!(!work.path().join("saved/metadata").exists());

    let run = run_configs(
        work.path(),
        cp,
        &[
            "modelpool=linalg",
            "method=emr_merging/emr_merging",
            "taskpool=dummy",
            "merged_model_save_path=emr.safetensors",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = json(&run.stdout);
    let keys: Vec<&String> = report.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["task_a", "task_b", "task_c", "task_d"], "{report}");
    for task in ["task_a", "task_b", "task_c", "task_d"] {
        let err = max_rel_error_files(
            &work.path().join(format!("emr_{task}.safetensors")),
            &data().join(format!(
                "linalg-tiny/expected/emr_merging/{task}.safetensors"
            )),
        );
        assert!(err <= 1e-5, "EMR {task}: relative error {err}");
        assert!(report[task]["model_info"].is_object(), "{report}");
    }
}

/// The PNG file's width and height (its IHDR chunk), after checking the signature.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

/// The analysis methods, from FusionBench's `analysis/*.yaml`, write into the run's log folder:
/// the cosine-similarity CSV (fusion-bench's values to 1e-12) and heatmap, the two violin plots
/// at matplotlib's default 640×480; they return the pretrained model, which the program saves.
#[test]
fn analysis_methods_write_into_the_log_folder() {
    let cfg = linalg_configs(&[]);
    let work = tempfile::tempdir().unwrap();
    let cp = cfg.path().to_str().unwrap();
    let run = run_configs(
        work.path(),
        cp,
        &[
            "modelpool=linalg",
            "method=analysis/task_vector_cos_similarity",
            "path.log_dir=cos",
            "merged_model_save_path=returned.safetensors",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let read = |p: &Path| -> Vec<Vec<String>> {
        std::fs::read_to_string(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .lines()
            .map(|l| l.split(',').map(String::from).collect())
            .collect()
    };
    let got = read(&work.path().join("cos/task_vector_cos_similarity.csv"));
    let want = read(&data().join("linalg-tiny/expected/task_vector_cos_similarity.csv"));
    assert_eq!(got[0], want[0]);
    assert_eq!(got.len(), 5);
    for (g, w) in got[1..].iter().zip(&want[1..]) {
        assert_eq!(g[0], w[0]);
        for (a, b) in g[1..].iter().zip(&w[1..]) {
            let (a, b): (f64, f64) = (a.parse().unwrap(), b.parse().unwrap());
            assert!((a - b).abs() <= 1e-12, "{a} vs {b}");
        }
    }
    let (w, h) = png_size(&work.path().join("cos/task_vector_cos_similarity.png"));
    assert!(w > 224 && h > 224, "{w}×{h}");
    assert_eq!(
        max_rel_error_files(
            &work.path().join("returned.safetensors"),
            &data().join("linalg-tiny/models/_pretrained_.safetensors")
        ),
        0.0
    );

    let run = run_configs(
        work.path(),
        cp,
        &[
            "modelpool=linalg",
            "method=analysis/task_vector_violin_plot",
            "path.log_dir=violin",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    for file in ["task_vector_violin.png", "task_vector_violin_abs.png"] {
        assert_eq!(png_size(&work.path().join("violin").join(file)), (640, 480));
    }
}

/// Too few models for the method and a nested unknown parameter are config errors: exit 2, one
/// paragraph naming the culprit, nothing merged.
#[test]
fn too_few_models_and_a_nested_unknown_parameter_exit_2() {
    let cfg = linalg_configs(&[(
        "method/violin_bad.yaml",
        "_target_: fusion_bench.method.TaskVectorViolinPlot\ntrainable_only: true\n\
         fig_kwargs:\n  figsize: [4, 3]\n  facecolour: white\n",
    )]);
    let work = tempfile::tempdir().unwrap();
    let cp = cfg.path().to_str().unwrap();
    let run = run_configs(
        work.path(),
        cp,
        &[
            "modelpool=linalg",
            "~modelpool.models.task_a",
            "~modelpool.models.task_b",
            "~modelpool.models.task_c",
            "~modelpool.models.task_d",
            "method=tall_mask/task_arithmetic",
            "merged_model_save_path=saved",
        ],
    );
    run.assert_clean_failure(2);
    assert!(
        run.error().contains("tall_mask needs at least 1 model"),
        "{}",
        run.stderr
    );
    assert!(!work.path().join("saved").exists());

    let run = run_configs(
        work.path(),
        cp,
        &[
            "modelpool=linalg",
            "~modelpool.models.task_b",
            "~modelpool.models.task_c",
            "~modelpool.models.task_d",
            "method=analysis/task_vector_cos_similarity",
        ],
    );
    run.assert_clean_failure(2);
    assert!(
        run.error()
            .contains("task_vector_cos_similarity needs at least 2 model(s)"),
        "{}",
        run.stderr
    );

    let run = run_configs(work.path(), cp, &["modelpool=linalg", "method=violin_bad"]);
    run.assert_clean_failure(2);
    assert!(
        run.error()
            .contains("unknown parameter `fig_kwargs.facecolour`"),
        "{}",
        run.stderr
    );
}

/// FusionBench's program reports a list of models as a list of reports and a dict with
/// `metadata` as a dict whose `metadata` is copied as it is (`evaluate_merged_model`); the
/// testkit's `several` method returns entries named as such paths. Each model is saved at its
/// path under `merged_model_save_path` (`[i]` as folder `i`), and a name that cannot be a path
/// into the report fails the run naming it.
#[test]
fn a_list_of_models_and_metadata_are_reported_as_fusionbench_does() {
    let plugin = testkit_plugin();
    let cfg = configs(&[
        (
            "method/list.yaml",
            "_target_: several\nnames: ['[0]', '[1]', '[2]']\n",
        ),
        (
            "method/nested.yaml",
            "_target_: several\nnames: ['models/[1]', 'models/[0]']\nmetadata: {lambda: 0.6, tasks: [a, b]}\n",
        ),
        ("method/clash.yaml", "_target_: several\nnames: [a, a/b]\n"),
    ]);
    let work = tempfile::tempdir().unwrap();
    let args = |method: &str, dest: &str| -> Vec<String> {
        [
            "--plugin-dir",
            plugin.path().to_str().unwrap(),
            "--config-path",
            cfg.path().to_str().unwrap(),
            "modelpool=tiny",
            "taskpool=dummy",
            &format!("method={method}"),
            &format!("merged_model_save_path={dest}"),
            &format!("path.log_dir={method}_logs"),
        ]
        .map(String::from)
        .to_vec()
    };
    let run = run_args(work.path(), &args("list", "list"));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = json(&run.stdout);
    let items = report
        .as_array()
        .unwrap_or_else(|| panic!("a list: {report}"));
    assert_eq!(items.len(), 3);
    for (i, item) in items.iter().enumerate() {
        assert!(
            item["model_info"]["all_params"].as_u64() > Some(0),
            "{report}"
        );
        assert!(
            work.path()
                .join(format!("list/{i}/model.safetensors"))
                .is_file(),
            "model {i} saved"
        );
    }
    let saved = std::fs::read_to_string(work.path().join("list_logs/program_report.json"));
    assert_eq!(json(&saved.unwrap()), report);

    let run = run_args(work.path(), &args("nested", "nested.safetensors"));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = json(&run.stdout);
    let keys: Vec<&String> = report.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["models", "metadata"], "{report}");
    assert_eq!(
        report["models"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    assert_eq!(
        report["metadata"],
        serde_json::json!({"lambda": 0.6, "tasks": ["a", "b"]})
    );
    // The first entry, `models/[1]`, is the pool's first model (the base), `models/[0]` task_a:
    // each saved at its own path.
    let mut a = read_f32(&work.path().join("nested_models_1.safetensors"));
    let mut want = read_f32(&data().join("merge-tiny/models/_pretrained_.safetensors"));
    a.sort_by(|x, y| x.0.cmp(&y.0));
    want.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(a, want);
    assert!(work.path().join("nested_models_0.safetensors").is_file());
    assert!(!work.path().join("nested_metadata.safetensors").exists());

    let run = run_args(work.path(), &args("clash", "clash"));
    run.assert_clean_failure(1);
    assert!(
        run.error().contains("`a/b` cannot name one of them")
            && run.error().contains("inside another entry"),
        "{}",
        run.stderr
    );
    assert!(!work.path().join("clash").exists());
}

/// `-v`/`-q` mean the same in the host and its external commands (one filter, `fusion-log`):
/// the host's own log gains DEBUG lines with `-vv` and loses INFO lines with `-q`, and a command
/// run as `fusion-host NAME` gets the matching FUSION_LOG level, none without the flags.
#[test]
fn verbosity_flags_set_the_log_level_of_the_host_and_its_commands() {
    let cfg = configs(&[]);
    let work = tempfile::tempdir().unwrap();
    let cp = cfg.path().to_str().unwrap();
    let flow = |flag: &str| {
        let mut args = vec![flag, "--config-path", cp, "--config-name"];
        args.extend(["fabric_model_fusion", "modelpool=tiny", "method=dummy"]);
        args.push("taskpool=dummy");
        args.retain(|a| !a.is_empty());
        let run = run_host(work.path(), &args);
        assert_eq!(run.code, 0, "{flag}: {}", run.stderr);
        run.stderr
    };
    let (plain, loud, quiet) = (flow(""), flow("-vv"), flow("-q"));
    assert!(
        plain.contains("INFO") && !plain.contains("DEBUG"),
        "{plain}"
    );
    assert!(loud.contains("INFO") && loud.contains("DEBUG"), "{loud}");
    assert!(
        !quiet.contains("INFO") && !quiet.contains("DEBUG"),
        "{quiet}"
    );

    let bin = work.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let script = bin.join("fusion-host-level");
    std::fs::write(&script, "#!/bin/sh\necho \"level: $FUSION_LOG\"\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for (flags, want) in [
        (&[][..], "level:"),
        (&["-v"][..], "level: debug"),
        (&["-vv"][..], "level: trace"),
        (&["-q"][..], "level: warn"),
    ] {
        let mut args = flags.to_vec();
        args.push("level");
        let run = run_host_env(work.path(), &args, &[("PATH", &path)]);
        assert_eq!(run.code, 0, "{flags:?}: {}", run.stderr);
        assert_eq!(run.stdout.trim(), want, "{flags:?}");
    }
}

// ---- continual merging (OPCM and its baselines, DOP), DOGE-TA, RanDeS (issue 17) -----------

/// A model pool config over linalg-tiny's models (`models` or `doge/models`, with their
/// CLIP-like names).
fn linalg_tiny_pool(dir: &str, names: &[&str]) -> String {
    let models = data().join("linalg-tiny").join(dir);
    let mut s = String::from("_target_: fusion_bench.modelpool.BaseModelPool\nmodels:\n");
    for m in names {
        s.push_str(&format!(
            "  {m}: {}\n",
            models.join(format!("{m}.safetensors")).display()
        ));
    }
    s
}

/// The largest `max|a − b| / max|b|` over the tensors of two checkpoints' contents (as
/// [`read_f32`] gives them) with the same names and shapes.
fn max_rel_f32(
    got: &[(String, Vec<usize>, Vec<f32>)],
    want: &[(String, Vec<usize>, Vec<f32>)],
) -> f32 {
    assert_eq!(got.len(), want.len());
    let mut worst = 0f32;
    for ((n1, s1, v1), (n2, s2, v2)) in got.iter().zip(want) {
        assert_eq!((n1, s1), (n2, s2));
        let scale = v2.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        let err = v1
            .iter()
            .zip(v2)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        worst = worst.max(err / scale);
    }
    worst
}

const LINALG_TINY: &[&str] = &["_pretrained_", "task_a", "task_b", "task_c", "task_d"];

/// FusionBench's own continual method files run through the host: OPCM
/// (`opcm/opcm_general`, seeded shuffle, the model after every step saved under FusionBench's
/// checkpoint names), continual TIES, and DOP (`dop/dop_general`, ordered by the program's
/// seed, the final model), each against what fusion-bench produced.
#[test]
fn continual_methods_from_fusionbench_config_files() {
    let cfg = configs(&[(
        "modelpool/linalg.yaml",
        &linalg_tiny_pool("models", LINALG_TINY),
    )]);
    let cp = cfg.path().to_str().unwrap();
    let expected = data().join("linalg-tiny/continual");
    let work = tempfile::tempdir().unwrap();
    let run = run_configs(
        work.path(),
        cp,
        &[
            "modelpool=linalg",
            "method=opcm/opcm_general",
            "method.seed=42",
            "merged_model_save_path=opcm.safetensors",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    for step in 0..4 {
        let err = max_rel_error_files(
            &work
                .path()
                .join(format!("opcm_merged_model_{step}.safetensors")),
            &expected.join(format!("opcm_shuffled/step_{step}.safetensors")),
        );
        assert!(err <= 1e-4, "OPCM step {step}: relative error {err}");
    }

    let run = run_configs(
        work.path(),
        cp,
        &[
            "modelpool=linalg",
            "method=opcm/ties_merging",
            "method.seed=3",
            "method.save_on_every_step=false",
            "merged_model_save_path=ties.safetensors",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let err = max_rel_error_files(
        &work.path().join("ties.safetensors"),
        &expected.join("continual_ties_merging/step_3.safetensors"),
    );
    assert!(err <= 1e-5, "continual TIES: relative error {err}");

    let run = run_configs(
        work.path(),
        cp,
        &[
            "modelpool=linalg",
            "method=dop/dop_general",
            "seed=5",
            "merged_model_save_path=dop.safetensors",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let err = max_rel_error_files(
        &work.path().join("dop.safetensors"),
        &expected.join("dop/step_3.safetensors"),
    );
    assert!(err <= 1e-4, "DOP: relative error {err}");

    // bad input: a misspelt parameter, no model to merge, an unknown projection space
    let run = run_configs(
        work.path(),
        cp,
        &[
            "modelpool=linalg",
            "method=opcm/opcm_general",
            "+method.alhpa=0.3",
        ],
    );
    run.assert_clean_failure(2);
    assert!(run.error().contains("alhpa"), "{}", run.stderr);
    let run = run_configs(
        work.path(),
        cp,
        &[
            "modelpool=linalg",
            "~modelpool.models.task_a",
            "~modelpool.models.task_b",
            "~modelpool.models.task_c",
            "~modelpool.models.task_d",
            "method=opcm/weight_average",
        ],
    );
    run.assert_clean_failure(2);
    assert!(run.error().contains("at least 1 model"), "{}", run.stderr);
    let run = run_configs(
        work.path(),
        cp,
        &[
            "modelpool=linalg",
            "method=dop/dop_general",
            "method.svd_proj_space=w",
        ],
    );
    run.assert_clean_failure(2);
    assert!(run.error().contains("svd_proj_space"), "{}", run.stderr);
}

/// DOGE-TA (`doge_ta/doge_ta`) and RanDeS (`randes/superposed_model_soup` with the mode
/// FusionBench's example script sets) from FusionBench's files, against fusion-bench's output;
/// FusionBench's own `randes/superposed_task_arithmetic` lacks two required parameters and
/// fails as it does in FusionBench, naming them.
#[test]
fn doge_ta_and_randes_from_fusionbench_config_files() {
    let cfg = configs(&[(
        "modelpool/enc.yaml",
        &linalg_tiny_pool("doge/models", LINALG_TINY),
    )]);
    let cp = cfg.path().to_str().unwrap();
    let fixtures = data().join("linalg-tiny");
    let work = tempfile::tempdir().unwrap();
    let run = run_configs(
        work.path(),
        cp,
        &[
            "modelpool=enc",
            "method=doge_ta/doge_ta",
            "merged_model_save_path=doge.safetensors",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let err = max_rel_error_files(
        &work.path().join("doge.safetensors"),
        &fixtures.join("doge/doge_ta.safetensors"),
    );
    assert!(err <= 1e-4, "DOGE-TA: relative error {err}");

    let run = run_configs(
        work.path(),
        cp,
        &[
            "modelpool=enc",
            "method=randes/superposed_model_soup",
            "method.mode=identity_matrix",
            "merged_model_save_path=soup.safetensors",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    for m in &LINALG_TINY[1..] {
        let err = max_rel_error_files(
            &work.path().join(format!("soup_{m}.safetensors")),
            &fixtures.join(format!("randes/randes_soup_identity/{m}.safetensors")),
        );
        assert!(err <= 1e-5, "RanDeS model soup, {m}: relative error {err}");
    }

    let run = run_configs(
        work.path(),
        cp,
        &["modelpool=enc", "method=randes/superposed_task_arithmetic"],
    );
    run.assert_clean_failure(2);
    assert!(run.error().contains("absorber"), "{}", run.stderr);
}

// ---- the linear-algebra family's bad input (issue 17) ---------------------------------------

/// A pool whose models are written by `tensors(i)` (model 0 is `_pretrained_`), as
/// `modelpool=linalg_bad` in a fresh config folder.
fn linalg_bad_pool(
    work: &Path,
    models: usize,
    tensors: impl Fn(usize) -> Vec<(&'static str, Vec<usize>, Vec<f32>)>,
) -> tempfile::TempDir {
    let mut lines = vec![
        "_target_: fusion_bench.modelpool.BaseModelPool".to_string(),
        "models:".to_string(),
    ];
    for i in 0..models {
        let name = if i == 0 {
            "_pretrained_".to_string()
        } else {
            format!("task_{i}")
        };
        let path = work.join(format!("{name}.safetensors"));
        write_f32(&path, &tensors(i));
        lines.push(format!("  {name}: {}", path.display()));
    }
    let cfg = tempfile::tempdir().unwrap();
    write_configs(
        cfg.path(),
        &[("modelpool/linalg_bad.yaml", &(lines.join("\n") + "\n"))],
    );
    cfg
}

/// The SVD-based methods given models without a single 2-D weight stop before any work with
/// exit 2 and a message naming the method and what it needs, for each of FusionBench's
/// config files.
#[test]
fn svd_methods_given_no_2d_weights_exit_2_naming_the_method() {
    let work = tempfile::tempdir().unwrap();
    let cfg = linalg_bad_pool(work.path(), 3, |i| {
        vec![
            ("norm.weight", vec![6], vec![i as f32; 6]),
            ("norm.bias", vec![6], vec![0.5 * i as f32; 6]),
        ]
    });
    for (method, name) in [
        (
            "task_singular_vector/TaskSingularVectorMerging",
            "task_singular_vector",
        ),
        ("isotropic_merging/iso_c", "iso_c"),
        ("isotropic_merging/iso_cts", "iso_cts"),
    ] {
        let run = run_configs(
            work.path(),
            cfg.path(),
            &[
                "modelpool=linalg_bad",
                &format!("method={method}"),
                "merged_model_save_path=merged.safetensors",
            ],
        );
        assert_eq!(run.code, 2, "{method}: {}", run.stderr);
        assert!(
            run.stderr.contains(&format!(
                "{name} works on the singular vectors of 2-D weights, and the models have none"
            )),
            "{method}: {}",
            run.stderr
        );
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
        assert!(!work.path().join("merged.safetensors").exists());
    }
}

/// TSV-M keeps ⌊k/T⌋ singular directions of each of the T task vectors of a 2-D weight of rank
/// at most k: a weight too small for one direction per task (rank 3, four task vectors) is
/// named, with its shape, and the run exits 2; naming it in `exclude_keys` averages it instead
/// and the run succeeds.
#[test]
fn a_rank_larger_than_the_matrix_is_named_with_exit_2() {
    let work = tempfile::tempdir().unwrap();
    let cfg = linalg_bad_pool(work.path(), 5, |i| {
        vec![
            (
                "proj.weight",
                vec![3, 8],
                (0..24).map(|j| (i * 24 + j) as f32 * 0.01).collect(),
            ),
            (
                "big.weight",
                vec![8, 8],
                (0..64)
                    .map(|j| ((i * 7 + j * 3) % 11) as f32 * 0.1)
                    .collect(),
            ),
        ]
    });
    let args = |extra: &str| {
        vec![
            "--config-path".to_string(),
            cfg.path().to_str().unwrap().to_string(),
            "modelpool=linalg_bad".to_string(),
            "method=task_singular_vector/TaskSingularVectorMerging".to_string(),
            "merged_model_save_path=merged.safetensors".to_string(),
            extra.to_string(),
        ]
    };
    let run = run_args(work.path(), &args("print_config=false"));
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("`proj.weight` (3x8) has rank at most 3")
            && run.stderr.contains("4 task vectors")
            && run.stderr.contains("exclude_keys"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert!(!work.path().join("merged.safetensors").exists());

    let run = run_args(work.path(), &args("method.exclude_keys=['proj.weight']"));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(work.path().join("merged.safetensors").is_file());
}

// ---- the README's demo table (issue 17) --------------------------------------------------------

/// The README's demo table, measured by `tools/demo_table.sh`, cannot drift from the code: four
/// of the linear-algebra family's rows (TSV-M, ISO-C, ISO-CTS and singular value calibration after
/// task arithmetic, from FusionBench's own config files) are re-run on the demo pool through the built
/// host, and each average accuracy, rounded as the table rounds it, is the README's.
#[test]
fn demo_table_rows_of_the_linear_algebra_methods_match_the_readme() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let out = tempfile::tempdir().unwrap();
    for (row, method) in [
        (
            "task_singular_vector (TSV-M",
            "task_singular_vector/TaskSingularVectorMerging",
        ),
        ("isotropic_merging/iso_c (", "isotropic_merging/iso_c"),
        // ISO-CTS completes an orthonormal basis, which used to panic on this pool.
        ("isotropic_merging/iso_cts (", "isotropic_merging/iso_cts"),
        (
            "singular_value_calibration/task_arithmetic (",
            "singular_value_calibration/task_arithmetic",
        ),
    ] {
        // `| label | six accuracies | **average** |`: the row's last cell, bold.
        let line = readme
            .lines()
            .find(|l| l.starts_with(&format!("| {row}")))
            .unwrap_or_else(|| panic!("README.md has no demo-table row `{row}…`"));
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 8, "label, six tasks, average: {line}");
        let want = cells[7].trim_matches('*');
        let r = run_host(
            &root(),
            &[
                "--device",
                "cpu",
                "modelpool=CLIPVisionModelPool/demo",
                "taskpool=CLIPVisionModelTaskPool/demo",
                &format!("method={method}"),
                "print_config=false",
                "report_save_path=null",
                &format!("path.log_dir={}", out.path().join(method).display()),
            ],
        );
        assert_eq!(r.code, 0, "{method}: {}", r.stderr);
        let report = json(&r.stdout);
        let tasks = [
            "fashion_tops",
            "fashion_other",
            "fashion_negative",
            "digits_low",
            "digits_high",
            "digits_negative",
        ];
        for (task, cell) in tasks.iter().zip(&cells[1..7]) {
            let acc = report[task]["accuracy"].as_f64().unwrap();
            assert_eq!(
                format!("{:.1}", 100.0 * acc),
                *cell,
                "{method} {task}: {line}"
            );
        }
        let avg = report["average"]["accuracy"].as_f64().unwrap();
        assert_eq!(
            format!("{:.1}", 100.0 * avg),
            want,
            "{method}: the README's row is `{line}`"
        );
    }
}

/// `fusion-host --device cpu mergekit` with `tokenizer_source: union` (issue 18): the output
/// vocabulary is mergekit's (its tokenizer.json, `vocab_size` in config.json), every
/// embedding row matches mergekit-yaml's for the same token, and the log says the merge ran on
/// the CPU whatever `--device` asked.
#[test]
fn mergekit_merges_vocabularies_like_mergekit_yaml() {
    let work = mergekit_work();
    let run = run_host(
        work.path(),
        &[
            "--device",
            "cpu",
            "mergekit",
            "configs/tok_union_linear.yaml",
            "out",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("mergekit merges run on the CPU"),
        "{}",
        run.stderr
    );
    let out = work.path().join("out");
    let expected = data().join("mergekit-tiny/expected/tok_union_linear");
    let config = json(&std::fs::read_to_string(out.join("config.json")).unwrap());
    assert_eq!(config["vocab_size"], 99);
    let vocab = |dir: &Path| -> std::collections::HashMap<String, usize> {
        let t = json(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap());
        let mut v: std::collections::HashMap<String, usize> = t["model"]["vocab"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, i)| (k.clone(), i.as_u64().unwrap() as usize))
            .collect();
        for a in t["added_tokens"].as_array().unwrap() {
            v.insert(
                a["content"].as_str().unwrap().to_string(),
                a["id"].as_u64().unwrap() as usize,
            );
        }
        v
    };
    let (ours, theirs) = (vocab(&out), vocab(&expected));
    assert_eq!(ours.len(), 99);
    let got = checkpoint_tensors(&out);
    let want = read_f32(&expected.join("model.safetensors"));
    for ((name, shape, g), (_, _, w)) in got.iter().zip(&want) {
        if name == "model.embed_tokens.weight" || name == "lm_head.weight" {
            let cols = shape[1];
            for (token, &j) in &theirs {
                let i = ours[token];
                assert_eq!(
                    &g[i * cols..(i + 1) * cols],
                    &w[j * cols..(j + 1) * cols],
                    "{name}: row of {token:?}"
                );
            }
        } else {
            assert_eq!(g, w, "{name}");
        }
    }
}

// ---- DOP for CLIP, RanDeS rotation, dense and LoRA from FusionBench's files (issue 17) ------

/// FusionBench's `dop/dop` (ContinualDOPForCLIP), seeded: its `evaluate_on_every_step: true`
/// returns the model after every step, each against fusion-bench's; without `alpha` it fails
/// naming it.
#[test]
fn dop_for_clip_from_fusionbench_config_file() {
    let cfg = configs(&[(
        "modelpool/linalg.yaml",
        &linalg_tiny_pool("models", LINALG_TINY),
    )]);
    let cp = cfg.path().to_str().unwrap();
    let expected = data().join("linalg-tiny/continual/dop_clip");
    let work = tempfile::tempdir().unwrap();
    let log_arg = format!("path.log_dir={}", work.path().join("logs").display());
    let run = run_host(
        work.path(),
        &[
            "--config-path",
            cp,
            "modelpool=linalg",
            "method=dop/dop",
            "method.seed=7",
            "merged_model_save_path=dop.safetensors",
            &log_arg,
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    // the order it merged in, as the class writes it: random.seed(7); random.shuffle(...)
    let order: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(work.path().join("logs/model_names.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(order, ["task_d", "task_b", "task_a", "task_c"]);
    for step in 0..4 {
        let got = read_f32(
            &work
                .path()
                .join(format!("dop_merged_model_{step}.safetensors")),
        );
        let want = read_f32(&expected.join(format!("step_{step}.safetensors")));
        let err = max_rel_f32(&got, &want);
        assert!(
            err <= 1e-4,
            "DOP for CLIP step {step}: relative error {err}"
        );
    }
    let run = run_host(
        work.path(),
        &[
            "--config-path",
            cp,
            "modelpool=linalg",
            "method=dop/dop",
            "method.alpha=null",
        ],
    );
    run.assert_clean_failure(2);
    assert!(run.error().contains("alpha"), "{}", run.stderr);
}

/// RanDeS' rotation and dense modes through FusionBench's `randes/superposed_task_arithmetic`
/// (with the two parameters it lacks), and `randes/superposed_task_arithmetic_lora` over LoRA
/// adapters: as shipped it fails naming `absorber`, as FusionBench does; completed, every
/// retrieved model matches fusion-bench's.
#[test]
fn randes_rotation_dense_and_lora_from_fusionbench_config_files() {
    let fixtures = data().join("linalg-tiny");
    let lora = fixtures.join("randes/lora");
    let mut lora_pool = format!(
        "_target_: fusion_bench.modelpool.BaseModelPool\nmodels:\n  _pretrained_: {}\n",
        fixtures
            .join("doge/models/_pretrained_.safetensors")
            .display()
    );
    for m in &LINALG_TINY[1..] {
        lora_pool.push_str(&format!(
            "  {m}: {}\n",
            lora.join(format!("{m}.safetensors")).display()
        ));
    }
    let cfg = configs(&[
        (
            "modelpool/enc.yaml",
            &linalg_tiny_pool("doge/models", LINALG_TINY),
        ),
        ("modelpool/lora.yaml", &lora_pool),
    ]);
    let cp = cfg.path().to_str().unwrap();
    let work = tempfile::tempdir().unwrap();
    let complete = ["+method.absorber=None", "+method.ms_mode=average"];
    for (case, pool, method, extra) in [
        (
            "randes_ta_rotation",
            "enc",
            "randes/superposed_task_arithmetic",
            &[
                "method.mode=random_rotation_matrix",
                "method.different_across_layers=false",
            ][..],
        ),
        (
            "randes_ta_dense",
            "enc",
            "randes/superposed_task_arithmetic",
            &[
                "method.mode=random_dense_matrix",
                "method.scaling_factor=0.3",
            ][..],
        ),
        (
            "randes_lora_binary",
            "lora",
            "randes/superposed_task_arithmetic_lora",
            &[][..],
        ),
    ] {
        let pool_arg = format!("modelpool={pool}");
        let method_arg = format!("method={method}");
        let save = format!("merged_model_save_path={case}.safetensors");
        let mut args = vec!["--config-path", cp, &pool_arg, &method_arg, &save];
        args.extend(complete);
        args.extend(extra);
        let run = run_host(work.path(), &args);
        assert_eq!(run.code, 0, "{case}: {}", run.stderr);
        // FusionBench's dense contexts are inverted in f32 (see the merging tests): their
        // output within 5e-4, FusionBench's code with an f64 pseudo-inverse within 1e-5
        let (want_case, tolerance) = match case {
            "randes_ta_dense" => ("randes_ta_dense_pinv_f64", 1e-5),
            _ => (case, 1e-4),
        };
        for m in &LINALG_TINY[1..] {
            let got = read_f32(&work.path().join(format!("{case}_{m}.safetensors")));
            let want = read_f32(&fixtures.join(format!("randes/{want_case}/{m}.safetensors")));
            let err = max_rel_f32(&got, &want);
            assert!(err <= tolerance, "{case}, {m}: relative error {err}");
            let fb = read_f32(&fixtures.join(format!("randes/{case}/{m}.safetensors")));
            let err = max_rel_f32(&got, &fb);
            assert!(
                err <= 5e-4,
                "{case}, {m}: relative error {err} to FusionBench's"
            );
        }
    }
    let run = run_host(
        work.path(),
        &[
            "--config-path",
            cp,
            "modelpool=lora",
            "method=randes/superposed_task_arithmetic_lora",
        ],
    );
    run.assert_clean_failure(2);
    assert!(run.error().contains("absorber"), "{}", run.stderr);
    // whole models are no LoRA adapters
    let run = run_host(
        work.path(),
        &[
            "--config-path",
            cp,
            "modelpool=enc",
            "method=randes/superposed_task_arithmetic_lora",
            "+method.absorber=None",
            "+method.ms_mode=average",
        ],
    );
    run.assert_clean_failure(1);
    assert!(run.error().contains("not a LoRA tensor"), "{}", run.stderr);
}

/// SMILE upscaling from FusionBench's own YAML file (`smile_upscaling/smile_upscaling`) on the
/// demo: as shipped, its `k: 128` exceeds the rank of the demo's 128×64 `fc1` (FusionBench's
/// module fails there), a clear error naming the tensor; with `k` 32 the CLIP task pool
/// evaluates the upscaled tower (mixture-of-experts linears, routed per token), the saved
/// checkpoint holds FusionBench's `SmileMoELinear` names and the routing in config.json, and
/// evaluated again from disk it scores exactly the same.
#[test]
fn smile_upscaling_runs_from_fusionbench_yaml_and_the_task_pool_evaluates_the_upscaled_model() {
    let out = tempfile::tempdir().unwrap();
    let base = |tag: &str| -> Vec<String> {
        let mut a: Vec<String> = [
            "--device",
            "cpu",
            "modelpool=CLIPVisionModelPool/demo",
            "taskpool=CLIPVisionModelTaskPool/demo",
            "print_config=false",
        ]
        .map(String::from)
        .to_vec();
        a.push(format!("path.log_dir={}", out.path().join(tag).display()));
        a
    };
    let mut args = base("as_shipped");
    args.push("method=smile_upscaling/smile_upscaling".into());
    let failed = run_args(&root(), &args);
    assert_eq!(failed.code, 2, "{}", failed.stderr);
    assert!(
        failed.error().contains(
            "`k` = 128 is larger than the rank of `vision_model.encoder.layers.0.mlp.fc1.weight` (128×64, at most 64)"
        ),
        "{}",
        failed.stderr
    );

    let saved = out.path().join("upscaled");
    let mut args = base("k32");
    args.extend([
        "method=smile_upscaling/smile_upscaling".to_string(),
        "method.k=32".to_string(),
        format!("merged_model_save_path={}", saved.display()),
    ]);
    let run = run_args(&root(), &args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let upscaled = json(&run.stdout);

    // The README's demo-table row (`tools/demo_table.sh`) is this run.
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let row = readme
        .lines()
        .find(|l| l.starts_with("| smile_upscaling/smile_upscaling (k=32, gate_k=1,"))
        .expect("README.md has the SMILE row");
    let avg = format!(
        "**{:.1}** |",
        100.0 * upscaled["average"]["accuracy"].as_f64().unwrap()
    );
    assert!(row.ends_with(&avg), "{row} vs {avg}");

    let mut args = base("pretrained");
    args.push("method=dummy".into());
    let pretrained = run_args(&root(), &args);
    assert_eq!(pretrained.code, 0, "{}", pretrained.stderr);
    let pretrained = json(&pretrained.stdout);
    // 6 experts on each of the 18 linears: far more parameters, and other scores.
    let params = |r: &Value| r["model_info"]["all_params"].as_u64().unwrap();
    assert!(params(&upscaled) > 2 * params(&pretrained), "{upscaled}");
    assert_ne!(
        upscaled["average"]["loss"], pretrained["average"]["loss"],
        "the experts change the tower"
    );

    let tensors: Vec<String> = read_f32(&saved.join("model.safetensors"))
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    for name in [
        "vision_model.encoder.layers.0.mlp.fc1.gate.weights",
        "vision_model.encoder.layers.2.self_attn.q_proj.experts.5.svh",
        "vision_model.encoder.layers.2.mlp.fc2.experts.0.u",
        "vision_model.encoder.layers.1.self_attn.out_proj.pretrained_model.bias",
    ] {
        assert!(tensors.iter().any(|t| t == name), "{name} not saved");
    }
    assert!(!tensors.iter().any(|t| t.ends_with("mlp.fc1.weight")));
    let config = json(&std::fs::read_to_string(saved.join("config.json")).unwrap());
    assert_eq!(config["smile_upscaling"]["top_k"], 1, "{config}");
    assert_eq!(config["smile_upscaling"]["num_experts"], 6, "{config}");

    let mut args = base("reloaded");
    args.extend([
        "method=dummy".to_string(),
        format!("modelpool.models._pretrained_={}", saved.display()),
    ]);
    let again = run_args(&root(), &args);
    assert_eq!(again.code, 0, "{}", again.stderr);
    let again = json(&again.stdout);
    for task in ["fashion_tops", "digits_negative", "average"] {
        assert_eq!(again[task], upscaled[task], "{task}");
    }
}

/// `fusion-host mergekit --device vulkan|cuda` (issue 18): the merge runs on a wgpu adapter
/// (lavapipe here; `cuda` takes any adapter, hardware first), end to end, with mergekit's
/// tensors as the result (TIES on the device is the CPU path's arithmetic, bit for bit); the
/// host's own `--device` reaches the command too; a device that is not there is a clear error
/// before anything is written.
#[test]
fn mergekit_merges_on_the_device_named_as_mergekit_users_name_it() {
    let work = mergekit_work();
    let golden = |case: &str| {
        read_f32(
            &data()
                .join("mergekit-tiny/expected")
                .join(case)
                .join("model.safetensors"),
        )
    };
    let runs: [(&[&str], &str, &str); 3] = [
        (
            &[
                "mergekit",
                "configs/ties.yaml",
                "out_vulkan",
                "--device",
                "vulkan",
            ],
            "ties",
            "out_vulkan",
        ),
        (
            &[
                "mergekit",
                "configs/task_arithmetic.yaml",
                "out_cuda",
                "--device",
                "cuda",
            ],
            "task_arithmetic",
            "out_cuda",
        ),
        (
            &[
                "--device",
                "cuda:0",
                "mergekit",
                "configs/slerp.yaml",
                "out_host",
            ],
            "slerp",
            "out_host",
        ),
    ];
    for (args, case, out) in runs {
        let run = run_host(work.path(), args);
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
        assert!(
            run.stderr.contains("merging on the device"),
            "{args:?}: the log does not say the device merged:\n{}",
            run.stderr
        );
        let got = checkpoint_tensors(&work.path().join(out));
        let want = golden(case);
        assert_eq!(got.len(), want.len(), "{case}");
        for ((gn, gs, gv), (wn, ws, wv)) in got.iter().zip(&want) {
            assert_eq!((gn, gs), (wn, ws));
            for (g, w) in gv.iter().zip(wv) {
                assert!((g - w).abs() <= 1e-6, "{case}: {gn}: {g} vs mergekit's {w}");
            }
        }
    }
    // A method without device kernels runs on the CPU, and the log says so.
    let run = run_host(
        work.path(),
        &[
            "mergekit",
            "configs/sce.yaml",
            "out_sce",
            "--device",
            "vulkan",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("no device kernels"), "{}", run.stderr);
    // Devices that are not there.
    for device in ["mps", "dx12", "vulkan:7"] {
        let out = format!("out_{}", device.replace(':', "_"));
        let run = run_host(
            work.path(),
            &["mergekit", "configs/linear.yaml", &out, "--device", device],
        );
        run.assert_clean_failure(1);
        assert!(
            run.error().contains(device) && run.error().contains("no such device"),
            "{device}: {}",
            run.error()
        );
        assert!(!work.path().join(&out).exists(), "{device}: output written");
    }
}

/// Issue 20: the task pool's `gemm_kernel` key picks the WGSL path's matrix-product kernel for
/// the run (over FUSION_GEMM): a kernel the adapter runs scores as the tuned choice does; a name
/// that is not a kernel is a configuration error naming the key and the value.
#[test]
fn the_task_pool_gemm_kernel_key_picks_the_product_kernel() {
    let args = |kernel: &'static str| {
        [
            "--device",
            "cpu",
            "modelpool=CLIPVisionModelPool/demo",
            "taskpool=CLIPVisionModelTaskPool/demo",
            "method=task_arithmetic",
            "print_config=false",
            "fast_dev_run=true",
            kernel,
        ]
    };
    let env = [("FUSION_CLIP_BACKEND", "wgsl"), ("FUSION_GEMM", "tiled16")];
    let tuned = run_host_env(&root(), &args("+taskpool.gemm_kernel=auto"), &env);
    assert_eq!(tuned.code, 0, "{}", tuned.stderr);
    let fixed = run_host_env(&root(), &args("+taskpool.gemm_kernel=tiled8"), &env);
    assert_eq!(fixed.code, 0, "{}", fixed.stderr);
    assert!(
        fixed
            .stderr
            .contains("gemm kernel set by the configuration")
            && fixed.stderr.contains("tiled8"),
        "{}",
        fixed.stderr
    );
    assert!(
        !tuned
            .stderr
            .contains("gemm kernel set by the configuration"),
        "{}",
        tuned.stderr
    );
    let (a, b) = (json(&tuned.stdout), json(&fixed.stdout));
    for (task, scores) in a.as_object().unwrap() {
        let Some(loss) = scores.get("loss").and_then(Value::as_f64) else {
            continue;
        };
        let (acc_a, acc_b) = (
            scores["accuracy"].as_f64().unwrap(),
            b[task]["accuracy"].as_f64().unwrap(),
        );
        assert!(
            (acc_a - acc_b).abs() <= 2.0 / 256.0,
            "{task}: {acc_a} vs {acc_b}"
        );
        let other = b[task]["loss"].as_f64().unwrap();
        assert!(
            (loss - other).abs() <= 1e-3,
            "{task}: loss {loss} vs {other}"
        );
    }
    let bad = run_host_env(&root(), &args("+taskpool.gemm_kernel=fastest"), &env);
    bad.assert_clean_failure(2);
    assert!(
        bad.error().contains("gemm_kernel") && bad.error().contains("fastest"),
        "{}",
        bad.error()
    );
}
