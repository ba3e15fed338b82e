//! Models as lazy state dicts.
//!
//! A model crosses the library boundary as a [`Model`]: a cheap-to-clone handle to an object that
//! lists tensor names and hands out each tensor's dtype, shape and bytes on request. Pools back it
//! with memory-mapped safetensors files, so an algorithm can stream a checkpoint tensor by tensor
//! and never hold more than a few tensors at once. An algorithm can also return a model whose
//! tensors are computed only when asked for (implement [`StateDict`] on your own type).

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::abi::{self, StateDictObj};
use crate::{DType, Error, GpuTensor, Result, TensorInfo};

/// What a model is made of: named tensors, plus auxiliary files (such as `config.json`) that travel
/// with the checkpoint.
///
/// Implement this to hand a model to the host or to another component, then wrap it with
/// [`Model::new`].
pub trait StateDict: Send + Sync + 'static {
    /// Tensor names, in checkpoint order.
    fn names(&self) -> Result<Vec<String>>;
    /// The dtype and shape of one tensor.
    fn info(&self, name: &str) -> Result<TensorInfo>;
    /// The raw little-endian bytes of one tensor (`info(name).nbytes()` long). Borrow them where
    /// they already exist (a memory map), or compute and return them owned.
    fn data(&self, name: &str) -> Result<Cow<'_, [u8]>>;
    /// Names of auxiliary files carried with the model (for example `config.json`), written beside
    /// the weights when the model is saved.
    fn file_names(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
    /// The contents of one auxiliary file.
    fn file(&self, name: &str) -> Result<Vec<u8>> {
        Err(Error::model(format!("the model has no file `{name}`")))
    }
    /// Tensor `name` already on the host's compute device, for a state dict whose tensors are
    /// there (a merge computed on the device), so that a reader on the same device takes it
    /// where it is instead of reading [`StateDict::data`] back to host memory and uploading it
    /// again. `Ok(None)`, the default, means "not on the device": read the bytes.
    ///
    /// Rules for `Ok(Some(t))`:
    /// - `t` lives on the compute device of the run, the host's one [`Compute`](crate::Compute)
    ///   runtime that every component of a run reaches through [`Context::compute`](crate::Context::compute);
    ///   only hand one out when the state dict holds such a handle.
    /// - It holds the values [`StateDict::data`] would return, with `info(name)`'s shape, as
    ///   f32, f16 or bf16 (an f64 tensor as f32): [`Compute::describe`](crate::Compute::describe)
    ///   tells which.
    /// - It is a new tensor owned by the caller, who must release it (wrap it with
    ///   [`DeviceTensor::adopt`](crate::DeviceTensor::adopt)); the state dict keeps no reference
    ///   to it, and each call hands out another one.
    fn device_tensor(&self, name: &str) -> Result<Option<GpuTensor>> {
        let _ = name;
        Ok(None)
    }
}

/// A model: a handle to a [`StateDict`] that may live in another plugin.
///
/// Cloning is cheap (reference counted). Tensor bytes borrowed from a `Model` stay valid while the
/// `Model` does.
#[repr(transparent)]
#[derive(Clone, abi_stable::StableAbi)]
pub struct Model {
    pub(crate) obj: StateDictObj,
}

impl Model {
    /// Wrap a state dict so it can cross the plugin boundary.
    pub fn new(state_dict: impl StateDict) -> Model {
        Model {
            obj: abi::state_dict_to_obj(state_dict, crate::logging::origin()),
        }
    }

    /// Tensor names, in checkpoint order.
    pub fn names(&self) -> Result<Vec<String>> {
        self.obj
            .names()
            .into_result()
            .map(|v| v.into_iter().map(Into::into).collect())
    }

    /// The dtype and shape of one tensor.
    pub fn info(&self, name: &str) -> Result<TensorInfo> {
        self.obj.info(name.into()).into_result().map(Into::into)
    }

    /// The raw bytes of one tensor.
    pub fn data(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        self.obj.data(name.into()).into_result().map(|c| match c {
            abi_stable::std_types::RCow::Borrowed(s) => Cow::Borrowed(s.as_slice()),
            abi_stable::std_types::RCow::Owned(v) => Cow::Owned(v.into_vec()),
        })
    }

