//! `fusion_bench.taskpool.CLIPVisionModelTaskPool`: zero-shot image classification with CLIP.
//!
//! Per task: a test set, class names and prompt templates. The zero-shot head of a task is built
//! from the base model's text tower, as FusionBench's `CLIPClassificationMixin` does: for each
//! class, the L2-normalized text embeddings of every template filled with the class name are
//! averaged and normalized again. The merged vision tower encodes each image, the base model's
//! `visual_projection` projects it, and logits are `exp(logit_scale) · cos(image, class)`.
//! The report has `accuracy` and mean cross-entropy `loss` per task, their `average`, and
//! `model_info`, in FusionBench's shape.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};
use std::sync::Mutex;
use std::time::Instant;

use fusion_clip::gpu::{GpuClipModel, GpuClipVision};
use fusion_clip::{CheckpointConfig, ClipTokenizer, ImageProcessor, Padding, Tensor, WeightStore};
use fusion_datasets::{DatasetSpec, ImageDataset};
use fusion_plugin_api::ensemble::Ensemble;
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
    /// `dataloader_kwargs.num_workers`: 0 decodes each batch on the evaluating thread, as
    /// PyTorch's DataLoader does; `n > 0` decodes on `n` threads of a loader that prepares the
    /// next batches while the model runs the current one.
    num_workers: usize,
    /// Zero-shot heads by task name, built once per task pool (the text tower runs once per
    /// task, however many models are evaluated).
    heads: Mutex<HashMap<String, Tensor>>,
}

