//! mergekit's methods on a compute device (`fusion-host mergekit --device cuda|gpu|vulkan|…`):
//! each output tensor is merged by the WGSL kernels of `fusion-kernels` from its inputs
//! uploaded one tensor at a time, then read back in the output dtype, so the device holds one
//! tensor's inputs and scratch at once, as the CPU path holds them in memory.
//!
//! On the device: `linear`, `task_arithmetic`, `ties`, `dare_ties`, `dare_linear`,
//! `breadcrumbs`, `breadcrumbs_ties`, `della`, `della_linear` (the task-arithmetic family step
//! by step in the CPU path's order, `fusion_kernels::mergekit`: the same f32 arithmetic, DARE's
//! and DELLA's draws from the same splitmix64 stream; DELLA's per-row ranks are counted per
//! element, O(row) each, for tensors within one storage binding), `slerp`, `nuslerp` (flattened, the default) and `model_stock` (whole
//! tensors, the default). Norms and dot products are f32 tree reductions on the device where
//! the CPU accumulates in f64, so SLERP's and model stock's coefficients may differ in the last
//! bits. TIES and breadcrumbs cut at a magnitude threshold where the CPU breaks ties of equal
//! magnitudes by position. Everything else — the other methods,
//! `dtype: float16` task arithmetic, embeddings re-mapped to another vocabulary or cut to a
//! common size, f64 inputs — is merged by the CPU path, and the log says so.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use fusion_kernels::mergekit as mk;
use fusion_plugin_api::{Compute, DType, DeviceTensor, Result, StateDict};

use crate::methods::{self, Method, Sparsify, Values};
use crate::{cpu, Merge, Planned};

/// A compute device lent to a merge.
pub(crate) struct Device {
    compute: Arc<dyn Compute>,
    /// Fallback reasons already logged at info level (each is logged once; later tensors at
    /// debug).
    said: Mutex<BTreeSet<String>>,
}

/// Whether `method` (with the method-wide parameters that decide it) has a device path.
pub(crate) fn supports(method: Method) -> bool {
    matches!(
        method,
        Method::Linear | Method::Slerp | Method::NuSlerp | Method::ModelStock | Method::Gta { .. }
    )
}

fn num(values: &Values, name: &str) -> Option<f64> {
    values.get(name).copied().flatten().map(|s| s.num())
}

fn flag(values: &Values, name: &str) -> bool {
    values
        .get(name)
        .copied()
        .flatten()
        .is_some_and(|s| s.flag())
}

