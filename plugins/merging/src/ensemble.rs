//! Ensembles (FusionBench's `ensemble/simple_ensemble`, `weighted_ensemble` and
//! `max_model_predictor`): nothing is merged; the pool's models are returned together, and the
//! task pool combines their outputs (see `fusion_plugin_api::ensemble`).

use fusion_plugin_api::ensemble::{Aggregate, Ensemble};
use fusion_plugin_api::prelude::*;
use fusion_plugin_api::serde_json::Value;

/// The models to ensemble: every model of the pool but `_pretrained_`, in pool order.
fn members(pool: &dyn ModelPool, algorithm: &str) -> Result<Vec<(String, Model)>> {
    let names = pool.model_names()?;
    if names.is_empty() {
        return Err(Error::config(format!(
            "{algorithm}: the model pool has no models to ensemble (only special ones such as \
             `_pretrained_`)"
        )));
    }
    names
        .into_iter()
        .map(|n| {
            let m = pool.load_model(&n)?;
            Ok((n, m))
        })
        .collect()
}

/// `SimpleEnsembleAlgorithm`: the mean of the members' outputs. `device_map` (FusionBench's
/// placement of members on several GPUs) is accepted; the host has one device.
pub struct SimpleEnsemble;

impl FromConfig for SimpleEnsemble {
    fn from_config(config: &Config) -> Result<Self> {
        if let Some(map) = config.get::<Value>("device_map")?.filter(|v| !v.is_null()) {
            tracing::info!("simple_ensemble: device_map {map} is ignored: every member runs on the host's one device");
        }
        Ok(SimpleEnsemble)
    }
}

impl Algorithm for SimpleEnsemble {
    fn run(&self, pool: &dyn ModelPool, _ctx: &Context) -> Result<Model> {
        let members = members(pool, "simple_ensemble")?;
        tracing::info!(
            models = members.len(),
            "ensemble: mean of the members' outputs"
        );
        Ensemble::new(Aggregate::Mean, members)?.into_model()
    }
}

/// `WeightedEnsembleAlgorithm`: the members' outputs weighted by `weights` (one per model;
/// null: equal), divided by their sum when `normalize` (true).
pub struct WeightedEnsemble {
    weights: Option<Vec<f64>>,
    normalize: bool,
}

impl FromConfig for WeightedEnsemble {
    fn from_config(config: &Config) -> Result<Self> {
        Ok(WeightedEnsemble {
            weights: config.get("weights")?,
            normalize: config.get_or("normalize", true)?,
        })
    }
}

impl Algorithm for WeightedEnsemble {
    fn run(&self, pool: &dyn ModelPool, _ctx: &Context) -> Result<Model> {
        const NAME: &str = "weighted_ensemble";
        let members = members(pool, NAME)?;
        let n = members.len();
        let mut weights = match &self.weights {
            None => vec![1.0 / n as f64; n],
            Some(w) if w.len() != n => {
                return Err(Error::config(format!(
                    "{NAME}: `weights` has {} values for the {n} models ({})",
                    w.len(),
                    members
                        .iter()
                        .map(|(m, _)| m.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
            Some(w) => w.clone(),
        };
        if self.normalize {
            let sum: f64 = weights.iter().sum();
            if sum == 0.0 || !sum.is_finite() {
                return Err(Error::config(format!(
                    "{NAME}: `weights` sum to {sum}, which normalize: true cannot divide by"
                )));
            }
            weights.iter_mut().for_each(|w| *w /= sum);
        }
        tracing::info!(
            models = n,
            ?weights,
            "ensemble: weighted sum of the members' outputs"
        );
        Ensemble::new(
            Aggregate::Weighted(weights.iter().map(|&w| w as f32).collect()),
            members,
        )?
        .into_model()
    }
}

/// `MaxModelPredictorAlgorithm`: the elementwise maximum of the members' outputs.
pub struct MaxModelPredictor;

impl FromConfig for MaxModelPredictor {
    fn from_config(_config: &Config) -> Result<Self> {
        Ok(MaxModelPredictor)
    }
}

impl Algorithm for MaxModelPredictor {
    fn run(&self, pool: &dyn ModelPool, _ctx: &Context) -> Result<Model> {
        let members = members(pool, "max_model_predictor")?;
        tracing::info!(
            models = members.len(),
            "ensemble: elementwise maximum of the members' outputs"
        );
        Ensemble::new(Aggregate::Max, members)?.into_model()
    }
}