    /// One tensor converted to `f32` (from f32, f16, bf16 or f64), with its shape.
    pub fn to_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let info = self.info(name)?;
        let bytes = self.data(name)?;
        let values =
            bytes_to_f32(&bytes, info.dtype).map_err(|e| e.context(format!("tensor `{name}`")))?;
        Ok((values, info.shape))
    }

    /// Tensor `name` on the host's compute device when the model has it there, else `None`
    /// (read [`Model::data`]); see [`StateDict::device_tensor`] for who owns it. A model made by a
    /// plugin built before this method existed answers `None`.
    pub fn device_tensor(&self, name: &str) -> Result<Option<GpuTensor>> {
        abi::device_tensor(&self.obj, name)
    }

    /// Names of auxiliary files carried with the model.
    pub fn file_names(&self) -> Result<Vec<String>> {
        self.obj
            .file_names()
            .into_result()
            .map(|v| v.into_iter().map(Into::into).collect())
    }

    /// The contents of one auxiliary file.
    pub fn file(&self, name: &str) -> Result<Vec<u8>> {
        self.obj
            .file(name.into())
            .into_result()
            .map(|v| v.into_vec())
    }

    /// Count tensors and parameters (elements) over the whole model.
    pub fn summary(&self) -> Result<ModelSummary> {
        let mut s = ModelSummary::default();
        for name in self.names()? {
            let info = self.info(&name)?;
            s.tensors += 1;
            s.parameters += info.numel() as u64;
            s.bytes += info.nbytes() as u64;
            *s.dtypes.entry(info.dtype.name().to_string()).or_default() += 1;
        }
        Ok(s)
    }
}

/// The auxiliary file that marks a [`Model`] as a report value (see [`Model::report_value`]).
pub const REPORT_VALUE_FILE: &str = "fusion-host-report-value.json";

impl Model {
    /// An entry of [`crate::Algorithm::run_models`] that is a value, not a model: the host puts
    /// it into the report where its name says, as it is, and neither saves nor evaluates it
    /// (FusionBench's `metadata` beside a dict of models, `{"models": {...}, "metadata": ...}`).
    /// It is a model without tensors whose one file, [`REPORT_VALUE_FILE`], holds the JSON.
    pub fn report_value(value: &serde_json::Value) -> Model {
        let mut sd = MemoryStateDict::new();
        sd.insert_file(REPORT_VALUE_FILE, value.to_string().into_bytes());
        Model::new(sd)
    }

    /// The value of an entry made by [`Model::report_value`]; `None` for a model.
    pub fn as_report_value(&self) -> Result<Option<serde_json::Value>> {
        if !self.names()?.is_empty() || !self.file_names()?.iter().any(|f| f == REPORT_VALUE_FILE) {
            return Ok(None);
        }
        let text = self.file(REPORT_VALUE_FILE)?;
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| Error::other(format!("a report value that is not JSON: {e}")))
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").finish_non_exhaustive()
    }
}

/// Tensor, parameter and byte counts of a model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelSummary {
    /// Number of tensors.
    pub tensors: u64,
    /// Number of elements over all tensors.
    pub parameters: u64,
    /// Bytes of tensor data.
    pub bytes: u64,
    /// Number of tensors per dtype name.
    pub dtypes: BTreeMap<String, u64>,
}

/// A state dict held in memory: the simplest way to return a computed model.
#[derive(Clone, Debug, Default)]
pub struct MemoryStateDict {
    order: Vec<String>,
    tensors: BTreeMap<String, (TensorInfo, Vec<u8>)>,
    files: BTreeMap<String, Vec<u8>>,
}