fn bf16(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let b = x.to_bits();
    f32::from_bits(b.wrapping_add(0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000)
}

impl Device {
    pub(crate) fn new(compute: Arc<dyn Compute>, method: Method) -> Device {
        if method == Method::Linear && !mk::mk_fma_is_fused(&*compute).unwrap_or(true) {
            tracing::info!(
                "this device's fma rounds twice: a linear merge may differ from the CPU path's in the last bit of an f32"
            );
        }
        Device {
            compute,
            said: Mutex::new(BTreeSet::new()),
        }
    }

    /// The adapter's name.
    pub(crate) fn name(&self) -> String {
        self.compute.device_name()
    }

    /// Log once per reason that a tensor is merged on the CPU.
    fn fallback(&self, tensor: &str, reason: String) {
        let first = self
            .said
            .lock()
            .map_or(true, |mut s| s.insert(reason.clone()));
        if first {
            tracing::info!(
                tensor,
                "merged on the CPU: {reason} (later tensors for the same reason: debug log)"
            );
        } else {
            tracing::debug!(tensor, "merged on the CPU: {reason}");
        }
    }

    /// Tensor `t` merged on the device, as bytes of its output dtype; `None` where the CPU path
    /// must merge it (logged).
    pub(crate) fn merge(&self, m: &Merge, t: &Planned) -> Result<Option<Vec<u8>>> {
        match self.why_not(m, t)? {
            Some(reason) => {
                self.fallback(&t.name, reason);
                Ok(None)
            }
            None => self.run(m, t).map(Some),
        }
    }

    /// Why `t` cannot be merged on the device, if it cannot.
    fn why_not(&self, m: &Merge, t: &Planned) -> Result<Option<String>> {
        let method = m.spec.method;
        if !supports(method) {
            return Ok(Some(format!(
                "merge_method `{}` has no device kernels",
                m.spec.name
            )));
        }
        if m.compute_dtype == Some(DType::F16) {
            return Ok(Some("`dtype: float16` has no device rounding".into()));
        }
        if t.vocab {
            return Ok(Some(
                "embedding rows re-mapped to the output vocabulary".into(),
            ));
        }
        for (i, name) in &t.inputs {
            let info = m.models[*i].checkpoint.info(name)?;
            if info.shape != t.info.shape {
                return Ok(Some("inputs of different shapes (embedding sizes)".into()));
            }
            if !matches!(info.dtype, DType::F32 | DType::F16 | DType::BF16) {
                return Ok(Some(format!("{} inputs", info.dtype)));
            }
        }
        let others = (0..t.inputs.len()).filter(|&i| Some(i) != t.base).count();
        // Shapes of the job the CPU path handles (or refuses) on its own terms.
        let plain = match method {
            Method::Linear => true,
            Method::Gta { sparsify, .. } => {
                let n: u64 = t.info.shape.iter().map(|&d| d as u64).product();
                if sparsify == Sparsify::DellaMagprune && !mk::mk_della_fits(&*self.compute, n) {
                    return Ok(Some("della on a tensor past one storage binding".into()));
                }
                t.base.is_some() && others > 0
            }
            Method::Slerp => t.base.is_some() && t.inputs.len() == 2,
            Method::NuSlerp => {
                others == 2 && (flag(&t.global, "nuslerp_flatten") || t.info.shape.len() <= 1)
            }
            Method::ModelStock => {
                let n: usize = t.info.shape.iter().product();
                let row = t.info.shape.last().copied().unwrap_or(n);
                t.base.is_some() && others >= 2 && (!flag(&t.global, "filter_wise") || row == n)
            }
            _ => false,
        };
        Ok((!plain).then(|| {
            format!(
                "`{}` with these inputs or parameters runs on the CPU only",
                m.spec.name
            )
        }))
    }

    /// Upload input `k` of `t` as f32, rounded to the config's `dtype` as the CPU path reads it.
    fn upload<'c>(&'c self, m: &Merge, t: &Planned, k: usize) -> Result<DeviceTensor<'c>> {
        let c: &dyn Compute = &*self.compute;
        let (i, name) = &t.inputs[k];
        let ck = &m.models[*i].checkpoint;
        let info = ck.info(name)?;
        let ctx = |e: fusion_plugin_api::Error| {
            e.context(format!("model `{}`, tensor `{name}`", m.models[*i].name))
        };
        let raw =
            DeviceTensor::from_bytes(c, info.dtype, &info.shape, &ck.data(name)?).map_err(ctx)?;
        let mut x = if info.dtype == DType::F32 {
            raw
        } else {
            DeviceTensor::adopt(c, fusion_kernels::convert(c, raw.id(), DType::F32)?)
        };
        if let Some(d @ DType::BF16) = m.compute_dtype {
            if info.dtype != d {
                let r = DeviceTensor::adopt(c, fusion_kernels::convert(c, x.id(), d)?);
                x = DeviceTensor::adopt(c, fusion_kernels::convert(c, r.id(), DType::F32)?);
            }
        }
        Ok(x)
    }

    fn run(&self, m: &Merge, t: &Planned) -> Result<Vec<u8>> {
        let c: &dyn Compute = &*self.compute;
        let out = match m.spec.method {
            Method::Linear => self.linear(m, t)?,
            Method::Gta {
                consensus,
                sparsify,
            } => self.gta(m, t, consensus, sparsify)?,
            Method::Slerp => self.slerp(m, t)?,
            Method::NuSlerp => self.nuslerp(m, t)?,
            Method::ModelStock => self.model_stock(m, t)?,
            other => unreachable!("{other:?} is checked in why_not"),
        };
        let out = out.map_err(|e| e.context(m.spec.name))?;
        // Read back in the output dtype (the device rounds 16-bit outputs to nearest even, as
        // the CPU path's encoder does).
        let dtype = t.info.dtype;
        match dtype {
            DType::F32 => out.to_bytes(),
            DType::F16 | DType::BF16 => {
                DeviceTensor::adopt(c, fusion_kernels::convert(c, out.id(), dtype)?).to_bytes()
            }
            _ => cpu::encode(&out.to_f32()?, dtype),
        }
    }
}

/// A method's result: the merged f32 tensor, or an error of the method (given its name).
type Merged<'c> = Result<DeviceTensor<'c>>;

