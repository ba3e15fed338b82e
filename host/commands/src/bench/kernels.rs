//! Kernel figures through the public APIs of the kernel library (`fusion_kernels`) and its dense
//! ops (`fusion_kernels::nn`): memory bandwidth of a copy and of a weighted sum of four tensors (task arithmetic's
//! inner loop), and f32 matmul throughput.

use std::time::Instant;

use anyhow::Context as _;
use fusion_kernels::nn::{gemm_kernel, matmul, Matmul};
use fusion_plugin_api::kernel::DeviceTensor;
use fusion_plugin_api::{Compute, DType, GpuTensor};

use super::generate::Rng;
use super::{Figure, Sizes};

/// The median of `repeats` timed runs of `f` (after one untimed warm-up), in seconds; `f` must
/// wait for the device itself.
fn median_seconds(
    repeats: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn upload<'c>(
    c: &'c dyn Compute,
    shape: &[usize],
    rng: &mut Rng,
) -> anyhow::Result<DeviceTensor<'c>> {
    let n: usize = shape.iter().product();
    let data = rng.fill(n, 1.0);
    let t = c
        .create(DType::F32, shape, Some(bytemuck::cast_slice(&data)))
        .with_context(|| format!("uploading an f32 tensor {shape:?}"))?;
    Ok(DeviceTensor::adopt(c, t))
}

/// Copy and weighted-sum bandwidth (GB/s of bytes read and written).
pub fn bandwidth(c: &dyn Compute, sizes: &Sizes) -> anyhow::Result<Vec<Figure>> {
    let n = sizes.elements;
    let mut rng = Rng::new(1);
    let out = DeviceTensor::zeros(c, DType::F32, &[n])?;
    let inputs: Vec<DeviceTensor> = (0..4)
        .map(|_| upload(c, &[n], &mut rng))
        .collect::<anyhow::Result<_>>()?;
    let mut figures = Vec::new();
    for (name, count) in [("copy", 1usize), ("weighted_sum_4", 4)] {
        let weighted: Vec<(GpuTensor, f32)> =
            inputs[..count].iter().map(|t| (t.id(), 0.25)).collect();
        let secs = median_seconds(sizes.repeats, || {
            fusion_kernels::weighted_sum_into(c, &weighted, out.id())?;
            c.synchronize()?;
            Ok(())
        })?;
        let bytes = ((count + 1) * n * 4) as f64;
        figures.push(Figure {
            suite: "kernels".into(),
            name: name.into(),
            value: bytes / secs / 1e9,
            unit: "GB/s".into(),
            seconds: secs,
            detail: format!(
                "fusion_kernels::weighted_sum_into of {count} f32 tensor(s) of {n} elements; bytes read + written per second, median of {}",
                sizes.repeats
            ),
        });
    }
    Ok(figures)
}

/// f32 matmul GFLOP/s: `[m, k] x [k, m]^T` on the kernel the CLIP towers use on this device.
pub fn matmul_f32(c: &dyn Compute, sizes: &Sizes) -> anyhow::Result<Figure> {
    let m = sizes.matmul;
    let mut rng = Rng::new(2);
    let a = upload(c, &[m, m], &mut rng)?;
    let b = upload(c, &[m, m], &mut rng)?;
    let out = DeviceTensor::zeros(c, DType::F32, &[m, m])?;
    let mm = Matmul::linear(m, m, m);
    let kernel = gemm_kernel(c)?;
    let secs = median_seconds(sizes.repeats, || {
        matmul(c, a.id(), b.id(), None, out.id(), &mm)?;
        c.synchronize()?;
        Ok(())
    })?;
    let flops = 2.0 * (m as f64).powi(3);
    Ok(Figure {
        suite: "kernels".into(),
        name: "matmul_f32".into(),
        value: flops / secs / 1e9,
        unit: "GFLOP/s".into(),
        seconds: secs,
        detail: format!(
            "{m}x{m}x{m}, WGSL gemm kernel {} (fusion_kernels::nn::matmul), median of {}",
            kernel.name(),
            sizes.repeats
        ),
    })
}
