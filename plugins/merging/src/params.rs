//! Config helpers shared by the algorithms: per-model values, seeds, and the `ctx.compute()`
//! check every algorithm makes before it starts.

use fusion_plugin_api::serde_json::Value;
use fusion_plugin_api::{Compute, Config, Context, Error, Result};

/// A parameter that is one number for every model or a list with one number per model
/// (mergekit's per-model `weight`, `density`, `gamma`, `epsilon`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum PerModel {
    /// The same value for every model.
    All(f64),
    /// One value per model, in pool order.
    Each(Vec<f64>),
}

impl PerModel {
    /// Read `key` from `config` (a number or a list of numbers), `default` when absent.
    pub(crate) fn read(config: &Config, key: &str, default: f64) -> Result<Self> {
        match config.get::<Value>(key)? {
            None => Ok(PerModel::All(default)),
            Some(Value::Array(_)) => Ok(PerModel::Each(config.require(key)?)),
            Some(_) => Ok(PerModel::All(config.require(key)?)),
        }
    }

    /// The values for `n` models; a list of another length is an error naming `key`.
    pub(crate) fn resolve(&self, key: &str, algorithm: &str, n: usize) -> Result<Vec<f64>> {
        match self {
            PerModel::All(v) => Ok(vec![*v; n]),
            PerModel::Each(v) if v.len() == n => Ok(v.clone()),
            PerModel::Each(v) => Err(Error::config(format!(
                "{algorithm}: `{key}` has {} values for {n} models",
                v.len()
            ))),
        }
    }
}

/// The compute device, or an error naming the algorithm when the run has none.
pub(crate) fn compute<'a>(ctx: &'a Context, algorithm: &str) -> Result<&'a dyn Compute> {
    ctx.compute().map_err(|e| {
        e.context(format!(
            "{algorithm} runs on a GPU (or a software Vulkan such as lavapipe); pick one with --device"
        ))
    })
}

/// The seed of a randomized algorithm: its own `seed` parameter, else the program's seed, else
/// a fresh one from the clock (logged, so the run can be repeated).
pub(crate) fn seed(own: Option<u64>, ctx: &Context, algorithm: &str) -> u64 {
    if let Some(s) = own.or_else(|| ctx.seed()) {
        return s;
    }
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    tracing::warn!(
        seed = s,
        "{algorithm}: no `seed` set (method or program); drawing with seed {s}"
    );
    s
}

/// A ratio parameter that must lie in `[0, 1]`.
pub(crate) fn unit_interval(value: f64, key: &str, algorithm: &str) -> Result<f64> {
    if !(0.0..=1.0).contains(&value) {
        return Err(Error::config(format!(
            "{algorithm}: `{key}` must be in [0, 1], got {value}"
        )));
    }
    Ok(value)
}
