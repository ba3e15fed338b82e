//! The methods that return several models (TALL masks, EMR merging) and the task-vector analysis,
//! against what fusion-bench produced for `tests/data/linalg-tiny` (`cases_extra.yaml`, made by
//! `make_linalg_extra.py`), and their errors on bad input. They run without a compute device.

use std::path::{Path, PathBuf};

use fusion_merging::{EmrMerging, TallMask, TaskVectorCosSimilarity, TaskVectorViolinPlot};
use fusion_plugin_api::serde_json::{self, json, Value};
use fusion_plugin_api::{Algorithm, Config, Context, FromConfig, Model};

use crate::common::*;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/linalg-tiny")
}

fn model(path: &Path) -> Model {
    fusion_checkpoint::open_model(path.to_str().unwrap()).expect("fixture model")
}

fn pool(names: &[&str]) -> Pool {
    Pool(
        names
            .iter()
            .map(|n| {
                let m = model(&dir().join("models").join(format!("{n}.safetensors")));
                (n.to_string(), m)
            })
            .collect(),
    )
}

const ALL: [&str; 5] = ["_pretrained_", "task_a", "task_b", "task_c", "task_d"];

fn cpu_ctx() -> Context {
    Context::local(Some(0), false, None)
}

fn build(target: &str, config: Value) -> fusion_plugin_api::Result<Box<dyn Algorithm>> {
    let cfg = Config::new(target, config)?;
    let algo: Box<dyn Algorithm> = match target {
        "tall_mask" => Box::new(TallMask::from_config(&cfg)?),
        "emr_merging" => Box::new(EmrMerging::from_config(&cfg)?),
        "task_vector_cos_similarity" => Box::new(TaskVectorCosSimilarity::from_config(&cfg)?),
        "task_vector_violin_plot" => Box::new(TaskVectorViolinPlot::from_config(&cfg)?),
        other => panic!("no such algorithm here: {other}"),
    };
    cfg.check_parameters()?;
    Ok(algo)
}

/// A case of `cases_extra.yaml`.
fn case(name: &str) -> serde_norway::Value {
    let text = std::fs::read_to_string(dir().join("cases_extra.yaml")).unwrap();
    let cases: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    cases["cases"][name].clone()
}

/// Run a several-models case: the method's config without `_target_`, the pool's models, and the
/// expected file of each returned model by name.
fn run_case(target: &str, name: &str) -> Vec<(String, Model)> {
    let case = case(name);
    let mut method: Value = serde_json::to_value(&case["method"]).unwrap();
    method.as_object_mut().unwrap().remove("_target_");
    let models: Vec<String> = serde_norway::from_value(case["models"].clone()).unwrap();
    let names: Vec<&str> = models.iter().map(String::as_str).collect();
    build(target, method)
        .unwrap()
        .run_models(&pool(&names), &cpu_ctx())
        .unwrap()
}

fn expected(name: &str) -> Vec<(String, Model)> {
    let case = case(name);
    let files: std::collections::BTreeMap<String, String> =
        serde_norway::from_value(case["expected"].clone()).unwrap();
    files
        .into_iter()
        .map(|(k, f)| (k, model(&dir().join(f))))
        .collect()
}

/// Elementwise methods: f32 arithmetic in FusionBench's order (EMR's rescalers are means over
/// the model, summed in another order).
const ELEMENTWISE: f64 = 1e-5;

fn golden_tall(name: &str) {
    let got = run_case("tall_mask", name);
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "models/task_a",
            "models/task_b",
            "models/task_c",
            "models/task_d",
            "metadata"
        ]
    );
    assert_eq!(got[4].1.as_report_value().unwrap(), Some(Value::Null));
    let want = expected(name);
    assert_eq!(want.len(), 4);
    for (task, expected) in &want {
        let (_, model) = got
            .iter()
            .find(|(n, _)| n == &format!("models/{task}"))
            .unwrap();
        assert_eq!(model.as_report_value().unwrap(), None);
        let err = max_rel_error(model, expected);
        eprintln!("golden {name}/{task}: max relative error {err:.3e}");
        assert!(err <= ELEMENTWISE, "{name}/{task}: {err:.3e}");
    }
}

