//! The merged model of the CPU methods (MagMax, ExPO, linear interpolation,
//! magnitude-difference pruning, TSV-M, ISO-C, ISO-CTS) as a lazy state dict: each tensor is
//! computed on the CPU, in f32 (f64 inside the SVDs), when the host asks for it, from the same
//! tensor of every model, so memory holds one key's tensors of every model at a time.

use std::borrow::Cow;

use fusion_plugin_api::{f32_to_bytes, Model, Result, StateDict, TensorInfo};

use crate::inputs::{Inputs, Member};

/// How one float tensor of the merged model is computed on the CPU.
pub(crate) trait CpuMerge: Send + Sync + 'static {
    /// The merged values of `name` (the reference's `info`), row-major f32.
    fn merge(&self, inputs: &Inputs, name: &str, info: &TensorInfo) -> Result<Vec<f32>>;
}

/// A merged model computed tensor by tensor on the CPU; non-float and empty tensors are copied
/// from the reference model.
pub(crate) struct CpuMerged<M> {
    inputs: Inputs,
    merge: M,
}

impl<M: CpuMerge> CpuMerged<M> {
    pub(crate) fn model(inputs: Inputs, merge: M) -> Model {
        Model::new(CpuMerged { inputs, merge })
    }
}

impl<M: CpuMerge> StateDict for CpuMerged<M> {
    fn names(&self) -> Result<Vec<String>> {
        self.inputs.names()
    }

    fn info(&self, name: &str) -> Result<TensorInfo> {
        self.inputs.info(name)
    }

    fn data(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        let info = self.inputs.info(name)?;
        if !info.dtype.is_float() || info.numel() == 0 {
            return Ok(Cow::Owned(
                self.inputs.reference.model.data(name)?.into_owned(),
            ));
        }
        let values = self
            .merge
            .merge(&self.inputs, name, &info)
            .map_err(|e| e.context(format!("merging tensor `{name}`")))?;
        debug_assert_eq!(values.len(), info.numel());
        Ok(Cow::Owned(f32_to_bytes(&values, info.dtype)?))
    }

    fn file_names(&self) -> Result<Vec<String>> {
        self.inputs.reference.model.file_names()
    }

    fn file(&self, name: &str) -> Result<Vec<u8>> {
        self.inputs.reference.model.file(name)
    }
}

/// One model's tensor as f32.
pub(crate) fn load(member: &Member, name: &str) -> Result<Vec<f32>> {
    Ok(member.model.to_f32(name)?.0)
}

/// Every model's task vector `θᵢ − θ₀` of `name`, in f32 as torch subtracts.
pub(crate) fn task_vectors(inputs: &Inputs, name: &str) -> Result<Vec<Vec<f32>>> {
    let base = load(inputs.base(), name)?;
    inputs
        .models
        .iter()
        .map(|m| {
            let mut v = load(m, name)?;
            v.iter_mut().zip(&base).for_each(|(x, b)| *x -= b);
            Ok(v)
        })
        .collect()
}

/// A 2-D float tensor (the ones the SVD methods act on).
pub(crate) fn is_matrix(info: &TensorInfo) -> bool {
    info.dtype.is_float() && info.shape.len() == 2 && info.numel() > 0
}
