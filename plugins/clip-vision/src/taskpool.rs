//! `fusion_bench.taskpool.CLIPVisionModelTaskPool`: zero-shot image classification with CLIP.
//!
//! Per task: a test set, class names and prompt templates. The zero-shot head of a task is built
//! from the base model's text tower, as FusionBench's `CLIPClassificationMixin` does: for each
//! class, the L2-normalized text embeddings of every template filled with the class name are
//! averaged and normalized again. The merged vision tower encodes each image, the base model's
//! `visual_projection` projects it, and logits are `exp(logit_scale) · cos(image, class)`.
//! The report has `accuracy` and mean cross-entropy `loss` per task, their `average`, and
//! `model_info`, in FusionBench's shape.

use std::path::PathBuf;

use fusion_clip::gpu::{GpuClipModel, GpuClipVision};
use fusion_clip::{CheckpointConfig, ClipTokenizer, ImageProcessor, Padding, Tensor, WeightStore};
use fusion_datasets::DatasetSpec;
use fusion_plugin_api::prelude::*;
use serde_json::{json, Map, Value};

/// One classification task.
#[derive(Debug, Clone)]
struct Task {
    name: String,
    dataset: DatasetSpec,
    classnames: Vec<String>,
    templates: Vec<String>,
}

/// The task pool.
pub struct ClipVisionModelTaskPool {
    tasks: Vec<Task>,
    base_model: String,
    processor: String,
    batch_size: usize,
}

/// A path or hub id given as a string or as `{pretrained_model_name_or_path: ...}`.
fn model_ref(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(m) => m
            .get("pretrained_model_name_or_path")
            .or_else(|| m.get("path"))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}

fn string_list(v: &Value, what: &str, task: &str) -> Result<Vec<String>> {
    let list: Vec<String> = serde_json::from_value(v.clone()).map_err(|e| {
        Error::config(format!(
            "taskpool: `{what}` of task `{task}` must be a list of strings: {e}"
        ))
    })?;
    if list.is_empty() {
        return Err(Error::config(format!(
            "taskpool: `{what}` of task `{task}` is empty"
        )));
    }
    Ok(list)
}