impl Device {
    /// `linear.py` as `methods::linear`: `acc = fma(x, w, acc)` per input in order, then the
    /// division by Σw.
    fn linear<'c>(&'c self, m: &Merge, t: &Planned) -> Result<Merged<'c>> {
        let c: &dyn Compute = &*self.compute;
        let job = t.job(None);
        let (w, divisor) = match methods::linear_weights(&job, t.inputs.len()) {
            Ok(x) => x,
            Err(e) => return Ok(Err(e)),
        };
        let acc = DeviceTensor::zeros(c, DType::F32, &t.info.shape)?;
        for (k, &wk) in w.iter().enumerate() {
            let x = self.upload(m, t, k)?;
            mk::mk_axpy(c, acc.id(), x.id(), wk)?;
        }
        if let Some(total) = divisor {
            mk::mk_div(c, acc.id(), total)?;
        }
        Ok(Ok(acc))
    }

    /// `generalized_task_arithmetic.py` as `methods::gta`: task vectors, sparsified, weighted,
    /// the sign election over their sum, the agreeing (or all) summed, normalised, λ, the base;
    /// each step rounded to bfloat16 under `dtype: bfloat16`.
    fn gta<'c>(
        &'c self,
        m: &Merge,
        t: &Planned,
        consensus: bool,
        sparsify: Sparsify,
    ) -> Result<Merged<'c>> {
        let c: &dyn Compute = &*self.compute;
        let round = m.compute_dtype == Some(DType::BF16);
        let q = |x: f32| if round { bf16(x) } else { x };
        let b = t.base.expect("checked in why_not");
        let base = self.upload(m, t, b)?;
        let shape = &t.info.shape;
        let n: usize = shape.iter().product();
        let rescale = flag(&t.global, "rescale");
        let votes = DeviceTensor::zeros(c, DType::F32, shape)?;
        let mut weighted = Vec::new();
        let mut weights = Vec::new();
        for k in (0..t.inputs.len()).filter(|&k| k != b) {
            let p = &t.per_model[k];
            let Some(weight) = num(p, "weight") else {
                return Ok(Err(fusion_plugin_api::Error::config(format!(
                    "no `weight` for input {k} of tensor `{}`",
                    t.name
                ))));
            };
            let x = self.upload(m, t, k)?;
            let mut d = DeviceTensor::adopt(c, mk::mk_delta(c, x.id(), base.id(), round)?);
            drop(x);
            let density = num(p, "density").unwrap_or(1.0);
            let mut s = 1f32;
            if sparsify != Sparsify::None && density < 1.0 {
                let before = if rescale {
                    f64::from(mk::mk_abs_sum(c, d.id())?)
                } else {
                    0.0
                };
                match sparsify {
                    Sparsify::Magnitude => {
                        if density <= 0.0 || n == 0 {
                            d = DeviceTensor::zeros(c, DType::F32, shape)?;
                        } else {
                            let keep = ((density * n as f64) as usize).max(1) as u64;
                            let thr = fusion_kernels::kth_largest_magnitude(c, &[d.id()], keep)?;
                            d = DeviceTensor::adopt(
                                c,
                                fusion_kernels::magnitude_band(c, d.id(), thr, None, DType::F32)?,
                            );
                        }
                    }
                    Sparsify::MagnitudeOutliers => {
                        // Ascending ranks [n_bot, n − n_top) as mergekit 0.1.5 keeps them.
                        let gamma = num(p, "gamma").unwrap_or(0.0);
                        let (n_bot, n_top) =
                            fusion_kernels::breadcrumbs_counts(n as u64, density, gamma);
                        let n = n as u64;
                        let end = (n - n_top).max(n_bot);
                        if end == n_bot || n == 0 {
                            d = DeviceTensor::zeros(c, DType::F32, shape)?;
                        } else {
                            let lower = if n_bot == 0 {
                                0.0
                            } else {
                                fusion_kernels::kth_largest_magnitude(c, &[d.id()], n - n_bot)?
                            };
                            let upper = if n_top == 0 {
                                None
                            } else {
                                Some(fusion_kernels::kth_largest_magnitude(c, &[d.id()], n_top)?)
                            };
                            d = DeviceTensor::adopt(
                                c,
                                fusion_kernels::magnitude_band(
                                    c,
                                    d.id(),
                                    lower,
                                    upper,
                                    DType::F32,
                                )?,
                            );
                        }
                    }
                    Sparsify::Random => {
                        mk::mk_random_keep(c, d.id(), t.random_keys[k], density)?;
                    }
                    Sparsify::DellaMagprune => {
                        let epsilon = num(p, "epsilon").unwrap_or(0.0);
                        if density <= 0.0 {
                            // No rescale of an empty mask (as the CPU path).
                            d = DeviceTensor::zeros(c, DType::F32, shape)?;
                            weighted.push(d);
                            weights.push(q(weight as f32));
                            continue;
                        }
                        if density + epsilon >= 1.0 || density - epsilon <= 0.0 {
                            return Ok(Err(fusion_plugin_api::Error::config(format!(
                                "della: `epsilon` {epsilon} must keep density ± epsilon inside (0, 1) (density {density})"
                            ))));
                        }
                        // Ranks within each row (a vector is one row), as the CPU path.
                        let row = if shape.len() < 2 { n } else { n / shape[0] };
                        let row = row.max(1);
                        let p_of = |rank: usize| {
                            let norm = if row > 1 {
                                rank as f64 / (row - 1) as f64
                            } else {
                                0.5
                            };
                            density - epsilon + norm * 2.0 * epsilon
                        };
                        d = DeviceTensor::adopt(
                            c,
                            mk::mk_della_keep(c, d.id(), row, t.random_keys[k], p_of)?,
                        );
                    }
                    Sparsify::None => unreachable!("checked above"),
                }
                if rescale {
                    let after = f64::from(mk::mk_abs_sum(c, d.id())?);
                    if before >= 1e-7 && after >= 1e-7 {
                        s = (before / after) as f32;
                    }
                }
            }
            let w = q(weight as f32);
            mk::mk_scale(c, d.id(), s, w, round)?;
            if consensus {
                mk::mk_add(c, votes.id(), d.id())?;
            }
            weighted.push(d);
            weights.push(w);
        }
        let mixed = DeviceTensor::zeros(c, DType::F32, shape)?;
        let div = DeviceTensor::zeros(c, DType::F32, shape)?;
        for (d, &w) in weighted.iter().zip(&weights) {
            mk::mk_agree_add(c, mixed.id(), div.id(), votes.id(), d.id(), w, consensus)?;
        }
        drop(weighted);
        let how = mk::MkFinish {
            normalize: flag(&t.global, "normalize"),
            consensus,
            total: q(weights.iter().sum()),
            lambda: num(&t.global, "lambda").unwrap_or(0.0) as f32,
            round,
        };
        mk::mk_finish(c, mixed.id(), base.id(), div.id(), &how)?;
        Ok(Ok(mixed))
    }

    /// `slerp.py` as `methods::slerp`, with `fusion_kernels::slerp` (norms and dot in f32).
    fn slerp<'c>(&'c self, m: &Merge, t: &Planned) -> Result<Merged<'c>> {
        let c: &dyn Compute = &*self.compute;
        let b = t.base.expect("checked in why_not");
        let v0 = self.upload(m, t, b)?;
        let v1 = self.upload(m, t, 1 - b)?;
        let tt = num(&t.global, "t").unwrap_or(0.0);
        Ok(Ok(DeviceTensor::adopt(
            c,
            fusion_kernels::slerp(c, v0.id(), v1.id(), tt, DType::F32)?,
        )))
    }

    /// `nuslerp.py` over the flattened tensor, as `methods::nuslerp`.
    fn nuslerp<'c>(&'c self, m: &Merge, t: &Planned) -> Result<Merged<'c>> {
        let c: &dyn Compute = &*self.compute;
        let others: Vec<usize> = (0..t.inputs.len()).filter(|&k| Some(k) != t.base).collect();
        let (Some(wa), Some(wb)) = (
            num(&t.per_model[others[0]], "weight"),
            num(&t.per_model[others[1]], "weight"),
        ) else {
            return Ok(Err(fusion_plugin_api::Error::config(format!(
                "no `weight` for a model of tensor `{}`",
                t.name
            ))));
        };
        let tt = if (wa + wb).abs() < 1e-6 {
            0.5
        } else {
            wb / (wa + wb)
        };
        let base = t.base.map(|b| self.upload(m, t, b)).transpose()?;
        let vector = |k: usize| -> Result<DeviceTensor<'_>> {
            let x = self.upload(m, t, k)?;
            Ok(match &base {
                Some(b) => DeviceTensor::adopt(c, mk::mk_delta(c, x.id(), b.id(), false)?),
                None => x,
            })
        };
        let (va, vb) = (vector(others[0])?, vector(others[1])?);
        let nx = f64::from(fusion_kernels::l2_norm(c, va.id())?).max(1e-7);
        let ny = f64::from(fusion_kernels::l2_norm(c, vb.id())?).max(1e-7);
        let cos =
            (f64::from(fusion_kernels::dot(c, va.id(), vb.id())?) / (nx * ny)).clamp(-1.0, 1.0);
        let (p, q) = if 1.0 - cos * cos <= 1e-16 {
            (1.0 - tt, tt)
        } else {
            let theta = cos.acos();
            let sin = theta.sin();
            (((1.0 - tt) * theta).sin() / sin, (tt * theta).sin() / sin)
        };
        let r = DeviceTensor::adopt(
            c,
            fusion_kernels::weighted_sum(
                c,
                &[(va.id(), p as f32), (vb.id(), q as f32)],
                DType::F32,
            )?,
        );
        if let Some(b) = &base {
            mk::mk_add(c, r.id(), b.id())?;
        }
        Ok(Ok(r))
    }

    /// `model_stock.py` over whole tensors, as `methods::model_stock`.
    fn model_stock<'c>(&'c self, m: &Merge, t: &Planned) -> Result<Merged<'c>> {
        let c: &dyn Compute = &*self.compute;
        let b = t.base.expect("checked in why_not");
        let base = self.upload(m, t, b)?;
        let acc = DeviceTensor::zeros(c, DType::F32, &t.info.shape)?;
        let mut offsets = Vec::new();
        for k in (0..t.inputs.len()).filter(|&k| k != b) {
            let x = self.upload(m, t, k)?;
            mk::mk_add(c, acc.id(), x.id())?;
            offsets.push(DeviceTensor::adopt(
                c,
                mk::mk_delta(c, x.id(), base.id(), false)?,
            ));
        }
        let k = offsets.len();
        let norms: Vec<f64> = offsets
            .iter()
            .map(|o| fusion_kernels::l2_norm(c, o.id()).map(f64::from))
            .collect::<Result<_>>()?;
        let mut cos_sum = 0f64;
        let mut pairs = 0usize;
        for i in 0..k {
            for j in i + 1..k {
                let dot = f64::from(fusion_kernels::dot(c, offsets[i].id(), offsets[j].id())?);
                cos_sum += (dot / (norms[i] * norms[j]).max(1e-6)).clamp(-1.0, 1.0);
                pairs += 1;
            }
        }
        drop(offsets);
        let cos = cos_sum / pairs as f64;
        let den = 1.0 + (k as f64 - 1.0) * cos;
        let tt = if den.abs() < 1e-6 {
            0.0
        } else {
            (k as f64 * cos) / den
        };
        let t32 = tt as f32;
        mk::mk_div(c, acc.id(), k as f32)?;
        Ok(Ok(DeviceTensor::adopt(
            c,
            fusion_kernels::weighted_sum(
                c,
                &[(acc.id(), t32), (base.id(), 1.0 - t32)],
                DType::F32,
            )?,
        )))
    }
}

