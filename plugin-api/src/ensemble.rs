//! Ensembles: several models whose outputs a task pool combines (FusionBench's
//! `EnsembleModule`, `WeightedEnsembleModule` and `MaxModelPredictor`).
//!
//! An ensemble crosses the boundary as one [`Model`], so that neither the ABI nor a task pool's
//! signature changes: member `i`'s tensors under `model_list.{i}.` (the names torch gives an
//! `EnsembleModule`'s state dict) and a carried file, [`MANIFEST`], that names the members and
//! says how their outputs combine. A task pool that supports ensembles checks for it with
//! [`Ensemble::from_model`], runs each member, and combines the members' outputs with
//! [`Ensemble::combine`] where FusionBench's wrapper combines them (for CLIP, the vision
//! towers' pooled outputs, before the shared projection).
//!
//! ```
//! use fusion_plugin_api::ensemble::{Aggregate, Ensemble};
//! use fusion_plugin_api::{DType, MemoryStateDict, Model};
//!
//! let member = |v: f32| {
//!     let mut sd = MemoryStateDict::new();
//!     sd.insert_f32("w", vec![2], &[v, -v], DType::F32).unwrap();
//!     Model::new(sd)
//! };
//! let ensemble = Ensemble::new(
//!     Aggregate::Weighted(vec![0.75, 0.25]),
//!     vec![("a".into(), member(1.0)), ("b".into(), member(2.0))],
//! )
//! .unwrap();
//! let model = ensemble.into_model().unwrap();
//! assert_eq!(model.names().unwrap(), ["model_list.0.w", "model_list.1.w"]);
//! let back = Ensemble::from_model(&model).unwrap().expect("an ensemble");
//! assert_eq!(back.members[1].1.to_f32("w").unwrap().0, [2.0, -2.0]);
//! assert_eq!(back.combine(&[&[4.0], &[8.0]]).unwrap(), [5.0]);
//! ```

use std::borrow::Cow;

use serde_json::{json, Value};

use crate::{Error, Model, Result, StateDict, TensorInfo};

/// The file an ensemble carries: `{"aggregate": "mean" | "weighted" | "max", "members":
/// [names], "weights": [..]}` (weights only for `weighted`).
pub const MANIFEST: &str = "ensemble.json";

/// The prefix of member `i`'s tensors.
fn prefix(i: usize) -> String {
    format!("model_list.{i}.")
}

/// How the members' outputs combine.
#[derive(Clone, Debug, PartialEq)]
pub enum Aggregate {
    /// Their mean (`EnsembleModule`).
    Mean,
    /// Their sum weighted by these factors, one per member (`WeightedEnsembleModule`; the
    /// algorithm normalizes them first when asked).
    Weighted(Vec<f32>),
    /// Their elementwise maximum (`MaxModelPredictor`).
    Max,
}

/// An ensemble: named members and how their outputs combine.
#[derive(Clone, Debug)]
pub struct Ensemble {
    /// How the outputs combine.
    pub aggregate: Aggregate,
    /// The members, by name, in order.
    pub members: Vec<(String, Model)>,
}

impl Ensemble {
    /// An ensemble of `members` (at least one; one weight per member for
    /// [`Aggregate::Weighted`], each finite).
    pub fn new(aggregate: Aggregate, members: Vec<(String, Model)>) -> Result<Ensemble> {
        if members.is_empty() {
            return Err(Error::config("an ensemble needs at least one model"));
        }
        if let Aggregate::Weighted(w) = &aggregate {
            if w.len() != members.len() {
                return Err(Error::config(format!(
                    "an ensemble of {} models needs {} weights, got {}",
                    members.len(),
                    members.len(),
                    w.len()
                )));
            }
            if let Some(bad) = w.iter().find(|x| !x.is_finite()) {
                return Err(Error::config(format!(
                    "ensemble weights must be finite numbers, got {bad}"
                )));
            }
        }
        Ok(Ensemble { aggregate, members })
    }