#[test]
fn golden_tall_mask() {
    golden_tall("tall_mask");
}

#[test]
fn golden_tall_mask_lambda_0_3() {
    golden_tall("tall_mask_0.3");
}

fn golden_emr(name: &str, tasks: &[&str]) {
    let got = run_case("emr_merging", name);
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, tasks);
    let want = expected(name);
    for (task, model) in &got {
        let (_, expected) = want.iter().find(|(n, _)| n == task).unwrap();
        let err = max_rel_error(model, expected);
        eprintln!("golden {name}/{task}: max relative error {err:.3e}");
        assert!(err <= ELEMENTWISE, "{name}/{task}: {err:.3e}");
    }
}

#[test]
fn golden_emr_merging() {
    golden_emr("emr_merging", &["task_a", "task_b", "task_c", "task_d"]);
}

#[test]
fn golden_emr_merging_three_models() {
    golden_emr("emr_merging_3", &["task_b", "task_c", "task_d"]);
}

/// The models differ from each other and from the pretrained model (the masks select).
#[test]
fn per_task_models_differ() {
    for (target, config) in [
        ("tall_mask", json!({"tall_mask_lambda": 0.6})),
        ("emr_merging", json!({})),
    ] {
        let got = build(target, config)
            .unwrap()
            .run_models(&pool(&ALL), &cpu_ctx())
            .unwrap();
        let base = model(&dir().join("models/_pretrained_.safetensors"));
        let models: Vec<&Model> = got
            .iter()
            .filter(|(n, _)| n != "metadata")
            .map(|(_, m)| m)
            .collect();
        assert_eq!(models.len(), 4, "{target}");
        for (i, a) in models.iter().enumerate() {
            assert!(max_rel_error(a, &base) > 1e-3, "{target} {i}");
            for b in &models[i + 1..] {
                assert!(max_rel_error(a, b) > 1e-4, "{target} {i}");
            }
        }
    }
}