/// The device path against the CPU path and mergekit's own output (the golden fixtures,
/// `tests/data/mergekit-tiny`) on a real adapter: Mesa lavapipe here, `FUSION_DEVICE` picks
/// another.
#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::sync::OnceLock;

    use fusion_gpu::{DeviceChoice, Runtime, RuntimeOptions};
    use fusion_plugin_api::bytes_to_f32;

    use super::*;
    use crate::Options;

    fn compute() -> Arc<dyn Compute> {
        static RT: OnceLock<Arc<Runtime>> = OnceLock::new();
        RT.get_or_init(|| {
            let choice: DeviceChoice = std::env::var("FUSION_DEVICE")
                .map_or(DeviceChoice::Cpu, |s| s.parse().expect("FUSION_DEVICE"));
            Arc::new(Runtime::new(&choice, RuntimeOptions::default()).unwrap_or_else(|e| {
                panic!("device tests need a wgpu adapter (Mesa lavapipe: apt-get install mesa-vulkan-drivers): {e}")
            }))
        })
        .clone()
    }

    fn data() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../tests/data/mergekit-tiny")
    }

    fn config_text(case: &str) -> String {
        let text = std::fs::read_to_string(data().join(format!("configs/{case}.yaml"))).unwrap();
        text.replace("models/", &format!("{}/models/", data().display()))
    }

    fn tensors(model: &fusion_plugin_api::Model) -> BTreeMap<String, Vec<f32>> {
        model
            .names()
            .unwrap()
            .into_iter()
            .map(|name| {
                let info = model.info(&name).unwrap();
                let values = bytes_to_f32(&model.data(&name).unwrap(), info.dtype).unwrap();
                (name, values)
            })
            .collect()
    }

    /// How the device output of a config compares with the CPU's: entries, entries that
    /// differ, the largest difference relative to the CPU value's magnitude (at least 1).
    #[derive(Debug)]
    struct Diff {
        total: usize,
        differing: usize,
        worst: f32,
    }

    fn compare(text: &str, options: &Options) -> Diff {
        let cpu = tensors(&Merge::from_yaml(text, options).unwrap().model());
        let dev = tensors(
            &Merge::from_yaml(text, options)
                .unwrap()
                .with_device(compute())
                .model(),
        );
        assert_eq!(
            cpu.keys().collect::<Vec<_>>(),
            dev.keys().collect::<Vec<_>>()
        );
        let mut d = Diff {
            total: 0,
            differing: 0,
            worst: 0.0,
        };
        for (name, want) in &cpu {
            let got = &dev[name];
            assert_eq!(got.len(), want.len(), "{name}");
            for (g, w) in got.iter().zip(want) {
                d.total += 1;
                if g.to_bits() != w.to_bits() {
                    assert!(g.is_finite(), "{name}: {g} where the CPU has {w}");
                    d.differing += 1;
                    d.worst = d.worst.max((g - w).abs() / w.abs().max(1.0));
                }
            }
        }
        d
    }

    /// The device output of golden `case` against mergekit's tensors: the largest absolute
    /// difference.
    fn golden_diff(case: &str) -> f32 {
        let dev = tensors(
            &Merge::from_yaml(&config_text(case), &Options::default())
                .unwrap()
                .with_device(compute())
                .model(),
        );
        let bytes =
            std::fs::read(data().join(format!("expected/{case}/model.safetensors"))).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut worst = 0f32;
        for (name, view) in st.tensors() {
            let dtype = match view.dtype() {
                safetensors::Dtype::F32 => DType::F32,
                safetensors::Dtype::BF16 => DType::BF16,
                other => panic!("{name}: {other:?}"),
            };
            let want = bytes_to_f32(view.data(), dtype).unwrap();
            for (g, w) in dev[&name].iter().zip(&want) {
                worst = worst.max((g - w).abs());
            }
        }
        worst
    }

    /// Each golden case merged on the device equals the CPU path bit for bit (`exact`), or
    /// differs in at most `max_differing` entries by at most `rel` (relative, at least 1), and
    /// matches mergekit's tensors within the CPU path's golden tolerance `golden`.
    macro_rules! device_golden {
        ($($case:ident: max_differing $n:expr, rel $rel:expr, golden $golden:expr;)*) => {$(
            #[test]
            fn $case() {
                let case = stringify!($case);
                let d = compare(&config_text(case), &Options::default());
                eprintln!("{case}: {d:?}");
                assert!(
                    d.differing <= $n && d.worst <= $rel,
                    "{case}: {} of {} entries differ from the CPU path (at most {} allowed), worst {:e}",
                    d.differing, d.total, $n, d.worst
                );
                let g = golden_diff(case);
                eprintln!("{case}: device vs mergekit max abs diff {g:e}");
                assert!(g <= $golden, "{case}: device vs mergekit {g:e} > {:e}", $golden);
            }
        )*};
    }

    // One bf16 ulp relative (2^-8) is the bound where the arithmetic order differs.
    const BF16_ULP: f32 = 1.0 / 256.0;

    /// Whether the device's `fma` is fused (see `mk_fma_is_fused`).
    fn fused() -> bool {
        static FUSED: OnceLock<bool> = OnceLock::new();
        *FUSED.get_or_init(|| {
            let f = mk::mk_fma_is_fused(&*compute()).unwrap();
            eprintln!("device fma fused: {f}");
            f
        })
    }

    /// `exact` on a device whose `fma` is fused, else `otherwise` (linear's `fma(x, w, acc)`
    /// is then rounded twice: at most an f32 ulp off per input).
    fn if_fused<T>(exact: T, otherwise: T) -> T {
        if fused() {
            exact
        } else {
            otherwise
        }
    }

    device_golden! {
        linear: max_differing if_fused(0, 15_000), rel if_fused(0.0, 3e-7), golden 1e-6;
        linear_gradient: max_differing if_fused(0, 15_000), rel if_fused(0.0, 3e-7), golden 1e-6;
        slices_linear: max_differing if_fused(0, 15_000), rel if_fused(0.0, 3e-7), golden 1e-6;
        // bfloat16 out: an f32 ulp may cross a bf16 rounding boundary.
        extra_linear_bf16: max_differing if_fused(0, 100), rel if_fused(0.0, BF16_ULP), golden if_fused(0.0, 0.008);
        task_arithmetic: max_differing 0, rel 0.0, golden 1e-6;
        extra_task_arithmetic_filters: max_differing 0, rel 0.0, golden 1e-6;
        extra_task_arithmetic_slices: max_differing 0, rel 0.0, golden 1e-6;
        ties: max_differing 0, rel 0.0, golden 1e-6;
        extra_ties_unnormalized: max_differing 0, rel 0.0, golden 1e-6;
        breadcrumbs_ties: max_differing 0, rel 0.0, golden 1e-6;
        extra_breadcrumbs: max_differing 0, rel 0.0, golden 1e-6;
        extra_dare_ties_full_density: max_differing 0, rel 0.0, golden 1e-6;
        slerp: max_differing 10_000, rel BF16_ULP, golden 1e-6;
        nuslerp: max_differing 10_000, rel BF16_ULP, golden 1e-6;
        model_stock: max_differing 10_000, rel BF16_ULP, golden 1e-6;
        // Row-wise nuslerp and filter-wise model stock run on the CPU except for 1-D tensors
        // (one row: the whole-tensor kernels); karcher runs on the CPU.
        extra_nuslerp_row_wise: max_differing 1_000, rel BF16_ULP, golden 1e-6;
        extra_model_stock_filter_wise: max_differing 1_000, rel BF16_ULP, golden 1e-6;
        karcher: max_differing 0, rel 0.0, golden 1e-6;
    }

    /// TIES computed in bfloat16 (every step rounded): the device rounds as the CPU does; the
    /// top-k cut keeps every entry equal to the k-th magnitude where the CPU breaks ties by
    /// position, so entries in runs of equal bf16 magnitudes at the cut may differ.
    #[test]
    fn extra_ties_bf16() {
        let d = compare(&config_text("extra_ties_bf16"), &Options::default());
        eprintln!("extra_ties_bf16: {d:?}");
        assert!(d.differing * 200 <= d.total, "{d:?}");
    }

    fn dare_config(method: &str, density: f64) -> String {
        format!(
            "merge_method: {method}\nbase_model: models/base\ndtype: float32\nmodels:\n\
             - model: models/math\n  parameters: {{weight: 0.8, density: {density}}}\n\
             - model: models/code\n  parameters: {{weight: 0.6, density: {density}}}\n\
             - model: models/chat\n  parameters: {{weight: 0.4, density: {density}}}\n"
        )
        .replace("models/", &format!("{}/models/", data().display()))
    }

    /// DARE draws the CPU path's splitmix64 stream on the device: the same keeps, so the same
    /// tensors up to the L1 rescale factor (an f32 sum on the device, f64 on the CPU: at most
    /// an ulp or two), for every seed; another seed gives another merge.
    #[test]
    fn dare_on_the_device_draws_the_cpu_paths_keeps() {
        for method in ["dare_ties", "dare_linear"] {
            for seed in [0u64, 7] {
                let options = Options {
                    random_seed: seed,
                    ..Options::default()
                };
                let d = compare(&dare_config(method, 0.3), &options);
                eprintln!("{method} seed {seed}: {d:?}");
                assert!(d.worst <= 4.0 * f32::EPSILON, "{method} seed {seed}: {d:?}");
            }
        }
        // Reproducible per seed, different across seeds.
        let text = dare_config("dare_linear", 0.3);
        let run = |seed| {
            let options = Options {
                random_seed: seed,
                ..Options::default()
            };
            tensors(
                &Merge::from_yaml(&text, &options)
                    .unwrap()
                    .with_device(compute())
                    .model(),
            )
        };
        let (a, b, c) = (run(3), run(3), run(4));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    /// DELLA ranks each row on the device and draws the CPU path's stream: the same keeps, so
    /// the same tensors up to the L1 rescale factor, for every seed.
    #[test]
    fn della_on_the_device_draws_the_cpu_paths_keeps() {
        for method in ["della", "della_linear"] {
            for seed in [0u64, 5] {
                let options = Options {
                    random_seed: seed,
                    ..Options::default()
                };
                let text = dare_config(method, 0.4)
                    .replace("density: 0.4}", "density: 0.4, epsilon: 0.2}");
                let d = compare(&text, &options);
                eprintln!("{method} seed {seed}: {d:?}");
                assert!(d.worst <= 4.0 * f32::EPSILON, "{method} seed {seed}: {d:?}");
            }
        }
    }

    /// The splitmix64 keep on the device against the CPU's draws, element by element, over
    /// sizes around the workgroup size.
    #[test]
    fn random_keep_matches_the_cpu_stream() {
        let c = compute();
        let c: &dyn Compute = &*c;
        for (n, key, density) in [
            (1usize, 1u64, 0.5f64),
            (255, u64::MAX - 3, 0.1),
            (257, 0x1234_5678_9abc_def0, 0.9),
            (100_003, 42, 0.3),
        ] {
            let ones = vec![1f32; n];
            let x = DeviceTensor::from_f32(c, &[n], &ones).unwrap();
            mk::mk_random_keep(c, x.id(), key, density).unwrap();
            let got = x.to_f32().unwrap();
            let want: Vec<f32> = (0..n as u64)
                .map(|i| f32::from(u8::from(mk::mk_random_draw(key, i) < density)))
                .collect();
            assert_eq!(got, want, "n {n}, key {key:#x}, density {density}");
            let kept = got.iter().filter(|v| **v == 1.0).count() as f64 / n as f64;
            if n > 10_000 {
                assert!(
                    (kept - density).abs() < 0.01,
                    "kept {kept} of density {density}"
                );
            }
        }
    }

    /// On a device whose storage bindings hold 1024 f32 (and 4 workgroups per dimension), every
    /// kernel runs chunk by chunk (DARE's draws from each chunk's global offset): the same
    /// results as on the full device; DELLA's larger tensors fall back to the CPU.
    #[test]
    fn chunked_launches_give_the_same_merges() {
        let clamped: Arc<dyn Compute> = Arc::new(
            Runtime::new(
                &std::env::var("FUSION_DEVICE")
                    .map_or(DeviceChoice::Cpu, |s| s.parse().expect("FUSION_DEVICE")),
                RuntimeOptions {
                    clamp: fusion_gpu::LimitClamp {
                        max_storage_binding_size: Some(4096),
                        max_workgroups_per_dimension: Some(4),
                        max_invocations_per_workgroup: Some(32),
                        min_storage_offset_alignment: Some(256),
                        ..Default::default()
                    },
                    unified_memory: Some(false),
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        let run = |text: &str, c: Arc<dyn Compute>| {
            tensors(
                &Merge::from_yaml(text, &Options::default())
                    .unwrap()
                    .with_device(c)
                    .model(),
            )
        };
        let texts = [
            config_text("ties"),
            config_text("extra_ties_bf16"),
            config_text("breadcrumbs_ties"),
            config_text("linear"),
            config_text("slerp"),
            dare_config("dare_ties", 0.3),
            dare_config("della", 0.4).replace("density: 0.4}", "density: 0.4, epsilon: 0.2}"),
        ];
        for text in &texts {
            let (full, small) = (run(text, compute()), run(text, clamped.clone()));
            for (name, want) in &full {
                let got = &small[name];
                let differing = got.iter().zip(want).filter(|(g, w)| g != w).count();
                // Slerp's norms and dot products sum in another order across chunks; the
                // rescale factors of DARE/DELLA likewise.
                let tolerated =
                    if text.contains("slerp") || text.contains("dare") || text.contains("della") {
                        got.iter()
                            .zip(want)
                            .all(|(g, w)| (g - w).abs() <= 4.0 * f32::EPSILON * w.abs().max(1.0))
                    } else {
                        differing == 0
                    };
                assert!(
                    tolerated,
                    "{name}: {differing} entries differ between chunked and whole launches\n{text}"
                );
            }
        }
    }

    /// Methods without device kernels give the CPU path's bytes (they run there).
    #[test]
    fn methods_without_kernels_fall_back_to_the_cpu() {
        for case in ["sce", "nearswap", "ram", "multislerp"] {
            let d = compare(&config_text(case), &Options::default());
            assert_eq!(d.differing, 0, "{case}: {d:?}");
        }
    }
}
