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
    fn from_config(config: &Config) -> Result<Self> {
        // FusionBench's DummyTaskPool saves the model it is given when `model_save_path` is set
        // (its config has `model_save_path: null`); here the program saves the merged model.
        if let Some(path) = config.get::<serde_json::Value>("model_save_path")? {
            if !path.is_null() {
                return Err(Error::config(format!(
                    "`{}`: model_save_path ({path}) is not supported by fusion-host's dummy task \
                     pool; set the program's `merged_model_save_path` instead",
                    config.target()
                )));
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dummy_task_pool_refuses_model_save_path_rather_than_ignore_it() {
        let target = "fusion_bench.taskpool.DummyTaskPool";
        let ok = |v| DummyTaskPool::from_config(&Config::new(target, v).unwrap()).is_ok();
        assert!(ok(json!({"_target_": target})));
        assert!(ok(json!({"_target_": target, "model_save_path": null})));
        let err = DummyTaskPool::from_config(
            &Config::new(target, json!({"model_save_path": "out/model"})).unwrap(),
        )
        .err()
        .expect("refused")
        .to_string();
        assert!(
            err.contains("model_save_path") && err.contains("merged_model_save_path"),
            "{err}"
        );
    }
}