    /// The ensemble as one model: member `i`'s tensors under `model_list.{i}.`, and the
    /// [`MANIFEST`].
    pub fn into_model(self) -> Result<Model> {
        let mut index = Vec::new();
        for (i, (name, model)) in self.members.iter().enumerate() {
            for tensor in model
                .names()
                .map_err(|e| e.context(format!("ensemble member `{name}`")))?
            {
                index.push((format!("{}{tensor}", prefix(i)), i, tensor));
            }
        }
        let (kind, weights) = match &self.aggregate {
            Aggregate::Mean => ("mean", None),
            Aggregate::Weighted(w) => ("weighted", Some(w.clone())),
            Aggregate::Max => ("max", None),
        };
        let mut manifest = json!({
            "aggregate": kind,
            "members": self.members.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        });
        if let Some(w) = weights {
            manifest["weights"] = json!(w);
        }
        Ok(Model::new(Bundle {
            members: self.members.into_iter().map(|(_, m)| m).collect(),
            index,
            manifest: serde_json::to_vec_pretty(&manifest).expect("JSON serializes"),
        }))
    }

    /// The ensemble `model` holds, or None when it is an ordinary model (no [`MANIFEST`]). A
    /// manifest that cannot be read, or members without tensors, is an error.
    pub fn from_model(model: &Model) -> Result<Option<Ensemble>> {
        if !model.file_names()?.iter().any(|f| f == MANIFEST) {
            return Ok(None);
        }
        let bad = |why: String| Error::model(format!("the ensemble's {MANIFEST}: {why}"));
        let manifest: Value = serde_json::from_slice(&model.file(MANIFEST)?)
            .map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let members: Vec<String> = manifest
            .get("members")
            .and_then(|m| serde_json::from_value(m.clone()).ok())
            .ok_or_else(|| bad("`members` must be a list of names".into()))?;
        let aggregate = match manifest.get("aggregate").and_then(Value::as_str) {
            Some("mean") => Aggregate::Mean,
            Some("max") => Aggregate::Max,
            Some("weighted") => Aggregate::Weighted(
                manifest
                    .get("weights")
                    .and_then(|w| serde_json::from_value(w.clone()).ok())
                    .ok_or_else(|| bad("`weights` must be a list of numbers".into()))?,
            ),
            other => {
                return Err(bad(format!(
                    "`aggregate` must be mean, weighted or max, got {other:?}"
                )))
            }
        };
        let names = model.names()?;
        let mut out = Vec::with_capacity(members.len());
        for (i, name) in members.into_iter().enumerate() {
            let p = prefix(i);
            let tensors: Vec<String> = names
                .iter()
                .filter_map(|n| n.strip_prefix(&p).map(str::to_string))
                .collect();
            if tensors.is_empty() {
                return Err(bad(format!(
                    "member `{name}` has no tensors (none named `{p}*`)"
                )));
            }
            let member = Member {
                bundle: model.clone(),
                prefix: p,
                tensors,
            };
            out.push((name, Model::new(member)));
        }
        Ensemble::new(aggregate, out).map(Some)
    }

    /// The members' outputs (`outputs[i]` from member `i`, all of one length) combined
    /// elementwise, as FusionBench's wrapper aggregates them.
    pub fn combine(&self, outputs: &[&[f32]]) -> Result<Vec<f32>> {
        if outputs.len() != self.members.len() {
            return Err(Error::other(format!(
                "{} outputs for an ensemble of {} models",
                outputs.len(),
                self.members.len()
            )));
        }
        let len = outputs[0].len();
        if outputs.iter().any(|o| o.len() != len) {
            return Err(Error::other(
                "the ensemble's members gave outputs of different sizes",
            ));
        }
        let n = outputs.len() as f32;
        Ok((0..len)
            .map(|j| match &self.aggregate {
                Aggregate::Mean => outputs.iter().map(|o| o[j]).sum::<f32>() / n,
                Aggregate::Weighted(w) => outputs.iter().zip(w).map(|(o, w)| o[j] * w).sum(),
                Aggregate::Max => outputs
                    .iter()
                    .map(|o| o[j])
                    .fold(f32::NEG_INFINITY, f32::max),
            })
            .collect())
    }
}

/// The ensemble as one state dict (see [`Ensemble::into_model`]).
struct Bundle {
    members: Vec<Model>,
    /// Bundle name, member index, member tensor name; in order.
    index: Vec<(String, usize, String)>,
    manifest: Vec<u8>,
}

impl Bundle {
    fn find(&self, name: &str) -> Result<(&Model, &str)> {
        self.index
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, i, t)| (&self.members[*i], t.as_str()))
            .ok_or_else(|| Error::model(format!("the ensemble has no tensor named `{name}`")))
    }
}