/// A fresh folder under the system's temporary folder.
fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "fusion-merging-{tag}-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    ));
    let d = PathBuf::from(d.to_string_lossy().replace([' ', ':', '{', '}', ','], "_"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn read_csv(path: &Path) -> (Vec<String>, Vec<(String, Vec<f64>)>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap()
        .split(',')
        .skip(1)
        .map(String::from)
        .collect();
    let rows = lines
        .map(|l| {
            let mut cells = l.split(',');
            let name = cells.next().unwrap().to_string();
            (name, cells.map(|c| c.parse().unwrap()).collect())
        })
        .collect();
    (header, rows)
}

/// Decode a PNG: (width, height, RGB bytes).
fn decode_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut reader = png::Decoder::new(file).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

/// Distinct colours in an image (a plot has several; a blank image one).
fn colours(rgb: &[u8]) -> usize {
    rgb.chunks(3)
        .map(|c| (c[0], c[1], c[2]))
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// The cosine-similarity CSV matches fusion-bench's to 1e-12 (both in f64 from the same f32
/// task vectors); the heatmap decodes at the size its layout gives and is a picture; the method
/// returns the pretrained model.
#[test]
fn golden_task_vector_cos_similarity() {
    let out = temp_dir("cos");
    let algo = build(
        "task_vector_cos_similarity",
        json!({"plot_heatmap": true, "trainable_only": true, "max_points_per_model": null,
               "output_path": null}),
    )
    .unwrap();
    let ctx = cpu_ctx().with_log_dir(&out);
    let returned = algo.run(&pool(&ALL), &ctx).unwrap();
    let base = model(&dir().join("models/_pretrained_.safetensors"));
    assert_eq!(max_rel_error(&returned, &base), 0.0);

    let (header, rows) = read_csv(&out.join("task_vector_cos_similarity.csv"));
    let (want_header, want_rows) = read_csv(&dir().join("expected/task_vector_cos_similarity.csv"));
    assert_eq!(header, want_header);
    assert_eq!(rows.len(), 4);
    let mut worst = 0f64;
    for ((n, got), (m, want)) in rows.iter().zip(&want_rows) {
        assert_eq!(n, m);
        for (g, w) in got.iter().zip(want) {
            worst = worst.max((g - w).abs());
        }
    }
    eprintln!("cos similarity: max abs error {worst:.3e}");
    assert!(worst <= 1e-12, "{worst:e}");
    // the diagonal is 1, the matrix symmetric, off-diagonal entries small for these models
    for (i, (_, row)) in rows.iter().enumerate() {
        assert!((row[i] - 1.0).abs() < 1e-12);
        for (j, v) in row.iter().enumerate() {
            assert_eq!(*v, rows[j].1[i]);
        }
    }

    let (w, h, rgb) = decode_png(&out.join("task_vector_cos_similarity.png"));
    // 4 cells of 56 px plus labels, colour bar and title
    assert!(w > 4 * 56 && w < 4 * 56 + 300, "{w}");
    assert!(h > 4 * 56 && h < 4 * 56 + 200, "{h}");
    assert!(colours(&rgb) > 8, "{} colours", colours(&rgb));
    let _ = std::fs::remove_dir_all(&out);
}

/// `max_points_per_model` samples the same positions of every task vector (seeded): the
/// diagonal stays 1 and the values move a little from the full ones; `plot_heatmap: false`
/// writes no PNG.
#[test]
fn cos_similarity_sampled_and_without_heatmap() {
    let out = temp_dir("cos-sampled");
    let full = read_csv(&dir().join("expected/task_vector_cos_similarity.csv")).1;
    let algo = build(
        "task_vector_cos_similarity",
        json!({"plot_heatmap": false, "max_points_per_model": 3000,
               "output_path": out.to_str().unwrap()}),
    )
    .unwrap();
    algo.run(&pool(&ALL), &cpu_ctx()).unwrap();
    let rows = read_csv(&out.join("task_vector_cos_similarity.csv")).1;
    assert!(!out.join("task_vector_cos_similarity.png").exists());
    let mut moved = 0f64;
    for (i, ((_, got), (_, want))) in rows.iter().zip(&full).enumerate() {
        assert!((got[i] - 1.0).abs() < 1e-12);
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 0.1, "{g} vs {w}");
            moved = moved.max((g - w).abs());
        }
    }
    assert!(moved > 1e-6, "a sample of 3000 of the values");
    let _ = std::fs::remove_dir_all(&out);
}

/// Two PNGs at matplotlib's default 640×480 (or `fig_kwargs`' figsize × dpi), each a picture;
/// the method returns the pretrained model.
#[test]
fn violin_plots_are_written() {
    for (fig, size) in [
        (Value::Null, (640, 480)),
        (json!({"figsize": [5, 3], "dpi": 80}), (400, 240)),
    ] {
        let out = temp_dir("violin");
        let algo = build(
            "task_vector_violin_plot",
            json!({"trainable_only": true, "max_points_per_model": 1000, "fig_kwargs": fig,
                   "output_path": null}),
        )
        .unwrap();
        let returned = algo
            .run(&pool(&ALL), &cpu_ctx().with_log_dir(&out))
            .unwrap();
        let base = model(&dir().join("models/_pretrained_.safetensors"));
        assert_eq!(max_rel_error(&returned, &base), 0.0);
        for file in ["task_vector_violin.png", "task_vector_violin_abs.png"] {
            let (w, h, rgb) = decode_png(&out.join(file));
            assert_eq!((w, h), size, "{file}");
            // four violins in four colours, text, grid
            assert!(colours(&rgb) >= 6, "{file}: {} colours", colours(&rgb));
        }
        let _ = std::fs::remove_dir_all(&out);
    }
}

fn error(target: &str, config: Value, models: &[&str]) -> String {
    let run = || -> fusion_plugin_api::Result<()> {
        build(target, config)?.run_models(
            &pool(models),
            &cpu_ctx().with_log_dir(&std::env::temp_dir()),
        )?;
        Ok(())
    };
    let err = run().expect_err("refused");
    assert_eq!(err.kind, fusion_plugin_api::ErrorKind::Config, "{err}");
    err.to_string()
}

/// Too few models, no `_pretrained_`, missing and unknown parameters (nested ones too): each a
/// config error naming the culprit.
#[test]
fn bad_input_is_named() {
    let msg = error(
        "tall_mask",
        json!({"tall_mask_lambda": 0.6}),
        &["_pretrained_"],
    );
    assert!(msg.contains("tall_mask needs at least 1 model"), "{msg}");
    let msg = error("emr_merging", json!({}), &["task_a", "task_b"]);
    assert!(
        msg.contains("emr_merging needs a `_pretrained_` model"),
        "{msg}"
    );
    let msg = error(
        "task_vector_cos_similarity",
        json!({"plot_heatmap": true}),
        &["_pretrained_", "task_a"],
    );
    assert!(
        msg.contains("task_vector_cos_similarity needs at least 2 model(s)"),
        "{msg}"
    );
    let msg = error("tall_mask", json!({}), &ALL);
    assert!(
        msg.contains("required parameter `tall_mask_lambda`"),
        "{msg}"
    );
    let msg = error(
        "tall_mask",
        json!({"tall_mask_lambda": 0.6, "tall_mask_lamda": 1}),
        &ALL,
    );
    assert!(
        msg.contains("`tall_mask_lamda` (did you mean `tall_mask_lambda`?)"),
        "{msg}"
    );
    let msg = error(
        "task_vector_violin_plot",
        json!({"trainable_only": true, "fig_kwargs": {"figsize": [4, 3], "facecolour": "w"}}),
        &ALL,
    );
    assert!(
        msg.contains("unknown parameter `fig_kwargs.facecolour`"),
        "{msg}"
    );
    let msg = error(
        "task_vector_violin_plot",
        json!({"trainable_only": true, "fig_kwargs": {"figsize": [4]}}),
        &ALL,
    );
    assert!(
        msg.contains("`fig_kwargs.figsize` must be [width, height]"),
        "{msg}"
    );
    let msg = error("task_vector_violin_plot", json!({}), &ALL);
    assert!(msg.contains("required parameter `trainable_only`"), "{msg}");
    // a method of several models cannot serve as one model
    let err = build("emr_merging", json!({}))
        .unwrap()
        .run(&pool(&ALL), &cpu_ctx())
        .unwrap_err()
        .to_string();
    assert!(err.contains("returns one model per task"), "{err}");
}

/// Without `output_path` and without a log folder from the host the analysis cannot write.
#[test]
fn analysis_without_a_folder_is_named() {
    let err = build("task_vector_cos_similarity", json!({"plot_heatmap": true}))
        .unwrap()
        .run(&pool(&ALL), &cpu_ctx())
        .unwrap_err()
        .to_string();
    assert!(err.contains("`output_path` is null"), "{err}");
}

/// EMR's rescaler of a model that equals `_pretrained_` is 0/0 (FusionBench's would be NaN): an
/// error naming the model.
#[test]
fn emr_names_a_model_without_a_task_vector() {
    let base = model(&dir().join("models/_pretrained_.safetensors"));
    let other = model(&dir().join("models/task_b.safetensors"));
    let pool = Pool(vec![
        ("_pretrained_".to_string(), base.clone()),
        ("same".to_string(), base),
        ("task_b".to_string(), other),
    ]);
    let err = build("emr_merging", json!({}))
        .unwrap()
        .run_models(&pool, &cpu_ctx())
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("model `same` agrees with the elected signs nowhere"),
        "{err}"
    );
}