impl FromConfig for ClipVisionModelTaskPool {
    fn from_config(config: &Config) -> Result<Self> {
        let cfg = config.value();
        let base_model = config
            .get::<String>("base_model")?
            .or_else(|| model_ref(cfg.get("clip_model")))
            .ok_or_else(|| Error::config("taskpool: `base_model` (or `clip_model`) is required"))?;
        let processor = model_ref(cfg.get("processor")).unwrap_or_else(|| base_model.clone());
        let batch_size = cfg
            .pointer("/dataloader_kwargs/batch_size")
            .or_else(|| cfg.get("batch_size"))
            .map(|v| {
                v.as_u64().filter(|b| *b > 0).ok_or_else(|| {
                    Error::config(format!(
                        "taskpool: batch_size must be a positive integer, got {v}"
                    ))
                })
            })
            .transpose()?
            .unwrap_or(128) as usize;

        let classification = cfg.get("classification").and_then(Value::as_object);
        let mut entries: Vec<(String, Value)> = Vec::new();
        match cfg.get("test_datasets") {
            Some(Value::Object(m)) => entries.extend(m.iter().map(|(k, v)| (k.clone(), v.clone()))),
            Some(Value::Null) | None => {}
            Some(other) => {
                return Err(Error::config(format!(
                    "taskpool: `test_datasets` must be a mapping, got {other}"
                )))
            }
        }
        // FusionBench v0.1: `tasks: [{name, dataset: {name, split}}]`.
        if let Some(Value::Array(list)) = cfg.get("tasks") {
            for t in list {
                let name = t.get("name").and_then(Value::as_str).ok_or_else(|| {
                    Error::config("taskpool: every entry of `tasks` needs a `name`")
                })?;
                let mut spec = t.get("dataset").cloned().unwrap_or(Value::Null);
                for key in ["classnames", "templates"] {
                    if let (Some(v), Value::Object(m)) = (t.get(key), &mut spec) {
                        m.insert(key.into(), v.clone());
                    }
                }
                entries.push((name.to_string(), spec));
            }
        }
        if entries.is_empty() {
            return Err(Error::config(
                "taskpool: no tasks (`test_datasets` is empty)",
            ));
        }

        let mut tasks = Vec::new();
        for (name, spec) in entries {
            let (source, split, image_column, label_column) = match &spec {
                Value::String(s) => (s.clone(), "test".to_string(), None, None),
                Value::Object(m) => {
                    let get = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
                    // `datasets.load_dataset(path, name, split=...)` as FusionBench writes it:
                    // `path:` (+ `name:` the dataset config), or `_args_: [path, name]`; v0.1's
                    // `dataset: {name: <repo>, split}` names the repository with `name:`.
                    let args: Vec<String> = m
                        .get("_args_")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .map(str::to_string)
                                .collect()
                        })
                        .unwrap_or_default();
                    let (source, subset) = if let Some(p) =
                        get("path").or_else(|| get("pretrained_model_name_or_path"))
                    {
                        (p, get("name"))
                    } else if let Some(p) = args.first() {
                        (p.clone(), args.get(1).cloned().or_else(|| get("name")))
                    } else if let Some(n) = get("name") {
                        (n, None)
                    } else {
                        return Err(Error::config(format!(
                            "taskpool: dataset of task `{name}` needs a `path`"
                        )));
                    };
                    let split = get("split").unwrap_or_else(|| "test".into());
                    (
                        source,
                        match subset {
                            Some(config) => format!("{config}/{split}"),
                            None => split,
                        },
                        get("image_column"),
                        get("label_column"),
                    )
                }
                other => {
                    return Err(Error::config(format!(
                    "taskpool: dataset of task `{name}` must be a path or a mapping, got {other}"
                )))
                }
            };
            // Class names and templates: the task's own entry, then `classification.<task>` of
            // this config, then the ones fusion-host ships (configs/clip_classification/).
            let meta = classification.and_then(|c| c.get(&name));
            let builtin = crate::classification::lookup(&name);
            let lookup = |key: &str| {
                spec.get(key)
                    .or_else(|| meta.and_then(|m| m.get(key)))
                    .or_else(|| builtin.and_then(|m| m.get(key)))
            };
            let classnames = lookup("classnames").ok_or_else(|| {
                Error::config(format!(
                    "taskpool: no class names for task `{name}`: it is none of the tasks fusion-host \
                     knows ({}), so give `classnames` (and `templates`) in its entry or add \
                     `classification.{name}` to the task pool config (e.g. a \
                     configs/clip_classification/{name}.yaml included with \
                     `/clip_classification@classification: [{name}]`)",
                    crate::classification::known_tasks().join(", ")
                ))
            })?;
            let classnames = string_list(classnames, "classnames", &name)?;
            let templates = match lookup("templates") {
                Some(t) => string_list(t, "templates", &name)?,
                None => vec!["a photo of a {}.".to_string()],
            };
            if let Some(bad) = templates.iter().find(|t| !t.contains("{}")) {
                return Err(Error::config(format!(
                    "taskpool: template {bad:?} of task `{name}` has no `{{}}` for the class name"
                )));
            }
            tasks.push(Task {
                name,
                dataset: DatasetSpec {
                    source,
                    split,
                    image_column,
                    label_column,
                },
                classnames,
                templates,
            });
        }
        Ok(Self {
            tasks,
            base_model,
            processor,
            batch_size,
        })
    }
}

fn clip_err(e: fusion_clip::ClipError) -> Error {
    Error::model(e)
}

/// Mean cross-entropy and number correct of `logits` (`[n, classes]`) against `labels`.
fn score(logits: &Tensor, labels: &[i64]) -> Result<(f64, usize)> {
    let classes = logits.shape()[1];
    let mut loss = 0.0f64;
    let mut correct = 0;
    for (row, &label) in logits.data().chunks_exact(classes).zip(labels) {
        let label = usize::try_from(label)
            .ok()
            .filter(|l| *l < classes)
            .ok_or_else(|| {
                Error::model(format!("label {label} is outside the {classes} classes"))
            })?;
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = max as f64
            + row
                .iter()
                .map(|v| ((v - max) as f64).exp())
                .sum::<f64>()
                .ln();
        loss += lse - row[label] as f64;
        // First maximum, as torch.argmax.
        let pred = row
            .iter()
            .enumerate()
            .fold(0, |best, (i, v)| if *v > row[best] { i } else { best });
        correct += usize::from(pred == label);
    }
    Ok((loss, correct))
}

