//! Device plumbing: tensors that release themselves, uploading checkpoint tensors, reading
//! results back in the checkpoint's dtype.

use fusion_plugin_api::{
    bytes_to_f32, f32_to_bytes, Compute, DType, DeviceTensor, Error, GpuTensor, Model, Result,
};

/// A tensor on the compute device: owned ones are plugin-api's [`DeviceTensor`] (released when
/// dropped, also when an error unwinds a merge, so the device holds only the tensors a merge
/// step is using), or a view of a tensor someone else releases (a [`DeviceCache`] entry), so
/// that a step takes cached and fresh tensors alike.
///
/// [`DeviceCache`]: crate::cache::DeviceCache
pub(crate) enum Gpu<'c> {
    /// Released on drop.
    Owned(DeviceTensor<'c>),
    /// Not released here.
    Borrowed(GpuTensor),
}

impl<'c> Gpu<'c> {
    /// Own a tensor returned by a kernel function.
    pub(crate) fn adopt(c: &'c dyn Compute, t: GpuTensor) -> Self {
        Gpu::Owned(DeviceTensor::adopt(c, t))
    }

    /// A view of a tensor that stays alive after this handle is dropped.
    pub(crate) fn borrowed(_c: &'c dyn Compute, t: GpuTensor) -> Self {
        Gpu::Borrowed(t)
    }

    /// Give up ownership: the caller now releases the tensor.
    pub(crate) fn into_raw(self) -> GpuTensor {
        match self {
            Gpu::Owned(t) => t.into_raw(),
            Gpu::Borrowed(t) => t,
        }
    }

    /// A zero-filled tensor.
    pub(crate) fn zeros(c: &'c dyn Compute, dtype: DType, shape: &[usize]) -> Result<Self> {
        Ok(Gpu::Owned(DeviceTensor::zeros(c, dtype, shape)?))
    }

    /// The device id.
    pub(crate) fn id(&self) -> GpuTensor {
        match self {
            Gpu::Owned(t) => t.id(),
            Gpu::Borrowed(t) => *t,
        }
    }
}

/// The dtype kernels write for a tensor stored as `dtype`: kernels take f32, f16 and bf16;
/// f64 checkpoints are computed in f32.
pub(crate) fn kernel_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F32
    } else {
        dtype
    }
}

/// Upload one float tensor of `model` (called `who` in errors). f64 goes up as f32.
pub(crate) fn upload<'c>(
    c: &'c dyn Compute,
    model: &Model,
    who: &str,
    name: &str,
) -> Result<Gpu<'c>> {
    let ctx = |e: Error| e.context(format!("model `{who}`, tensor `{name}`"));
    let info = model.info(name).map_err(ctx)?;
    let bytes = model.data(name).map_err(ctx)?;
    let t = match info.dtype {
        DType::F32 | DType::F16 | DType::BF16 => c.create(info.dtype, &info.shape, Some(&bytes)),
        DType::F64 => {
            let values = bytes_to_f32(&bytes, DType::F64).map_err(ctx)?;
            c.create(
                DType::F32,
                &info.shape,
                Some(&f32_to_bytes(&values, DType::F32)?),
            )
        }
        other => Err(Error::model(format!(
            "cannot merge a tensor of dtype {other}"
        ))),
    }
    .map_err(ctx)?;
    Ok(Gpu::adopt(c, t))
}

/// Read a result back as the raw bytes of `dtype` (the checkpoint's dtype).
pub(crate) fn download(c: &dyn Compute, t: &Gpu<'_>, dtype: DType) -> Result<Vec<u8>> {
    let bytes = c.read(t.id())?;
    if dtype == DType::F64 {
        return f32_to_bytes(&bytes_to_f32(&bytes, DType::F32)?, DType::F64);
    }
    Ok(bytes)
}