impl MemoryStateDict {
    /// An empty state dict.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add (or replace) a tensor from raw bytes, checking that the byte count matches.
    pub fn insert_bytes(
        &mut self,
        name: impl Into<String>,
        dtype: DType,
        shape: Vec<usize>,
        data: Vec<u8>,
    ) -> Result<()> {
        let name = name.into();
        let info = TensorInfo { dtype, shape };
        if info.nbytes() != data.len() {
            return Err(Error::model(format!(
                "tensor `{name}`: {} bytes given for {dtype} {:?} ({} expected)",
                data.len(),
                info.shape,
                info.nbytes()
            )));
        }
        if !self.tensors.contains_key(&name) {
            self.order.push(name.clone());
        }
        self.tensors.insert(name, (info, data));
        Ok(())
    }

    /// Add (or replace) an `f32` tensor, stored as `dtype` (f32, f16 or bf16).
    pub fn insert_f32(
        &mut self,
        name: impl Into<String>,
        shape: Vec<usize>,
        values: &[f32],
        dtype: DType,
    ) -> Result<()> {
        let name = name.into();
        let bytes =
            f32_to_bytes(values, dtype).map_err(|e| e.context(format!("tensor `{name}`")))?;
        self.insert_bytes(name, dtype, shape, bytes)
    }

    /// Attach an auxiliary file.
    pub fn insert_file(&mut self, name: impl Into<String>, contents: Vec<u8>) {
        self.files.insert(name.into(), contents);
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

impl StateDict for MemoryStateDict {
    fn names(&self) -> Result<Vec<String>> {
        Ok(self.order.clone())
    }
    fn info(&self, name: &str) -> Result<TensorInfo> {
        self.tensors
            .get(name)
            .map(|(i, _)| i.clone())
            .ok_or_else(|| Error::model(format!("no tensor named `{name}`")))
    }
    fn data(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        self.tensors
            .get(name)
            .map(|(_, d)| Cow::Borrowed(d.as_slice()))
            .ok_or_else(|| Error::model(format!("no tensor named `{name}`")))
    }
    fn file_names(&self) -> Result<Vec<String>> {
        Ok(self.files.keys().cloned().collect())
    }
    fn file(&self, name: &str) -> Result<Vec<u8>> {
        self.files
            .get(name)
            .cloned()
            .ok_or_else(|| Error::model(format!("the model has no file `{name}`")))
    }
}

/// Convert raw little-endian bytes of a float tensor to `f32`.
pub fn bytes_to_f32(bytes: &[u8], dtype: DType) -> Result<Vec<f32>> {
    // Chunks rather than a cast: memory-mapped tensor data need not be 4-byte aligned.
    Ok(match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("chunk of 8")) as f32)
            .collect(),
        other => return Err(Error::model(format!("cannot convert {other} to f32"))),
    })
}