impl TaskPool for ClipVisionModelTaskPool {
    fn evaluate(&self, model: &Model, ctx: &Context) -> Result<Value> {
        let c = ctx.compute()?;
        // Every test set first, so that a missing or empty one fails before any work.
        let datasets = self
            .tasks
            .iter()
            .map(|task| {
                let dataset = fusion_datasets::open(&task.dataset)
                    .map_err(|e| Error::io(format!("task `{}`: {e}", task.name)))?;
                if dataset.is_empty() {
                    // Scored, it would read accuracy 0 and loss 0 and pull the average down.
                    return Err(Error::config(format!(
                        "task `{}`: the test set `{}` (split `{}`) has no samples; nothing to evaluate",
                        task.name, task.dataset.source, task.dataset.split
                    )));
                }
                Ok(dataset)
            })
            .collect::<Result<Vec<_>>>()?;
        let base_dir: PathBuf = fusion_checkpoint::resolve(&self.base_model)
            .map_err(|e| e.context("taskpool: base_model"))?;
        let processor_dir: PathBuf = fusion_checkpoint::resolve(&self.processor)
            .map_err(|e| e.context("taskpool: processor"))?;
        let config = match CheckpointConfig::from_file(base_dir.join("config.json")).map_err(clip_err)? {
            CheckpointConfig::Clip(c) => c,
            CheckpointConfig::Vision(_) => {
                return Err(Error::model(format!(
                    "taskpool: base_model {} is a bare CLIPVisionModel; zero-shot heads need a full CLIPModel (text tower)",
                    base_dir.display()
                )))
            }
        };
        let store = WeightStore::open_dir(&base_dir).map_err(clip_err)?;
        let clip = GpuClipModel::load_text_only(c, &store, &config).map_err(clip_err)?;
        let tokenizer = ClipTokenizer::from_dir(&base_dir).map_err(clip_err)?;
        let processor = ImageProcessor::from_dir(&processor_dir).map_err(clip_err)?;
        let vision = GpuClipVision::from_model(c, model, &config.vision_config).map_err(|e| {
            Error::model(format!(
                "the merged model is not a CLIP vision tower matching the base model: {e}"
            ))
        })?;
        tracing::info!(device = %c.device_name(), tasks = self.tasks.len(), "evaluating");

        let mut report = Map::new();
        report.insert("model_info".into(), model_info(model)?);
        let (mut sum_acc, mut sum_loss) = (0.0, 0.0);
        for (task, dataset) in self.tasks.iter().zip(datasets) {
            // The zero-shot head: mean of normalized template embeddings per class, normalized.
            let prompts: Vec<String> = task
                .classnames
                .iter()
                .flat_map(|c| task.templates.iter().map(move |t| t.replace("{}", c)))
                .collect();
            let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
            let tokens = tokenizer
                .encode_batch(&refs, Padding::MaxLength, 77)
                .map_err(clip_err)?;
            let text = clip.encode_texts(&tokens).map_err(clip_err)?;
            let dim = text.shape()[1];
            let per = task.templates.len();
            let mut head = Vec::with_capacity(task.classnames.len() * dim);
            for class in text.data().chunks_exact(per * dim) {
                let mut mean = vec![0f32; dim];
                for row in class.chunks_exact(dim) {
                    mean.iter_mut()
                        .zip(row)
                        .for_each(|(m, r)| *m += r / per as f32);
                }
                let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                head.extend(mean.iter().map(|v| v / norm));
            }
            let head = Tensor::new(vec![task.classnames.len(), dim], head).map_err(clip_err)?;

            let n = dataset.len();
            let batches = n.div_ceil(self.batch_size);
            let batches = if ctx.fast_dev_run() {
                batches.min(1)
            } else {
                batches
            };
            let progress = ctx.progress(&task.name, batches as u64);
            let (mut loss, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
            for b in 0..batches {
                let range = b * self.batch_size..((b + 1) * self.batch_size).min(n);
                let mut pixels = Vec::new();
                let mut labels = Vec::with_capacity(range.len());
                let mut shape = Vec::new();
                for i in range.clone() {
                    let sample = dataset
                        .get(i)
                        .map_err(|e| Error::io(format!("task `{}`: {e}", task.name)))?;
                    let x = processor.preprocess_bytes(&sample.image).map_err(|e| {
                        Error::model(format!("task `{}` image {i}: {e}", task.name))
                    })?;
                    shape = x.shape().to_vec();
                    pixels.extend_from_slice(x.data());
                    labels.push(sample.label);
                }
                let mut full = vec![range.len()];
                full.extend(shape);
                let pixels = Tensor::new(full, pixels).map_err(clip_err)?;
                let image = clip
                    .encode_images_with(&vision, &pixels)
                    .map_err(clip_err)?;
                let logits = clip.logits(&image, &head).map_err(clip_err)?;
                let (l, k) = score(&logits, &labels)
                    .map_err(|e| e.context(format!("task `{}`", task.name)))?;
                loss += l;
                correct += k;
                seen += labels.len();
                progress.advance(1);
            }
            let accuracy = correct as f64 / seen.max(1) as f64;
            let mean_loss = loss / seen.max(1) as f64;
            tracing::info!(task = %task.name, accuracy, loss = mean_loss, images = seen, "task done");
            report.insert(
                task.name.clone(),
                json!({"accuracy": accuracy, "loss": mean_loss}),
            );
            sum_acc += accuracy;
            sum_loss += mean_loss;
        }
        let k = self.tasks.len() as f64;
        report.insert(
            "average".into(),
            json!({"accuracy": sum_acc / k, "loss": sum_loss / k}),
        );
        Ok(Value::Object(report))
    }
}

/// FusionBench's `model_info`: every parameter of the merged vision tower counts as trainable.
fn model_info(model: &Model) -> Result<Value> {
    let s = model.summary()?;
    Ok(json!({
        "trainable_params": s.parameters,
        "all_params": s.parameters,
        "trainable_percentage": if s.parameters > 0 { 1.0 } else { 0.0 },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(value: Value) -> Result<ClipVisionModelTaskPool> {
        ClipVisionModelTaskPool::from_config(&Config::new(
            "fusion_bench.taskpool.CLIPVisionModelTaskPool",
            value,
        )?)
    }

    /// FusionBench's own TA8 task pool config (composed): tasks by name, no class names.
    #[test]
    fn fusionbench_ta8_config_finds_the_shipped_class_names() {
        let p = pool(json!({
            "_target_": "fusion_bench.taskpool.CLIPVisionModelTaskPool",
            "base_model": "openai/clip-vit-base-patch32",
            "clip_model": {"_target_": "transformers.CLIPModel.from_pretrained",
                           "pretrained_model_name_or_path": "openai/clip-vit-base-patch32"},
            "dataloader_kwargs": {"batch_size": 64},
            "test_datasets": {
                "stanford-cars": {"_target_": "datasets.load_dataset",
                                  "path": "tanganke/stanford_cars", "split": "test"},
                "svhn": {"_target_": "datasets.load_dataset",
                         "_args_": ["svhn", "cropped_digits"], "split": "test"},
                "mnist": {"_target_": "datasets.load_dataset", "path": "mnist", "split": "test"},
            }
        }))
        .unwrap();
        assert_eq!(p.batch_size, 64);
        let cars = &p.tasks[0];
        assert_eq!(cars.classnames.len(), 196);
        assert_eq!(cars.templates.len(), 8);
        assert_eq!(cars.dataset.source, "tanganke/stanford_cars");
        // `_args_: [path, config]` becomes the `<config>/<split>` split.
        assert_eq!(p.tasks[1].dataset.source, "svhn");
        assert_eq!(p.tasks[1].dataset.split, "cropped_digits/test");
        assert_eq!(p.tasks[2].templates, ["a photo of the number: \"{}\"."]);
    }

    /// The v0.1 robustness task pool names tasks `stanford_cars` (an alias) and datasets by `name`.
    #[test]
    fn v01_tasks_find_class_names_by_alias() {
        let p = pool(json!({
            "type": "clip_vit_classification",
            "clip_model": "openai/clip-vit-base-patch32",
            "batch_size": 32,
            "tasks": [{"name": "stanford_cars",
                       "dataset": {"name": "tanganke/stanford_cars", "split": "contrast"}}]
        }))
        .unwrap();
        assert_eq!(p.tasks[0].classnames.len(), 196);
        assert_eq!(p.tasks[0].dataset.source, "tanganke/stanford_cars");
        assert_eq!(p.tasks[0].dataset.split, "contrast");
        assert_eq!(p.batch_size, 32);
    }

    /// `classification.<task>` in the config wins over the shipped table; an unknown task with
    /// neither is an error listing what exists.
    #[test]
    fn config_class_names_come_first_and_unknown_tasks_are_named() {
        let p = pool(json!({
            "base_model": "m",
            "test_datasets": {"mnist": {"path": "d"}},
            "classification": {"mnist": {"classnames": ["zero", "one"],
                                         "templates": ["{} digit"]}}
        }))
        .unwrap();
        assert_eq!(p.tasks[0].classnames, ["zero", "one"]);
        assert_eq!(p.tasks[0].templates, ["{} digit"]);
        let err = pool(json!({"base_model": "m", "test_datasets": {"imagenet": {"path": "d"}}}))
            .err()
            .expect("unknown task")
            .to_string();
        assert!(err.contains("`imagenet`"), "{err}");
        assert!(
            err.contains("sun397") && err.contains("stanford-cars"),
            "{err}"
        );
    }

    #[test]
    fn score_matches_a_hand_computation() {
        // Two samples, three classes; the second is misclassified.
        let logits = Tensor::new(vec![2, 3], vec![2.0, 1.0, 0.0, 0.0, 3.0, 1.0]).unwrap();
        let (loss, correct) = score(&logits, &[0, 2]).unwrap();
        let lse = |r: [f64; 3]| r.iter().map(|v| v.exp()).sum::<f64>().ln();
        let want = (lse([2.0, 1.0, 0.0]) - 2.0) + (lse([0.0, 3.0, 1.0]) - 1.0);
        assert!((loss - want).abs() < 1e-9, "{loss} vs {want}");
        assert_eq!(correct, 1);
        assert!(score(&logits, &[0, 3])
            .unwrap_err()
            .to_string()
            .contains("label 3"));
    }
}