/// Batches the loader may prepare ahead of the model.
const PREFETCH_BATCHES: usize = 2;

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
        let num_workers = cfg
            .pointer("/dataloader_kwargs/num_workers")
            .or_else(|| cfg.get("num_workers"))
            .filter(|v| !v.is_null())
            .map(|v| {
                v.as_u64().ok_or_else(|| {
                    Error::config(format!(
                        "taskpool: num_workers must be a non-negative integer, got {v}"
                    ))
                })
            })
            .transpose()?
            .map_or_else(
                || std::thread::available_parallelism().map_or(1, |n| n.get()),
                |n| n as usize,
            );

        // fusion-host's own key: the matrix-product kernel of the WGSL CLIP path for this run
        // (as FUSION_GEMM, which it takes precedence over); absent, null or `auto`: tuned.
        if let Some(v) = cfg.get("gemm_kernel").filter(|v| !v.is_null()) {
            let name = v.as_str().ok_or_else(|| {
                Error::config(format!(
                    "taskpool: gemm_kernel must be one of registers, tiled8, tiled16, subgroup, \
                     cooperative or auto, got {v}"
                ))
            })?;
            fusion_clip::gpu::set_gemm_kernel("taskpool.gemm_kernel", Some(name))
                .map_err(|e| Error::config(format!("taskpool: {e}")))?;
        }

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
            num_workers,
            heads: Mutex::new(HashMap::new()),
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
        // An ensemble (see `fusion_plugin_api::ensemble`) brings one tower per member; their
        // pooled outputs are combined before the base model's `visual_projection`.
        let ensemble = Ensemble::from_model(model)?;
        let towers = match &ensemble {
            None => vec![
                GpuClipVision::from_model(c, model, &config.vision_config).map_err(|e| {
                    Error::model(format!(
                        "the merged model is not a CLIP vision tower matching the base model: {e}"
                    ))
                })?,
            ],
            Some(e) => e
                .members
                .iter()
                .map(|(name, m)| {
                    GpuClipVision::from_model(c, m, &config.vision_config).map_err(|e| {
                        Error::model(format!(
                            "ensemble member `{name}` is not a CLIP vision tower matching the \
                             base model: {e}"
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        };
        let projection = match &ensemble {
            None => None,
            Some(_) => Some(
                store
                    .get(
                        "visual_projection.weight",
                        &[config.projection_dim, config.vision_config.hidden_size],
                    )
                    .map_err(clip_err)?,
            ),
        };
        let vision = &towers[0];
        tracing::info!(
            device = %c.device_name(),
            backend = vision.backend(),
            weights_on_device = vision.weights_on_device(),
            tasks = self.tasks.len(),
            batch_size = self.batch_size,
            num_workers = self.num_workers,
            "evaluating"
        );

        let mut report = Map::new();
        report.insert("model_info".into(), model_info(model)?);
        let (mut sum_acc, mut sum_loss) = (0.0, 0.0);
        for (task, dataset) in self.tasks.iter().zip(datasets) {
            let head = self.head(task, &clip, &tokenizer)?;

            let n = dataset.len();
            let batches = n.div_ceil(self.batch_size);
            let batches = if ctx.fast_dev_run() {
                batches.min(1)
            } else {
                batches
            };
            let images = n.min(batches * self.batch_size);
            let progress = ctx.progress(&task.name, images as u64);
            let (mut loss, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
            let started = Instant::now();
            let loader = Loader {
                task,
                dataset: dataset.as_ref(),
                processor: &processor,
                batch_size: self.batch_size,
                workers: self.num_workers,
            };
            let mut run_batch = |pixels: Tensor, labels: Vec<i64>| -> Result<()> {
                let image = match (&ensemble, &projection) {
                    (Some(e), Some(w)) => ensemble_image_features(e, &towers, w, &pixels)?,
                    _ => clip.encode_images_with(vision, &pixels).map_err(clip_err)?,
                };
                let logits = clip.logits(&image, &head).map_err(clip_err)?;
                let (l, k) = score(&logits, &labels)
                    .map_err(|e| e.context(format!("task `{}`", task.name)))?;
                loss += l;
                correct += k;
                seen += labels.len();
                progress.advance(labels.len() as u64);
                Ok(())
            };
            loader.run(batches, self.num_workers > 0, |pixels, labels| {
                run_batch(pixels, labels)
            })?;
            let secs = started.elapsed().as_secs_f64();
            let accuracy = correct as f64 / seen.max(1) as f64;
            let mean_loss = loss / seen.max(1) as f64;
            tracing::info!(
                task = %task.name,
                accuracy,
                loss = mean_loss,
                images = seen,
                seconds = secs,
                images_per_s = seen as f64 / secs.max(1e-9),
                "task done"
            );
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

impl ClipVisionModelTaskPool {
    /// The zero-shot head of `task`: for each class, the mean of its normalized template
    /// embeddings, normalized again. Built on first use and kept for the task pool's life.
    fn head(
        &self,
        task: &Task,
        clip: &GpuClipModel<'_>,
        tokenizer: &ClipTokenizer,
    ) -> Result<Tensor> {
        let mut heads = self.heads.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = heads.get(&task.name) {
            return Ok(h.clone());
        }
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
        heads.insert(task.name.clone(), head.clone());
        Ok(head)
    }
}

/// Decodes and preprocesses the images of one task's batches.
struct Loader<'a> {
    task: &'a Task,
    dataset: &'a dyn ImageDataset,
    processor: &'a ImageProcessor,
    batch_size: usize,
    /// Decode threads kept while the task's batches are prepared; each batch is split among
    /// them. With 0 or 1 the thread that prepares a batch decodes it.
    workers: usize,
}

/// One result of a decode thread: the images of a range of samples, in order.
type Decoded = Result<Vec<(Tensor, i64)>>;

/// A decode thread's two channels: ranges of sample indices in, their images out.
struct Lane {
    jobs: Sender<std::ops::Range<usize>>,
    done: Receiver<Decoded>,
}

/// The decode threads of one task (none when the preparing thread decodes alone). Dropping it
/// closes their job channels, and they end.
struct Decoders {
    lanes: Vec<Lane>,
}

impl Loader<'_> {
    /// Hands batches `0..batches`, in order, to `consume`. With `prefetch`, a loader thread
    /// prepares batch b + 1 (and one more) while `consume` runs batch b; a bounded queue keeps
    /// memory at a few batches. On an error either side stops: the consumer by returning
    /// (dropping the receiver), the loader by sending its error, which is returned. Without
    /// `prefetch` each batch is prepared on this thread, then consumed. Either way the
    /// `workers` decode threads are started once, for all the batches.
    fn run(
        &self,
        batches: usize,
        prefetch: bool,
        mut consume: impl FnMut(Tensor, Vec<i64>) -> Result<()>,
    ) -> Result<()> {
        self.with_decoders(|decoders| {
            if !prefetch {
                for b in 0..batches {
                    let (pixels, labels) = self.assemble(b, &decoders)?;
                    consume(pixels, labels)?;
                }
                return Ok(());
            }
            std::thread::scope(|scope| -> Result<()> {
                let (tx, rx) = sync_channel(PREFETCH_BATCHES);
                scope.spawn(move || {
                    for b in 0..batches {
                        let batch = self.assemble(b, &decoders);
                        let failed = batch.is_err();
                        if tx.send(batch).is_err() || failed {
                            break;
                        }
                    }
                    // `decoders` drops here: the decode threads end.
                });
                for _ in 0..batches {
                    let (pixels, labels) = rx.recv().map_err(|_| {
                        Error::model(format!(
                            "task `{}`: the image loader stopped",
                            self.task.name
                        ))
                    })??;
                    consume(pixels, labels)?;
                }
                Ok(())
            })
        })
    }

    /// Pixels `[n, C, H, W]` and labels of batch `b`, with decode threads started for it alone
    /// (the tests look at single batches).
    #[cfg(test)]
    fn batch(&self, b: usize) -> Result<(Tensor, Vec<i64>)> {
        self.with_decoders(|decoders| self.assemble(b, &decoders))
    }

    /// Runs `work` with this loader's decode threads (`workers` of them, at most `batch_size`,
    /// none for 0 or 1 worker), then stops them. A decode thread that panicked is an error.
    fn with_decoders<T>(&self, work: impl FnOnce(Decoders) -> Result<T>) -> Result<T> {
        let threads = self.workers.min(self.batch_size);
        if threads <= 1 {
            return work(Decoders { lanes: Vec::new() });
        }
        std::thread::scope(|scope| {
            let mut lanes = Vec::with_capacity(threads);
            let mut handles = Vec::with_capacity(threads);
            for _ in 0..threads {
                let (jobs, job_rx) = channel::<std::ops::Range<usize>>();
                let (done_tx, done) = channel();
                handles.push(scope.spawn(move || {
                    for range in job_rx {
                        if done_tx.send(self.decode(range)).is_err() {
                            break;
                        }
                    }
                }));
                lanes.push(Lane { jobs, done });
            }
            let result = work(Decoders { lanes });
            // Every job sender went with `work`'s `Decoders`: each thread ends after its last
            // job. Join them all here (a panicked one too, so that the scope does not panic).
            let panicked: Vec<bool> = handles.into_iter().map(|h| h.join().is_err()).collect();
            match result {
                Ok(_) if panicked.contains(&true) => Err(self.decoder_panicked()),
                result => result,
            }
        })
    }

    fn decoder_panicked(&self) -> Error {
        Error::model(format!(
            "task `{}`: an image decoding thread panicked",
            self.task.name
        ))
    }

    /// Pixels `[n, C, H, W]` and labels of batch `b`, its images split among `decoders`.
    fn assemble(&self, b: usize, decoders: &Decoders) -> Result<(Tensor, Vec<i64>)> {
        let n = self.dataset.len();
        let range = b * self.batch_size..((b + 1) * self.batch_size).min(n);
        let len = range.len();
        let workers = decoders.lanes.len().clamp(1, len.max(1));
        let per = len.div_ceil(workers).max(1);
        let chunks: Vec<std::ops::Range<usize>> = range
            .clone()
            .step_by(per)
            .map(|s| s..(s + per).min(range.end))
            .collect();
        let decoded: Vec<Decoded> = if chunks.len() <= 1 {
            chunks.into_iter().map(|r| self.decode(r)).collect()
        } else {
            // One chunk a lane (there are no more chunks than lanes); every job sent is
            // answered before this returns, so no result is left for the next batch.
            let sent: Vec<bool> = chunks
                .into_iter()
                .zip(&decoders.lanes)
                .map(|(r, lane)| lane.jobs.send(r).is_ok())
                .collect();
            sent.into_iter()
                .zip(&decoders.lanes)
                .map(|(sent, lane)| {
                    if sent {
                        lane.done
                            .recv()
                            .unwrap_or_else(|_| Err(self.decoder_panicked()))
                    } else {
                        Err(self.decoder_panicked())
                    }
                })
                .collect()
        };
        let mut pixels = Vec::new();
        let mut labels = Vec::with_capacity(len);
        let mut shape = Vec::new();
        for part in decoded {
            for (x, label) in part? {
                shape = x.shape().to_vec();
                pixels.extend_from_slice(x.data());
                labels.push(label);
            }
        }
        let mut full = vec![len];
        full.extend(shape);
        Ok((Tensor::new(full, pixels).map_err(clip_err)?, labels))
    }

    fn decode(&self, range: std::ops::Range<usize>) -> Result<Vec<(Tensor, i64)>> {
        range
            .map(|i| {
                let sample = self
                    .dataset
                    .get(i)
                    .map_err(|e| Error::io(format!("task `{}`: {e}", self.task.name)))?;
                let x = self
                    .processor
                    .preprocess_bytes(&sample.image)
                    .map_err(|e| {
                        Error::model(format!(
                            "task `{}`: the image of {} does not decode: {e}",
                            self.task.name,
                            self.dataset.locate(i),
                        ))
                    })?;
                Ok((x, sample.label))
            })
            .collect()
    }
}

/// The L2-normalized image features of an ensemble: the members' pooled outputs combined as
/// FusionBench's ensemble wrappers combine the towers' outputs (mean, weighted sum or
/// elementwise maximum of `pooler_output`), then projected by the base model's
/// `visual_projection` (`[projection_dim, hidden]`), as `HFCLIPClassifier` does.
fn ensemble_image_features(
    ensemble: &Ensemble,
    towers: &[GpuClipVision<'_>],
    projection: &Tensor,
    pixels: &Tensor,
) -> Result<Tensor> {
    let pooled = towers
        .iter()
        .map(|t| t.pooled(pixels).map_err(clip_err))
        .collect::<Result<Vec<_>>>()?;
    let outputs: Vec<&[f32]> = pooled.iter().map(|p| p.data()).collect();
    let combined =
        Tensor::new(pooled[0].shape().to_vec(), ensemble.combine(&outputs)?).map_err(clip_err)?;
    let projected = fusion_clip::matmul_transposed(&combined, projection, 1.0).map_err(clip_err)?;
    Ok(fusion_clip::l2_normalize_rows(&projected))
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
    use fusion_datasets::Sample;

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

    /// In-memory samples: the golden CLIP test images, labelled 0..6, then an undecodable one.
    struct Images(Vec<Sample>);

    impl ImageDataset for Images {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn get(&self, index: usize) -> std::result::Result<Sample, fusion_datasets::DatasetError> {
            self.0.get(index).cloned().ok_or_else(|| {
                fusion_datasets::DatasetError::IndexOutOfRange {
                    dataset: "test images".into(),
                    index,
                    len: self.0.len(),
                }
            })
        }
        fn describe(&self) -> String {
            "test images".into()
        }
        fn locate(&self, index: usize) -> String {
            format!("sample {index}, memory/{index}.png")
        }
    }

    /// The six golden test images (labels 0..6), then `bad` undecodable ones.
    fn images(bad: usize) -> (Images, ImageProcessor) {
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../lib/clip/tests/data/clip-tiny");
        let mut samples: Vec<Sample> = (0..6)
            .map(|i| Sample {
                image: std::fs::read(data.join(format!("images/{i}.png"))).unwrap(),
                label: i,
            })
            .collect();
        for _ in 0..bad {
            samples.push(Sample {
                image: b"not an image".to_vec(),
                label: 0,
            });
        }
        let processor = ImageProcessor::from_dir(data.join("model")).unwrap();
        (Images(samples), processor)
    }

    fn digits_task() -> Task {
        Task {
            name: "digits".into(),
            dataset: DatasetSpec {
                source: "memory".into(),
                split: "test".into(),
                image_column: None,
                label_column: None,
            },
            classnames: vec!["a".into()],
            templates: vec!["{}".into()],
        }
    }

    /// Batches decoded on worker threads hold the same pixels and labels, in the same order,
    /// as batches decoded on the evaluating thread; a bad image is an error naming it.
    #[test]
    fn loader_workers_keep_batches_identical_and_in_order() {
        let (dataset, processor) = images(1);
        let task = digits_task();
        let loader = |batch_size, workers| Loader {
            task: &task,
            dataset: &dataset,
            processor: &processor,
            batch_size,
            workers,
        };
        let (want, want_labels) = loader(4, 0).batch(0).unwrap();
        assert_eq!(want.shape()[0], 4);
        assert_eq!(want_labels, [0, 1, 2, 3]);
        for workers in [1, 2, 3, 8] {
            let (got, labels) = loader(4, workers).batch(0).unwrap();
            assert_eq!(labels, want_labels, "{workers} workers");
            assert_eq!(got.shape(), want.shape());
            assert_eq!(got.data(), want.data(), "{workers} workers");
        }
        // The last, short batch holds images 4, 5 and the bad one.
        let err = loader(4, 3).batch(1).unwrap_err().to_string();
        assert!(
            err.contains("task `digits`") && err.contains("sample 6, memory/6.png"),
            "{err}"
        );
        let (_, labels) = loader(3, 2).batch(1).unwrap();
        assert_eq!(labels, [3, 4, 5]);
    }

    /// The whole pipeline (`Loader::run`), on the evaluating thread and with the prefetching
    /// loader thread, with 0 to 5 decoding workers: every batch arrives once, in order, with
    /// `batch_size` images (the last one short), and the same pixels in every configuration.
    #[test]
    fn pipeline_keeps_order_and_batch_size_with_and_without_workers() {
        let (dataset, processor) = images(0);
        let task = digits_task();
        // (labels, pixels) of every image, concatenated over the batches.
        let mut reference: Option<(Vec<i64>, Vec<f32>)> = None;
        for (prefetch, workers) in [(false, 0), (false, 2), (true, 1), (true, 2), (true, 5)] {
            for batch_size in [1, 4, 6, 32] {
                let loader = Loader {
                    task: &task,
                    dataset: &dataset,
                    processor: &processor,
                    batch_size,
                    workers,
                };
                let batches = dataset.len().div_ceil(batch_size);
                let mut got = Vec::new();
                loader
                    .run(batches, prefetch, |pixels, labels| {
                        got.push((pixels.shape().to_vec(), labels, pixels.data().to_vec()));
                        Ok(())
                    })
                    .unwrap();
                let sizes: Vec<usize> = got.iter().map(|(s, _, _)| s[0]).collect();
                let want_sizes: Vec<usize> = (0..batches)
                    .map(|b| batch_size.min(dataset.len() - b * batch_size))
                    .collect();
                let what = format!("prefetch {prefetch}, {workers} workers, batch {batch_size}");
                assert_eq!(sizes, want_sizes, "{what}");
                let labels: Vec<i64> = got.iter().flat_map(|(_, l, _)| l.clone()).collect();
                assert_eq!(labels, [0, 1, 2, 3, 4, 5], "{what}");
                // The same images whatever the batching: compare the concatenated pixels.
                let flat = (
                    labels,
                    got.iter()
                        .flat_map(|(_, _, p)| p.clone())
                        .collect::<Vec<f32>>(),
                );
                match &reference {
                    None => reference = Some(flat),
                    Some(r) => assert!(r == &flat, "{what}: pixels differ"),
                }
            }
        }
    }

    /// A corrupt image stops the pipeline with an error naming it, after the batches before
    /// it were consumed; an error of the consumer stops the loader thread (no hang) and is
    /// the one returned.
    #[test]
    fn pipeline_stops_at_a_corrupt_image_or_a_failing_consumer() {
        let (dataset, processor) = images(3);
        let task = digits_task();
        for (prefetch, workers) in [(false, 0), (true, 2)] {
            let loader = Loader {
                task: &task,
                dataset: &dataset,
                processor: &processor,
                batch_size: 3,
                workers,
            };
            let mut consumed = 0;
            let err = loader
                .run(3, prefetch, |_, labels| {
                    consumed += labels.len();
                    Ok(())
                })
                .unwrap_err()
                .to_string();
            assert_eq!(consumed, 6, "prefetch {prefetch}");
            assert!(
                err.contains("task `digits`") && err.contains("memory/6.png"),
                "{err}"
            );
            assert!(err.contains("not a PNG or JPEG"), "{err}");

            let err = loader
                .run(3, prefetch, |_, _| Err(Error::model("the model failed")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("the model failed"), "{err}");
        }
    }

    #[test]
    fn num_workers_comes_from_dataloader_kwargs() {
        let p = pool(json!({
            "base_model": "m",
            "test_datasets": {"mnist": {"path": "d"}},
            "dataloader_kwargs": {"batch_size": 16, "num_workers": 3}
        }))
        .unwrap();
        assert_eq!((p.batch_size, p.num_workers), (16, 3));
        let p = pool(
            json!({"base_model": "m", "test_datasets": {"mnist": {"path": "d"}},
                            "dataloader_kwargs": {"num_workers": 0}}),
        )
        .unwrap();
        assert_eq!(p.num_workers, 0);
        let err = pool(
            json!({"base_model": "m", "test_datasets": {"mnist": {"path": "d"}},
                              "dataloader_kwargs": {"num_workers": -1}}),
        )
        .err()
        .expect("negative workers")
        .to_string();
        assert!(err.contains("num_workers") && err.contains("-1"), "{err}");
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
