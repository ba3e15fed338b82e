//! FusionBench's placeholder components: `DummyAlgorithm` and `DummyTaskPool`.

use fusion_plugin_api::prelude::*;
use serde_json::json;

/// `fusion_bench.method.DummyAlgorithm`: returns the pretrained model, or the first model.
pub struct DummyAlgorithm;

impl FromConfig for DummyAlgorithm {
    fn from_config(_config: &Config) -> Result<Self> {
        Ok(DummyAlgorithm)
    }
}

impl Algorithm for DummyAlgorithm {
    fn run(&self, pool: &dyn ModelPool, _ctx: &Context) -> Result<Model> {
        pool.load_pretrained_or_first()
    }
}

/// `fusion_bench.taskpool.DummyTaskPool`: evaluates nothing, reports what the model is made of.
pub struct DummyTaskPool;

impl FromConfig for DummyTaskPool {
    fn from_config(_config: &Config) -> Result<Self> {
        Ok(DummyTaskPool)
    }
}

impl TaskPool for DummyTaskPool {
    fn evaluate(&self, model: &Model, _ctx: &Context) -> Result<serde_json::Value> {
        Ok(json!({ "model_info": model_info(model)? }))
    }
}

/// FusionBench's `model_info` block (every parameter of a merged model counts as trainable, as
/// in FusionBench), plus tensor and dtype counts.
pub fn model_info(model: &Model) -> Result<serde_json::Value> {
    let s = model.summary()?;
    Ok(json!({
        "trainable_params": s.parameters,
        "all_params": s.parameters,
        "trainable_percentage": if s.parameters > 0 { 1.0 } else { 0.0 },
        "num_tensors": s.tensors,
        "num_bytes": s.bytes,
        "dtypes": s.dtypes,
    }))
}
