//! Opening a pool's models for a merge, and checking them against each other before any work.

use std::collections::HashSet;

use fusion_plugin_api::{Error, Model, ModelPool, Result, TensorInfo, PRETRAINED};

/// One model of the merge, with its pool name (for errors and per-model random keys).
#[derive(Clone)]
pub(crate) struct Member {
    pub name: String,
    pub model: Model,
}

impl Member {
    fn open(pool: &dyn ModelPool, name: &str) -> Result<Self> {
        // Pools name the model in their errors already; say it once.
        let model = pool.load_model(name).map_err(|e| {
            if e.message().contains(&format!("`{name}`")) {
                e
            } else {
                e.context(format!("loading model `{name}`"))
            }
        })?;
        Ok(Member {
            name: name.to_string(),
            model,
        })
    }
}

/// The models an algorithm merges, opened lazily and checked for matching tensor names and shapes.
#[derive(Clone)]
pub(crate) struct Inputs {
    /// `_pretrained_`, for the methods that work on task vectors.
    pub base: Option<Member>,
    /// The models to merge, in pool order.
    pub models: Vec<Member>,
    /// The model whose tensor names, dtypes and auxiliary files the result takes (the base
    /// model, or the first model when there is none, as FusionBench loads the merged state
    /// dict into it).
    pub reference: Member,
}

impl Inputs {
    /// Open `_pretrained_` (when `with_base`) and every model to merge; `algorithm` needs at
    /// least `min_models` of them.
    pub(crate) fn open(
        pool: &dyn ModelPool,
        algorithm: &str,
        with_base: bool,
        min_models: usize,
    ) -> Result<Self> {
        let names = pool.model_names()?;
        Self::open_named(pool, algorithm, with_base, &names, min_models)
    }

    /// Like [`Inputs::open`] with an explicit list of models to merge.
    pub(crate) fn open_named(
        pool: &dyn ModelPool,
        algorithm: &str,
        with_base: bool,
        names: &[String],
        min_models: usize,
    ) -> Result<Self> {
        if names.len() < min_models {
            return Err(Error::config(format!(
                "{algorithm} needs at least {min_models} model(s) to merge besides `{PRETRAINED}`, the pool has {}",
                names.len()
            )));
        }
        let base = if with_base {
            if !pool.has_pretrained()? {
                return Err(Error::config(format!(
                    "{algorithm} needs a `{PRETRAINED}` model in the pool (the base of the task vectors)"
                )));
            }
            Some(Member::open(pool, PRETRAINED)?)
        } else {
            None
        };
        let models = names
            .iter()
            .map(|n| Member::open(pool, n))
            .collect::<Result<Vec<_>>>()?;
        let reference = base.clone().unwrap_or_else(|| models[0].clone());
        let inputs = Inputs {
            base,
            models,
            reference,
        };
        inputs.check()?;
        Ok(inputs)
    }

    /// Every model, base first.
    pub(crate) fn all(&self) -> impl Iterator<Item = &Member> {
        self.base.iter().chain(&self.models)
    }

    /// The base model; only call for inputs opened `with_base`.
    pub(crate) fn base(&self) -> &Member {
        self.base.as_ref().expect("inputs opened with a base model")
    }

    /// Tensor names of the result, in the reference's order.
    pub(crate) fn names(&self) -> Result<Vec<String>> {
        self.reference.model.names()
    }

    /// The reference's dtype and shape of a tensor.
    pub(crate) fn info(&self, name: &str) -> Result<TensorInfo> {
        self.reference.model.info(name)
    }

    /// Same tensor names, same shapes, and float where the reference is float, in every model;
    /// a mismatch names the tensor and the two models.
    fn check(&self) -> Result<()> {
        let r = &self.reference;
        let names = r.model.names()?;
        let set: HashSet<&str> = names.iter().map(String::as_str).collect();
        let infos = names
            .iter()
            .map(|n| r.model.info(n))
            .collect::<Result<Vec<_>>>()?;
        for m in self.all().filter(|m| m.name != r.name) {
            let theirs = m.model.names()?;
            if let Some(extra) = theirs.iter().find(|n| !set.contains(n.as_str())) {
                return Err(Error::model(format!(
                    "tensor `{extra}` is in `{}` but not in `{}`",
                    m.name, r.name
                )));
            }
            let theirs: HashSet<&str> = theirs.iter().map(String::as_str).collect();
            for (name, info) in names.iter().zip(&infos) {
                if !theirs.contains(name.as_str()) {
                    return Err(Error::model(format!(
                        "tensor `{name}` is in `{}` but not in `{}`",
                        r.name, m.name
                    )));
                }
                let other = m.model.info(name)?;
                if other.shape != info.shape {
                    return Err(Error::model(format!(
                        "tensor `{name}`: `{}` has shape {:?}, `{}` has shape {:?}",
                        r.name, info.shape, m.name, other.shape
                    )));
                }
                if other.dtype.is_float() != info.dtype.is_float() {
                    return Err(Error::model(format!(
                        "tensor `{name}`: `{}` is {}, `{}` is {}",
                        r.name, info.dtype, m.name, other.dtype
                    )));
                }
            }
        }
        Ok(())
    }
}
