//! The merged model as a lazy state dict: each tensor is computed on the device when the host
//! asks for it (to save or to evaluate it), so memory holds a few tensors, whatever the size or
//! number of the models.

use std::borrow::Cow;

use fusion_plugin_api::{Compute, Context, Model, Result, StateDict, TensorInfo};

use crate::device::{download, Gpu};
use crate::inputs::Inputs;

/// How one tensor of the merged model is computed.
pub(crate) trait TensorMerge: Send + Sync + 'static {
    /// Merge the float tensor `name` (the reference's `info`) into a device tensor of
    /// `kernel_dtype(info.dtype)`. Every device tensor it creates besides the result must be
    /// released before it returns.
    fn merge<'c>(&self, c: &'c dyn Compute, name: &str, info: &TensorInfo) -> Result<Gpu<'c>>;

    /// Whether `name` is copied from the reference unchanged (excluded keys).
    fn copies(&self, _name: &str) -> bool {
        false
    }
}

/// A merged model computed tensor by tensor; non-float tensors (such as integer position ids)
/// and tensors the merge excludes are copied from the reference model.
pub(crate) struct Merged<M> {
    ctx: Context,
    inputs: Inputs,
    merge: M,
}

impl<M: TensorMerge> Merged<M> {
    /// Wrap `merge` as a [`Model`]. `ctx` must have a compute device (checked by the caller
    /// before any work).
    pub(crate) fn model(ctx: &Context, inputs: Inputs, merge: M) -> Model {
        Model::new(Merged {
            ctx: ctx.clone(),
            inputs,
            merge,
        })
    }
}

impl<M: TensorMerge> StateDict for Merged<M> {
    fn names(&self) -> Result<Vec<String>> {
        self.inputs.names()
    }

    fn info(&self, name: &str) -> Result<TensorInfo> {
        self.inputs.info(name)
    }

    fn data(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        let info = self.inputs.info(name)?;
        if !info.dtype.is_float() || info.numel() == 0 || self.merge.copies(name) {
            return Ok(Cow::Owned(
                self.inputs.reference.model.data(name)?.into_owned(),
            ));
        }
        let c = self.ctx.compute()?;
        let out = self
            .merge
            .merge(c, name, &info)
            .map_err(|e| e.context(format!("merging tensor `{name}`")))?;
        Ok(Cow::Owned(download(c, &out, info.dtype)?))
    }

    fn file_names(&self) -> Result<Vec<String>> {
        self.inputs.reference.model.file_names()
    }

    fn file(&self, name: &str) -> Result<Vec<u8>> {
        self.inputs.reference.model.file(name)
    }
}