/// Convert `f32` values to the raw little-endian bytes of `dtype` (f32, f16, bf16 or f64),
/// rounding to nearest even.
pub fn f32_to_bytes(values: &[f32], dtype: DType) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(values.len() * dtype.size());
    match dtype {
        DType::F32 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::F16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
        DType::BF16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
        DType::F64 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&(*v as f64).to_le_bytes())),
        other => return Err(Error::model(format!("cannot store f32 values as {other}"))),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{StateDictAbi, StateDictAbi_TO, TensorInfoAbi};
    use crate::ErrorKind;
    use abi_stable::sabi_trait::prelude::TD_Opaque;
    use abi_stable::std_types::{RArc, RCowSlice, RResult, RStr, RString, RVec};

    /// A state dict with one tensor on the device, one not, and one whose merge fails.
    struct OnDevice;

    impl StateDict for OnDevice {
        fn names(&self) -> Result<Vec<String>> {
            Ok(vec!["a".into(), "b".into(), "c".into()])
        }
        fn info(&self, _: &str) -> Result<TensorInfo> {
            Ok(TensorInfo {
                dtype: DType::F32,
                shape: vec![1],
            })
        }
        fn data(&self, _: &str) -> Result<Cow<'_, [u8]>> {
            Ok(Cow::Owned(vec![0; 4]))
        }
        fn file_names(&self) -> Result<Vec<String>> {
            Ok(vec!["config.json".into()])
        }
        fn file(&self, name: &str) -> Result<Vec<u8>> {
            match name {
                "config.json" => Ok(b"{}".to_vec()),
                _ => Err(Error::model(format!("the model has no file `{name}`"))),
            }
        }
        fn device_tensor(&self, name: &str) -> Result<Option<GpuTensor>> {
            match name {
                "a" => Ok(Some(GpuTensor(42))),
                "b" => Ok(None),
                _ => Err(Error::compute(format!("merging `{name}` failed"))),
            }
        }
    }

    /// A state dict as a library built before `device_tensor` hands it over: its `file` knows
    /// nothing of the request.
    #[derive(Clone)]
    struct Older;

    impl StateDictAbi for Older {
        fn names(&self) -> RResult<RVec<RString>, Error> {
            RResult::ROk(RVec::new())
        }
        fn info(&self, name: RStr<'_>) -> RResult<TensorInfoAbi, Error> {
            RResult::RErr(Error::model(format!("no tensor named `{name}`")))
        }
        fn data(&self, name: RStr<'_>) -> RResult<RCowSlice<'_, u8>, Error> {
            RResult::RErr(Error::model(format!("no tensor named `{name}`")))
        }
        fn file_names(&self) -> RResult<RVec<RString>, Error> {
            RResult::ROk(RVec::new())
        }
        fn file(&self, name: RStr<'_>) -> RResult<RVec<u8>, Error> {
            RResult::RErr(Error::model(format!("the model has no file `{name}`")))
        }
    }

    #[test]
    fn device_tensors_cross_the_boundary_and_older_state_dicts_have_none() {
        let m = Model::new(OnDevice);
        assert_eq!(m.device_tensor("a").unwrap(), Some(GpuTensor(42)));
        assert_eq!(m.device_tensor("b").unwrap(), None);
        let err = m.device_tensor("c").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Compute);
        assert!(err.message().contains("merging `c` failed"), "{err}");
        // Files are untouched by the request.
        assert_eq!(m.file_names().unwrap(), vec!["config.json".to_string()]);
        assert_eq!(m.file("config.json").unwrap(), b"{}".to_vec());
        // The trait's default, and a state dict from before the request: not on the device.
        let plain = Model::new(MemoryStateDict::new());
        assert_eq!(plain.device_tensor("a").unwrap(), None);
        let older = Model {
            obj: StateDictAbi_TO::from_ptr(RArc::new(Older), TD_Opaque),
        };
        assert_eq!(older.device_tensor("a").unwrap(), None);
    }

    /// A report value crosses as a model without tensors and comes back as the same JSON; a
    /// model (with tensors, or without the marker file) is not one.
    #[test]
    fn report_values_round_trip_and_models_are_not_values() {
        let value = serde_json::json!({"seed": 3, "lambdas": [0.2, 0.6], "note": null});
        let entry = Model::report_value(&value);
        assert!(entry.names().unwrap().is_empty());
        assert_eq!(entry.as_report_value().unwrap(), Some(value));
        assert_eq!(
            Model::report_value(&serde_json::Value::Null)
                .as_report_value()
                .unwrap(),
            Some(serde_json::Value::Null)
        );
        let mut sd = MemoryStateDict::new();
        sd.insert_f32("w", vec![2], &[1.0, 2.0], DType::F32)
            .unwrap();
        sd.insert_file(REPORT_VALUE_FILE, b"1".to_vec());
        assert_eq!(Model::new(sd).as_report_value().unwrap(), None);
        let mut sd = MemoryStateDict::new();
        sd.insert_file("config.json", b"{}".to_vec());
        assert_eq!(Model::new(sd).as_report_value().unwrap(), None);
    }

    /// The run's log folder travels in the context (an appended prefix field); a context made
    /// without one has none.
    #[test]
    fn the_context_carries_the_log_folder() {
        let ctx = crate::Context::local(Some(5), true, None);
        assert_eq!(ctx.log_dir(), None);
        let with = ctx.with_log_dir(std::path::Path::new("/runs/a b"));
        assert_eq!(with.log_dir(), Some(std::path::PathBuf::from("/runs/a b")));
        assert_eq!((with.seed(), with.fast_dev_run()), (Some(5), true));
    }
}