impl StateDict for Bundle {
    fn names(&self) -> Result<Vec<String>> {
        Ok(self.index.iter().map(|(n, _, _)| n.clone()).collect())
    }
    fn info(&self, name: &str) -> Result<TensorInfo> {
        let (m, t) = self.find(name)?;
        m.info(t)
    }
    fn data(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        let (m, t) = self.find(name)?;
        m.data(t)
    }
    fn file_names(&self) -> Result<Vec<String>> {
        Ok(vec![MANIFEST.to_string()])
    }
    fn file(&self, name: &str) -> Result<Vec<u8>> {
        if name == MANIFEST {
            Ok(self.manifest.clone())
        } else {
            Err(Error::model(format!("the ensemble has no file `{name}`")))
        }
    }
}

/// One member of an ensemble read from its bundle.
struct Member {
    bundle: Model,
    prefix: String,
    tensors: Vec<String>,
}

impl StateDict for Member {
    fn names(&self) -> Result<Vec<String>> {
        Ok(self.tensors.clone())
    }
    fn info(&self, name: &str) -> Result<TensorInfo> {
        self.bundle.info(&format!("{}{name}", self.prefix))
    }
    fn data(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        self.bundle.data(&format!("{}{name}", self.prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, MemoryStateDict};

    fn member(v: &[f32]) -> Model {
        let mut sd = MemoryStateDict::new();
        sd.insert_f32("a.weight", vec![v.len()], v, DType::F32)
            .unwrap();
        sd.insert_f32("b", vec![1], &[v[0]], DType::F16).unwrap();
        Model::new(sd)
    }

    #[test]
    fn an_ensemble_travels_as_one_model_and_comes_back() {
        for aggregate in [
            Aggregate::Mean,
            Aggregate::Max,
            Aggregate::Weighted(vec![0.25, 0.75]),
        ] {
            let e = Ensemble::new(
                aggregate.clone(),
                vec![
                    ("x".into(), member(&[1.0, 2.0])),
                    ("y".into(), member(&[3.0, -4.0])),
                ],
            )
            .unwrap();
            let model = e.into_model().unwrap();
            assert_eq!(
                model.names().unwrap(),
                [
                    "model_list.0.a.weight",
                    "model_list.0.b",
                    "model_list.1.a.weight",
                    "model_list.1.b"
                ]
            );
            assert_eq!(model.info("model_list.1.b").unwrap().dtype, DType::F16);
            assert_eq!(model.summary().unwrap().parameters, 6);
            let back = Ensemble::from_model(&model).unwrap().unwrap();
            assert_eq!(back.aggregate, aggregate);
            assert_eq!(back.members[0].0, "x");
            assert_eq!(back.members[1].1.names().unwrap(), ["a.weight", "b"]);
            assert_eq!(back.members[1].1.to_f32("a.weight").unwrap().0, [3.0, -4.0]);
        }
        assert!(Ensemble::from_model(&member(&[1.0])).unwrap().is_none());
    }

    #[test]
    fn outputs_combine_as_fusionbench_aggregates_them() {
        let two = || {
            vec![
                ("x".to_string(), member(&[0.0])),
                ("y".to_string(), member(&[0.0])),
            ]
        };
        let outputs: [&[f32]; 2] = [&[1.0, -2.0, 5.0], &[3.0, 4.0, -1.0]];
        let mean = Ensemble::new(Aggregate::Mean, two()).unwrap();
        assert_eq!(mean.combine(&outputs).unwrap(), [2.0, 1.0, 2.0]);
        let max = Ensemble::new(Aggregate::Max, two()).unwrap();
        assert_eq!(max.combine(&outputs).unwrap(), [3.0, 4.0, 5.0]);
        let weighted = Ensemble::new(Aggregate::Weighted(vec![0.25, 0.75]), two()).unwrap();
        assert_eq!(weighted.combine(&outputs).unwrap(), [2.5, 2.5, 0.5]);
        let msg = Ensemble::new(Aggregate::Weighted(vec![1.0]), two())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("needs 2 weights, got 1"), "{msg}");
        assert!(Ensemble::new(Aggregate::Mean, vec![]).is_err());
    }
}
