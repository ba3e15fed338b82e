//! Components that misbehave or report what they were given, for the end-to-end tests.

use std::borrow::Cow;

use fusion_plugin_api::prelude::*;
use serde_json::json;

/// Panics where `panic_in` says: `construct`, `run` or `data` (when a tensor is read).
pub struct Panicky {
    panic_in: String,
}

impl FromConfig for Panicky {
    fn from_config(config: &Config) -> Result<Self> {
        let panic_in: String = config.get_or("panic_in", "run".to_string())?;
        if panic_in == "construct" {
            panic!("deliberate panic while constructing");
        }
        Ok(Self { panic_in })
    }
}

impl Algorithm for Panicky {
    fn run(&self, pool: &dyn ModelPool, _ctx: &Context) -> Result<Model> {
        if self.panic_in == "run" {
            let v: Vec<u32> = Vec::new();
            // An index out of bounds, as a real bug would be.
            let _ = v[pool.model_names()?.len()];
        }
        Ok(Model::new(PanickyModel(pool.load_pretrained_or_first()?)))
    }
}

struct PanickyModel(Model);

impl StateDict for PanickyModel {
    fn names(&self) -> Result<Vec<String>> {
        self.0.names()
    }
    fn info(&self, name: &str) -> Result<TensorInfo> {
        self.0.info(name)
    }
    fn data(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        panic!("deliberate panic while reading `{name}`");
    }
}

/// Returns the pool's base model, each tensor read taking `delay_ms` (default 500): a save that
/// lasts long enough to be interrupted.
pub struct Slow {
    delay_ms: u64,
}

impl FromConfig for Slow {
    fn from_config(config: &Config) -> Result<Self> {
        Ok(Self {
            delay_ms: config.get_or("delay_ms", 500u64)?,
        })
    }
}

impl Algorithm for Slow {
    fn run(&self, pool: &dyn ModelPool, _ctx: &Context) -> Result<Model> {
        Ok(Model::new(SlowModel {
            model: pool.load_pretrained_or_first()?,
            delay: std::time::Duration::from_millis(self.delay_ms),
        }))
    }
}

struct SlowModel {
    model: Model,
    delay: std::time::Duration,
}

impl StateDict for SlowModel {
    fn names(&self) -> Result<Vec<String>> {
        self.model.names()
    }
    fn info(&self, name: &str) -> Result<TensorInfo> {
        self.model.info(name)
    }
    fn data(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        std::thread::sleep(self.delay);
        Ok(Cow::Owned(self.model.data(name)?.into_owned()))
    }
}

/// Returns the pool's base model, but computes each tensor at most once, as a merge should in a
/// run that saves and evaluates: reading a tensor a second time is an error naming it.
pub struct Once;

impl FromConfig for Once {
    fn from_config(_config: &Config) -> Result<Self> {
        Ok(Once)
    }
}

impl Algorithm for Once {
    fn run(&self, pool: &dyn ModelPool, _ctx: &Context) -> Result<Model> {
        Ok(Model::new(OnceModel {
            model: pool.load_pretrained_or_first()?,
            computed: Default::default(),
        }))
    }
}

struct OnceModel {
    model: Model,
    computed: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl StateDict for OnceModel {
    fn names(&self) -> Result<Vec<String>> {
        self.model.names()
    }
    fn info(&self, name: &str) -> Result<TensorInfo> {
        self.model.info(name)
    }
    fn data(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        if !self.computed.lock().unwrap().insert(name.to_string()) {
            return Err(Error::model(format!(
                "tensor `{name}` was asked for a second time"
            )));
        }
        Ok(Cow::Owned(self.model.data(name)?.into_owned()))
    }
    fn file_names(&self) -> Result<Vec<String>> {
        self.model.file_names()
    }
    fn file(&self, name: &str) -> Result<Vec<u8>> {
        self.model.file(name)
    }
}

/// Reports the context and config it was given, and logs at every level.
pub struct Probe {
    config: serde_json::Value,
}

impl FromConfig for Probe {
    fn from_config(config: &Config) -> Result<Self> {
        Ok(Self {
            config: config.value().clone(),
        })
    }
}

impl TaskPool for Probe {
    fn evaluate(&self, model: &Model, ctx: &Context) -> Result<serde_json::Value> {
        tracing::warn!(marker = "probe-warn", "probe evaluating");
        tracing::info!("probe info line");
        let first = model.names()?.into_iter().next().unwrap_or_default();
        let (values, shape) = model.to_f32(&first)?;
        Ok(json!({
            "seed": ctx.seed(),
            "fast_dev_run": ctx.fast_dev_run(),
            "config": self.config,
            "first_tensor": first,
            "first_shape": shape,
            "first_sum": values.iter().map(|v| *v as f64).sum::<f64>(),
        }))
    }
}

/// Returns the pool's models (the base first, cycled) under the names in `names`, which the host
/// reads as paths into the report (`[i]` a list position), plus `metadata` as a report value
/// when it is given: a method that returns a list, or a dict with metadata, as FusionBench's
/// methods may.
pub struct Several {
    names: Vec<String>,
    metadata: Option<serde_json::Value>,
}

impl FromConfig for Several {
    fn from_config(config: &Config) -> Result<Self> {
        Ok(Self {
            names: config.require("names")?,
            metadata: config.get("metadata")?,
        })
    }
}

impl Algorithm for Several {
    fn run(&self, pool: &dyn ModelPool, _ctx: &Context) -> Result<Model> {
        pool.load_pretrained_or_first()
    }

    fn run_models(&self, pool: &dyn ModelPool, _ctx: &Context) -> Result<Vec<(String, Model)>> {
        let all = pool.all_model_names()?;
        let mut out = Vec::new();
        for (i, name) in self.names.iter().enumerate() {
            out.push((name.clone(), pool.load_model(&all[i % all.len()])?));
        }
        if let Some(m) = &self.metadata {
            out.push(("metadata".to_string(), Model::report_value(m)));
        }
        Ok(out)
    }
}

fusion_plugin_api::export_plugin! {
    algorithm Several {
        names: ["several"],
        description: "Test plugin: the pool's models under the given names (paths into the report).",
    }
    algorithm Panicky {
        names: ["panicky"],
        description: "Test plugin: panics on purpose.",
    }
    algorithm Slow {
        names: ["slow"],
        description: "Test plugin: the base model, read slowly.",
    }
    algorithm Once {
        names: ["once"],
        description: "Test plugin: the base model, each tensor computed at most once.",
    }
    taskpool Probe {
        names: ["probe"],
        description: "Test plugin: reports the context and config it was given.",
    }
}
