//! Every case of the golden fixtures (`tests/data/mergekit-tiny`, mergekit-yaml's own output)
//! merged here and compared tensor by tensor, plus the config checks.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::*;
use fusion_plugin_api::{bytes_to_f32, f32_to_bytes};

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../tests/data/mergekit-tiny")
}

/// A golden config with its relative model paths made absolute (the tests do not change the
/// working directory, which the other tests share).
fn config_text(case: &str) -> String {
    let text = std::fs::read_to_string(data().join(format!("configs/{case}.yaml"))).unwrap();
    text.replace("models/", &format!("{}/models/", data().display()))
}

fn read_safetensors(path: &std::path::Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let dtype = match view.dtype() {
                safetensors::Dtype::F32 => DType::F32,
                safetensors::Dtype::BF16 => DType::BF16,
                other => panic!("{name}: {other:?}"),
            };
            let values = bytes_to_f32(view.data(), dtype).unwrap();
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

/// Merge `case` and return the largest absolute difference from mergekit's tensors (after
/// checking that the names, shapes and `config.json` agree).
fn max_diff(case: &str) -> f32 {
    let merge = Merge::from_yaml(&config_text(case), &Options::default()).unwrap();
    let model = merge.model();
    let expected = read_safetensors(&data().join(format!("expected/{case}/model.safetensors")));
    let mut names = model.names().unwrap();
    names.sort();
    assert_eq!(
        names,
        expected.keys().cloned().collect::<Vec<_>>(),
        "{case}: tensor names"
    );
    let mut worst = (0f32, String::new());
    for (name, (shape, want)) in &expected {
        let info = model.info(name).unwrap();
        assert_eq!(&info.shape, shape, "{case}: {name}");
        let got = bytes_to_f32(&model.data(name).unwrap(), info.dtype).unwrap();
        for (g, w) in got.iter().zip(want) {
            let d = (g - w).abs();
            assert!(d.is_finite(), "{case}: {name} has {g}, expected {w}");
            if d > worst.0 {
                worst = (d, name.clone());
            }
        }
    }
    // config.json: every key mergekit wrote, with its value (the layer count included).
    let ours: Value = serde_json::from_slice(&model.file("config.json").unwrap()).unwrap();
    let theirs: Value = serde_json::from_slice(
        &std::fs::read(data().join(format!("expected/{case}/config.json"))).unwrap(),
    )
    .unwrap();
    // (`transformers_version` is the version of whoever wrote the file)
    for (k, v) in theirs.as_object().unwrap() {
        if k != "transformers_version" {
            assert_eq!(ours.get(k), Some(v), "{case}: config.json `{k}`");
        }
    }
    let ran = model.file("mergekit_config.yml").unwrap();
    assert_eq!(ran, config_text(case).into_bytes());
    eprintln!("{case}: max abs diff {:.3e} (at {})", worst.0, worst.1);
    worst.0
}

macro_rules! golden {
    ($($case:ident: $tol:expr;)*) => {$(
        #[test]
        fn $case() {
            let d = max_diff(stringify!($case));
            assert!(d <= $tol, "{}: max abs diff {d:e} > {:e}", stringify!($case), $tol);
        }
    )*};
}

// float32 throughout: the differences are the order of float sums (1 ulp of values up to ~1).
golden! {
    linear: 1e-6;
    linear_gradient: 1e-6;
    slices_linear: 1e-6;
    passthrough_frankenmerge: 0.0;
    task_arithmetic: 1e-6;
    ties: 1e-6;
    breadcrumbs_ties: 1e-6;
    slerp: 1e-6;
    nuslerp: 1e-6;
    multislerp: 1e-6;
    karcher: 1e-6;
    model_stock: 1e-6;
    nearswap: 1e-6;
    sce: 1e-6;
    ram: 1e-6;
    ramplus_tl: 1e-6;
}

// More cases (`make_mergekit_extra.py`, mergekit 0.1.5): parameter variants, and bfloat16.
golden! {
    extra_breadcrumbs: 1e-6;
    extra_dare_ties_full_density: 1e-6;
    extra_ties_unnormalized: 1e-6;
    extra_nuslerp_row_wise: 1e-6;
    extra_nuslerp_rows_with_base: 1e-6;
    extra_model_stock_filter_wise: 1e-6;
    extra_multislerp_no_base: 1e-6;
    extra_task_arithmetic_filters: 1e-6;
    extra_task_arithmetic_slices: 1e-6;
    extra_passthrough_scaled_repeat: 0.0;
    extra_karcher_defaults: 1e-6;
}

// `dtype: bfloat16`: mergekit 0.1.5 reads the inputs as bfloat16; linear computes in float32
// (a fused multiply-add per input, as here) and rounds once, so it matches exactly.
golden! {
    extra_linear_bf16: 0.0;
}

/// TIES with `dtype: bfloat16`: mergekit computes every step in bfloat16, as fusion-host's
/// task-arithmetic family does (each step rounded), and picks the top-k magnitudes with torch's
/// unstable sort among the many equal bfloat16 magnitudes, where fusion-host breaks ties by
/// position. So the entries match exactly except where the top-k cut falls inside a run of
/// equal magnitudes (measured: 36 of 43 296).
#[test]
fn extra_ties_bf16() {
    let case = "extra_ties_bf16";
    let model = Merge::from_yaml(&config_text(case), &Options::default())
        .unwrap()
        .model();
    let expected = read_safetensors(&data().join(format!("expected/{case}/model.safetensors")));
    let (mut total, mut close, mut exact) = (0usize, 0usize, 0usize);
    for (name, (_, want)) in &expected {
        let info = model.info(name).unwrap();
        assert_eq!(info.dtype, DType::BF16);
        let got = bytes_to_f32(&model.data(name).unwrap(), info.dtype).unwrap();
        for (g, w) in got.iter().zip(want) {
            total += 1;
            exact += (g == w) as usize;
            close += ((g - w).abs() <= w.abs() * 2f32.powi(-7)) as usize;
        }
    }
    eprintln!("{case}: {exact} of {total} exact, {close} within one bf16 ulp");
    assert!(exact as f64 >= 0.995 * total as f64, "{exact} of {total}");
}

/// arcee_fusion keeps a change where its importance reaches a threshold; importance is |δ|
/// times a KL divergence of about 1e-4 that float32 softmaxes get right to about 1e-3
/// relative, so an entry within that of the threshold may fall either side here and in torch
/// (measured: a few of the 43 296 entries). Every other entry must match exactly, and a differing
/// entry must be one of the two candidates (the base's value, or it plus the change).
#[test]
fn arcee_fusion() {
    let case = "arcee_fusion";
    let model = Merge::from_yaml(&config_text(case), &Options::default())
        .unwrap()
        .model();
    let expected = read_safetensors(&data().join(format!("expected/{case}/model.safetensors")));
    let base = read_safetensors(&data().join("models/math/model.safetensors"));
    let other = read_safetensors(&data().join("models/code/model.safetensors"));
    let (mut total, mut flips) = (0usize, 0usize);
    for (name, (_, want)) in &expected {
        let got = bytes_to_f32(&model.data(name).unwrap(), DType::F32).unwrap();
        for (j, (g, w)) in got.iter().zip(want).enumerate() {
            total += 1;
            if g != w {
                flips += 1;
                let b = base[name].1[j];
                let o = b + (other[name].1[j] - b);
                assert!(
                    (*g == b && *w == o) || (*g == o && *w == b),
                    "{name}[{j}]: {g} vs {w}"
                );
            }
        }
    }
    eprintln!("{case}: {flips} of {total} entries on the other side of the threshold");
    assert!(flips * 2000 <= total, "{flips} of {total} entries differ");
}

fn error_of(yaml: &str) -> String {
    match Merge::from_yaml(
        &yaml.replace("models/", &format!("{}/models/", data().display())),
        &Options::default(),
    ) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_configs_are_refused_with_the_culprit_named() {
    let e = error_of(
        "merge_method: lineer\nmodels:\n- model: models/math\n  parameters: {weight: 1}\n",
    );
    assert!(
        e.contains("unknown merge_method `lineer`") && e.contains("linear"),
        "{e}"
    );
    let e = error_of(
        "merge_method: linear\nmodels:\n- model: models/math\n  parameters: {wieght: 1}\n",
    );
    assert!(
        e.contains("models[0].parameters.wieght") && e.contains("unknown parameter"),
        "{e}"
    );
    let e =
        error_of("merge_method: ties\nmodels:\n- model: models/math\n  parameters: {weight: 1}\n");
    assert!(e.contains("needs a `base_model`"), "{e}");
    let e = error_of(
        "merge_method: passthrough\nslices:\n- sources:\n  - model: models/math\n    layer_range: [2, 6]\n",
    );
    assert!(
        e.contains("layer_range [2, 6]") && e.contains("past its 4 layers"),
        "{e}"
    );
    let e = error_of("merge_method: linear\nchat_template: chatmel\nmodels:\n- model: models/math\n  parameters: {weight: 1}\n");
    assert!(e.contains("chatmel") && e.contains("chatml, exaone"), "{e}");
    let e = error_of(
        "merge_method: linear\nmodules: {}\nmodels:\n- model: models/math\n  parameters: {weight: 1}\n",
    );
    assert!(
        e.contains("exactly one of `models`, `slices` and `modules`"),
        "{e}"
    );
    let e = error_of(
        "merge_method: linear\nmodules:\n  vision_tower:\n    models:\n    - model: models/math\n      parameters: {weight: 1}\n",
    );
    assert!(
        e.contains("modules.vision_tower") && e.contains("`default`"),
        "{e}"
    );
    let e = error_of(
        "merge_method: linear\nmodules:\n  default:\n    models:\n    - model: models/math\n      parameters: {wait: 1}\n",
    );
    assert!(
        e.contains("modules.default.models[0].parameters.wait"),
        "{e}"
    );
    let e = error_of("merge_method: linear\ntokenizer: {source: union, tokens: {x: {source: {kind: one}}}}\nmodels:\n- model: models/math\n  parameters: {weight: 1}\n");
    assert!(e.contains("tokenizer.tokens.x.source.kind: one"), "{e}");
    let e = error_of("merge_method: linear\nmodel:\n- model: models/math\n");
    assert!(e.contains("unknown key `model`"), "{e}");
    let e = error_of("merge_method: linear\nmodels:\n- model: models/math\n");
    assert!(
        e.contains("needs parameter `weight`") && e.contains("models/math"),
        "{e}"
    );
    let e = error_of("merge_method: slerp\nbase_model: models/math\nmodels:\n- model: models/math\n- model: models/code\n");
    assert!(e.contains("needs parameter `t`"), "{e}");
    let e = error_of("merge_method: linear\ntokenizer_source: union\nmodels:\n- model: models/math\n  parameters: {weight: 1}\n");
    assert!(
        e.contains("models/math") && e.contains("no tokenizer files"),
        "{e}"
    );
    let e = error_of(
        "merge_method: linear\nmodels:\n- model: models/nothing_here\n  parameters: {weight: 1}\n",
    );
    assert!(e.contains("models/nothing_here"), "{e}");
    let e = error_of("merge_method: ties\nbase_model: models/base\nmodels:\n- model: models/math\n  parameters: {weight: 1, lambda: 2}\n");
    assert!(e.contains("global parameter"), "{e}");
}

/// The random sparsifiers: a fixed seed gives the same merge; DARE keeps about `density` of
/// the entries and rescales the kept ones by Σ|δ|/Σ|kept|.
#[test]
fn dare_keeps_its_density_and_is_reproducible_per_seed() {
    let yaml = "merge_method: dare_linear\nbase_model: models/base\nmodels:\n- model: models/math\n  parameters: {weight: 1.0, density: 0.3}\ndtype: float32\n";
    let text = yaml.replace("models/", &format!("{}/models/", data().display()));
    let run = |seed| {
        let m = Merge::from_yaml(
            &text,
            &Options {
                random_seed: seed,
                ..Default::default()
            },
        )
        .unwrap()
        .model();
        bytes_to_f32(
            &m.data("model.layers.1.mlp.up_proj.weight").unwrap(),
            DType::F32,
        )
        .unwrap()
    };
    let (a, b, c) = (run(1), run(1), run(2));
    assert_eq!(a, b);
    assert_ne!(a, c);
    let models = read_safetensors(&data().join("models/math/model.safetensors"));
    let base = read_safetensors(&data().join("models/base/model.safetensors"));
    let x = &models["model.layers.1.mlp.up_proj.weight"].1;
    let x0 = &base["model.layers.1.mlp.up_proj.weight"].1;
    let delta: Vec<f32> = x.iter().zip(x0).map(|(a, b)| a - b).collect();
    let kept: Vec<f32> = a.iter().zip(x0).map(|(a, b)| a - b).collect();
    let nonzero = delta.iter().filter(|v| **v != 0.0).count();
    let survived = kept.iter().filter(|v| v.abs() > 0.0).count();
    let frac = survived as f64 / nonzero as f64;
    assert!(
        (frac - 0.3).abs() < 0.05,
        "kept {frac} of the changed entries"
    );
    let l1 = |v: &[f32]| v.iter().map(|x| x.abs() as f64).sum::<f64>();
    assert!((l1(&kept) / l1(&delta) - 1.0).abs() < 1e-4, "L1 rescale");
    // Every kept entry is the original change times one common factor.
    let scale = l1(&delta)
        / (delta
            .iter()
            .zip(&kept)
            .filter(|(_, k)| **k != 0.0)
            .map(|(d, _)| d.abs() as f64)
            .sum::<f64>());
    for (d, k) in delta.iter().zip(&kept).filter(|(_, k)| **k != 0.0) {
        assert!(((*k as f64) - (*d as f64) * scale).abs() < 1e-6);
    }
}

/// DELLA keeps larger magnitudes more often (probability density ± epsilon by rank in the row).
#[test]
fn della_favours_large_changes() {
    let yaml = "merge_method: della_linear\nbase_model: models/base\nparameters: {rescale: false}\nmodels:\n- model: models/math\n  parameters: {weight: 1.0, density: 0.5, epsilon: 0.4}\n";
    let text = yaml.replace("models/", &format!("{}/models/", data().display()));
    let m = Merge::from_yaml(&text, &Options::default())
        .unwrap()
        .model();
    let name = "model.embed_tokens.weight";
    let got = bytes_to_f32(&m.data(name).unwrap(), DType::F32).unwrap();
    let x = &read_safetensors(&data().join("models/math/model.safetensors"))[name].1;
    let x0 = &read_safetensors(&data().join("models/base/model.safetensors"))[name].1;
    let mut changes: Vec<(f32, bool)> = x
        .iter()
        .zip(x0)
        .zip(&got)
        .filter(|((a, b), _)| a != b)
        .map(|((a, b), g)| ((a - b).abs(), g != b))
        .collect();
    changes.sort_by(|a, b| a.0.total_cmp(&b.0));
    let half = changes.len() / 2;
    let kept = |s: &[(f32, bool)]| s.iter().filter(|c| c.1).count() as f64 / s.len() as f64;
    let (low, high) = (kept(&changes[..half]), kept(&changes[half..]));
    assert!(
        high > low + 0.2,
        "kept {low} of the small changes and {high} of the large"
    );
}

/// A copy of the tiny models in a temp folder, with `edit` applied to each model's config.json
/// and tensors (name → (shape, values)).
fn edited_models(
    edit: impl Fn(
        &str,
        &mut serde_json::Map<String, Value>,
        &mut BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    ),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for m in ["base", "math", "code", "chat"] {
        let src = data().join("models").join(m);
        let dst = dir.path().join("models").join(m);
        std::fs::create_dir_all(&dst).unwrap();
        let mut config: serde_json::Map<String, Value> =
            serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
        let mut tensors = read_safetensors(&src.join("model.safetensors"));
        edit(m, &mut config, &mut tensors);
        std::fs::write(
            dst.join("config.json"),
            serde_json::to_vec(&config).unwrap(),
        )
        .unwrap();
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .into_iter()
            .map(|(n, (s, v))| (n, s, f32_to_bytes(&v, DType::F32).unwrap()))
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
            .iter()
            .map(|(n, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                        .unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dst.join("model.safetensors")).unwrap();
    }
    dir
}

fn merge_in(dir: &std::path::Path, yaml: &str) -> Result<Merge> {
    Merge::from_yaml(
        &yaml.replace("models/", &format!("{}/models/", dir.display())),
        &Options::default(),
    )
}

const HALF: &str = "merge_method: linear\nmodels:\n- model: models/math\n  parameters: {weight: 0.5}\n- model: models/code\n  parameters: {weight: 0.5}\n";

#[test]
fn architectures_must_be_known_and_agree() {
    let dir = edited_models(|m, config, _| {
        if m == "code" {
            config.insert(
                "architectures".into(),
                serde_json::json!(["MistralForCausalLM"]),
            );
        }
        if m == "chat" {
            config.insert("architectures".into(), serde_json::json!(["BertModel"]));
        }
    });
    let e = merge_in(dir.path(), HALF).err().unwrap().to_string();
    assert!(
        e.contains("different architectures") && e.contains("MistralForCausalLM"),
        "{e}"
    );
    let ok = Merge::from_yaml(
        &HALF.replace("models/", &format!("{}/models/", dir.path().display())),
        &Options {
            allow_crimes: true,
            ..Default::default()
        },
    );
    assert!(ok.is_ok());
    let e = merge_in(dir.path(), &HALF.replace("models/code", "models/chat"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("`BertModel`"), "{e}");
    let shallow = edited_models(|m, config, _| {
        if m == "code" {
            config.insert("num_hidden_layers".into(), serde_json::json!(3));
        }
    });
    let e = merge_in(shallow.path(), HALF).err().unwrap().to_string();
    assert!(
        e.contains("different depths") && e.contains("models/code"),
        "{e}"
    );
}

/// A model with tied embeddings (no `lm_head.weight`) gives its `embed_tokens` to the merged
/// head; embeddings of different vocabulary sizes merge over their common rows.
#[test]
fn tied_heads_and_vocabulary_sizes_follow_mergekit() {
    let dir = edited_models(|m, config, tensors| {
        if m == "math" {
            tensors.remove(HEAD);
            config.insert("tie_word_embeddings".into(), Value::Bool(true));
        }
        if m == "code" {
            for name in [EMBED, HEAD] {
                let (shape, values) = tensors.get_mut(name).unwrap();
                shape[0] = 90;
                values.truncate(90 * shape[1]);
            }
        }
    });
    let model = merge_in(dir.path(), HALF).unwrap().model();
    let math = read_safetensors(&dir.path().join("models/math/model.safetensors"));
    let code = read_safetensors(&dir.path().join("models/code/model.safetensors"));
    for (name, from_math) in [(EMBED, EMBED), (HEAD, EMBED)] {
        let info = model.info(name).unwrap();
        assert_eq!(info.shape, vec![90, 32], "{name}");
        let got = bytes_to_f32(&model.data(name).unwrap(), DType::F32).unwrap();
        for (j, g) in got.iter().enumerate() {
            let want = (0.5 * math[from_math].1[j] + 0.5 * code[name].1[j]) / 1.0;
            assert!((g - want).abs() <= 1e-7, "{name}[{j}]: {g} vs {want}");
        }
    }
}

/// `tokenizer_source` copies that model's tokenizer files; a source without them is an error.
#[test]
fn tokenizer_files_come_from_the_tokenizer_source() {
    let dir = edited_models(|_, _, _| {});
    let code = dir.path().join("models/code");
    std::fs::write(code.join("tokenizer_config.json"), b"{\"from\": \"code\"}").unwrap();
    std::fs::write(code.join("tokenizer.json"), b"{}").unwrap();
    let yaml = format!("{HALF}tokenizer_source: models/code\n");
    let model = merge_in(dir.path(), &yaml).unwrap().model();
    assert_eq!(
        model.file("tokenizer_config.json").unwrap(),
        b"{\"from\": \"code\"}"
    );
    assert!(model
        .file_names()
        .unwrap()
        .contains(&"tokenizer.json".to_string()));
    let yaml = format!("{HALF}tokenizer_source: models/math\n");
    let e = merge_in(dir.path(), &yaml).err().unwrap().to_string();
    assert!(
        e.contains("models/math") && e.contains("no tokenizer files"),
        "{e}"
    );
    let yaml = format!("{HALF}tokenizer_source: base\n");
    let e = merge_in(dir.path(), &yaml).err().unwrap().to_string();
    assert!(e.contains("base_model"), "{e}");
}

/// Every random method gives the same merge for the same seed and another for another seed,
/// through the whole model.
#[test]
fn random_methods_are_reproducible_per_seed() {
    for method in ["dare_ties", "dare_linear", "della", "della_linear"] {
        let yaml = format!(
            "merge_method: {method}\nbase_model: models/base\nmodels:\n\
             - model: models/math\n  parameters: {{weight: 0.6, density: 0.5}}\n\
             - model: models/code\n  parameters: {{weight: 0.4, density: 0.5}}\n"
        );
        let text = yaml.replace("models/", &format!("{}/models/", data().display()));
        let run = |seed| -> Vec<Vec<u8>> {
            let m = Merge::from_yaml(
                &text,
                &Options {
                    random_seed: seed,
                    ..Default::default()
                },
            )
            .unwrap()
            .model();
            m.names()
                .unwrap()
                .iter()
                .map(|n| m.data(n).unwrap().into_owned())
                .collect()
        };
        let (a, b, c) = (run(7), run(7), run(8));
        assert_eq!(a, b, "{method}");
        assert_ne!(a, c, "{method}");
    }
}

/// `chat_template`: inline text, or `auto` (the template most models have), written into the
/// output's tokenizer_config.json.
#[test]
fn chat_templates_are_set_in_the_tokenizer_config() {
    let dir = edited_models(|_, _, _| {});
    let tpl = |m: &str, t: &str| {
        let d = dir.path().join("models").join(m);
        let c = serde_json::json!({"model_max_length": 64, "chat_template": t});
        std::fs::write(
            d.join("tokenizer_config.json"),
            serde_json::to_vec(&c).unwrap(),
        )
        .unwrap();
        std::fs::write(d.join("tokenizer.json"), b"{}").unwrap();
    };
    tpl("math", "{{ messages[0]['content'] }} from math");
    tpl("code", "{{ messages[0]['content'] }} from code");
    tpl("chat", "{{ messages[0]['content'] }} from code");
    let three = "merge_method: linear\nmodels:\n- model: models/math\n  parameters: {weight: 1}\n- model: models/code\n  parameters: {weight: 1}\n- model: models/chat\n  parameters: {weight: 1}\n";
    // (the tokenizer_config.json left, the chat_template.jinja written)
    let read = |yaml: &str| -> (Value, Option<String>) {
        let m = merge_in(dir.path(), yaml).unwrap().model();
        let config = serde_json::from_slice(&m.file("tokenizer_config.json").unwrap()).unwrap();
        let jinja = m
            .file("chat_template.jinja")
            .ok()
            .map(|b| String::from_utf8(b).unwrap());
        (config, jinja)
    };
    let (config, auto) = read(&format!("{three}chat_template: auto\n"));
    assert_eq!(
        auto.as_deref(),
        Some("{{ messages[0]['content'] }} from code")
    );
    assert_eq!(config["model_max_length"], 64);
    assert!(config.get("chat_template").is_none(), "{config}");
    let (_, inline) = read(&format!(
        "{three}chat_template: \"{{{{ bos_token }}}}{{{{ messages }}}} inline\"\n"
    ));
    assert_eq!(
        inline.as_deref(),
        Some("{{ bos_token }}{{ messages }} inline")
    );
    let (_, named) = read(&format!("{three}chat_template: chatml\n"));
    assert!(named
        .unwrap()
        .starts_with("{% for message in messages %}{{'<|im_start|>'"));
    let (plain, none) = read(three);
    assert_eq!(
        plain["chat_template"],
        "{{ messages[0]['content'] }} from math"
    );
    assert_eq!(none, None);
}

// `modules:` configs (`make_mergekit_tokenizer.py`): the decoders' one module, `default`, with
// module-level parameters between the slices' and the top level's.
golden! {
    tok_modules_task_arithmetic: 1e-6;
    tok_modules_slices: 1e-6;
}

/// A tokenizer's vocabulary, token -> id, from its tokenizer.json.
fn vocab_of(bytes: &[u8]) -> std::collections::HashMap<String, usize> {
    vocab::Vocab::parse(bytes, "test").unwrap().ids
}

/// A tokenizer case (`make_mergekit_tokenizer.py`): the output vocabulary is mergekit's (the
/// same tokens; mergekit numbers the tokens a union adds in hash-map order, so rows are
/// compared token by token), every other tensor and `config.json` (with `vocab_size`) match,
/// and so does the chat template written.
fn tokenizer_case(case: &str) {
    let merge = Merge::from_yaml(&config_text(case), &Options::default()).unwrap();
    let model = merge.model();
    let dir = data().join(format!("expected/{case}"));
    let expected = read_safetensors(&dir.join("model.safetensors"));
    let ours_vocab = vocab_of(&model.file("tokenizer.json").unwrap());
    let theirs_vocab = vocab_of(&std::fs::read(dir.join("tokenizer.json")).unwrap());
    let mut a: Vec<&String> = ours_vocab.keys().collect();
    let mut b: Vec<&String> = theirs_vocab.keys().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "{case}: vocabulary");
    let n = theirs_vocab.len();
    let mut worst = 0f32;
    for (name, (shape, want)) in &expected {
        let info = model.info(name).unwrap();
        assert_eq!(&info.shape, shape, "{case}: {name}");
        let got = bytes_to_f32(&model.data(name).unwrap(), info.dtype).unwrap();
        let cols = *shape.last().unwrap();
        let row_pairs: Vec<(usize, usize)> = if name == EMBED || name == HEAD {
            let mut p: Vec<(usize, usize)> = theirs_vocab
                .iter()
                .map(|(t, &j)| (ours_vocab[t], j))
                .collect();
            p.extend((n..shape[0]).map(|r| (r, r))); // padding rows
            p
        } else {
            (0..shape[0]).map(|r| (r, r)).collect()
        };
        let cols = if shape.len() == 1 { 1 } else { cols };
        for (ro, rt) in row_pairs {
            for c in 0..cols {
                let (g, w) = (got[ro * cols + c], want[rt * cols + c]);
                assert!(g.is_finite(), "{case}: {name}");
                worst = worst.max((g - w).abs());
            }
        }
    }
    assert!(worst <= 1e-6, "{case}: max abs diff {worst:e}");
    let ours: Value = serde_json::from_slice(&model.file("config.json").unwrap()).unwrap();
    let theirs: Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    // (`transformers_version` is the version of whoever wrote the file)
    for (k, v) in theirs.as_object().unwrap() {
        if k != "transformers_version" {
            assert_eq!(ours.get(k), Some(v), "{case}: config.json `{k}`");
        }
    }
    let jinja = std::fs::read(dir.join("chat_template.jinja")).ok();
    assert_eq!(
        model.file("chat_template.jinja").ok(),
        jinja,
        "{case}: chat template"
    );
    // The special tokens keep their flag.
    let added: Value = serde_json::from_slice(&model.file("tokenizer.json").unwrap()).unwrap();
    for e in added["added_tokens"].as_array().unwrap() {
        if e["content"].as_str().unwrap().starts_with("<|") {
            assert_eq!(e["special"], true, "{case}: {e}");
        }
    }
    eprintln!(
        "{case}: {} tokens, max abs diff {worst:e}",
        ours_vocab.len()
    );
}

#[test]
fn tok_union_linear() {
    tokenizer_case("tok_union_linear");
}

#[test]
fn tok_union_ties_chatml() {
    tokenizer_case("tok_union_ties_chatml");
}

#[test]
fn tok_source_model() {
    tokenizer_case("tok_source_model");
}

#[test]
fn tok_union_tokens_pad() {
    tokenizer_case("tok_union_tokens_pad");
}

#[test]
fn tok_chat_template_llama3() {
    tokenizer_case("tok_chat_template_llama3");
}
