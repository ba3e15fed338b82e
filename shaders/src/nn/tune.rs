//! Kernels chosen per adapter: what the device can run (a subgroup probe) and which [`Gemm`]
//! variant is fastest on it, measured on first use and cached as JSON in the cache folder.
//!
//! The choice for a device, in order:
//! 0. the run's configured override ([`set_gemm_override`]: the task pool's `gemm_kernel` key);
//! 1. the override `FUSION_GEMM=registers|tiled8|tiled16|subgroup` (`auto` or unset: go on);
//! 2. the cache file `kernel-tuning.json` in the cache folder (`FUSION_CACHE_DIR`, else
//!    `$XDG_CACHE_HOME/fusion-host`, else `~/.cache/fusion-host`), keyed by the adapter's name,
//!    backend and driver (as [`Compute::device_name`] reports them) and device type, then the
//!    kernel family (`gemm`);
//! 3. else every variant the device runs is timed on a 256 x 256 x 256 product and the fastest
//!    is kept and written to the cache (`FUSION_GEMM_TUNE=0` skips the timing and takes the
//!    default: registers on software adapters, 16 x 16 tiles elsewhere).
//!
//! The answer is also kept in memory per device for the life of the process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use fusion_plugin_api::{Binding, Compute, DType, DeviceTensor, KernelCall};

use super::{gemm_with, Gemm, GemmKernel, NnError, Result};
use crate::wgsl::nn;

/// The name of the cache file in the cache folder.
pub const TUNING_FILE: &str = "kernel-tuning.json";

/// The side of the square product the tuner times.
pub const TUNING_SIZE: usize = 256;

/// The key a device's choices are cached under: adapter name, backend and driver
/// ([`Compute::device_name`]) and device type.
pub fn device_key(c: &dyn Compute) -> String {
    format!("{} [{:?}]", c.device_name(), c.device_type())
}

fn memo<V: Clone>(
    cell: &'static OnceLock<Mutex<HashMap<String, V>>>,
    key: String,
    make: impl FnOnce() -> Result<V>,
) -> Result<V> {
    let map = cell.get_or_init(Default::default);
    if let Some(v) = map.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(v.clone());
    }
    let v = make()?;
    map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, v.clone());
    Ok(v)
}

/// The device's subgroup width when subgroup operations work on it (wgpu's `SUBGROUP` feature,
/// checked by running `ext/subgroup_probe.wgsl` once per device), else `None`.
pub fn subgroup_size(c: &dyn Compute) -> Option<u32> {
    static PROBES: OnceLock<Mutex<HashMap<String, Option<u32>>>> = OnceLock::new();
    memo(&PROBES, device_key(c), || Ok(probe_subgroups(c))).unwrap_or(None)
}

fn probe_subgroups(c: &dyn Compute) -> Option<u32> {
    let out = DeviceTensor::zeros(c, DType::U32, &[4]).ok()?;
    let call = KernelCall {
        label: "nn_subgroup_probe",
        source: nn::SUBGROUP_PROBE,
        entry_point: "subgroup_probe",
        constants: &[],
        bindings: &[Binding::write(out.id())],
        uniforms: &[],
        workgroups: [1, 1, 1],
    };
    if let Err(e) = c.dispatch(&call) {
        tracing::debug!(device = %c.device_name(), error = %e, "no subgroup operations");
        return None;
    }
    let bytes = c.read(out.id()).ok()?;
    let v: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let (size, total, count) = (v[0], v[1], v[2]);
    let ok = size.is_power_of_two() && size <= 128 && total == size.min(64) && count >= 1;
    tracing::debug!(device = %c.device_name(), size, total, count, ok, "subgroup probe");
    ok.then_some(size)
}

/// Whether the cooperative-matrix gemm (`ext/gemm_coop.wgsl`) runs on this device and gets a
/// small product right: a 16 x 24 x 40 product of small integers (exact in f16 and f32),
/// checked once per device. `false` where the device lacks wgpu's
/// `EXPERIMENTAL_COOPERATIVE_MATRIX` (the source is rejected), lavapipe included.
pub fn cooperative_matrix_available(c: &dyn Compute) -> bool {
    static PROBES: OnceLock<Mutex<HashMap<String, bool>>> = OnceLock::new();
    memo(&PROBES, device_key(c), || Ok(probe_cooperative(c))).unwrap_or(false)
}

fn probe_cooperative(c: &dyn Compute) -> bool {
    let (m, n, k) = (16, 24, 40);
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 5) % 7) as f32 - 3.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i * 3) % 5) as f32 - 2.0).collect();
    let want: Vec<f32> = (0..m * n)
        .map(|e| {
            (0..k)
                .map(|kk| a[(e / n) * k + kk] * b[kk * n + e % n])
                .sum()
        })
        .collect();
    let run = || -> Result<Vec<f32>> {
        let ta = super::from_f32(c, &[m, k], &a)?;
        let tb = super::from_f32(c, &[k, n], &b)?;
        let out = super::zeros(c, &[m, n])?;
        super::gemm::launch(
            GemmKernel::Cooperative,
            c,
            ta.id(),
            tb.id(),
            out.id(),
            &Gemm::dense(m, n, k, false, false),
        )?;
        super::read_f32(c, out.id())
    };
    match run() {
        Ok(got) if got == want => true,
        Ok(got) => {
            tracing::warn!(
                device = %c.device_name(),
                first_got = ?&got[..4],
                first_want = ?&want[..4],
                "the cooperative-matrix gemm runs but gets a product wrong; not used"
            );
            false
        }
        Err(e) => {
            tracing::debug!(device = %c.device_name(), error = %e, "no cooperative matrices");
            false
        }
    }
}

/// The arithmetic a run asks for, from FusionBench's `fabric.precision` (Lightning's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    /// Full f32 (`32`, `32-true`, or no setting): the default.
    #[default]
    F32,
    /// `16-mixed`: f16 operands, f32 accumulation.
    Mixed16,
    /// `bf16-mixed`: bf16 operands in PyTorch; here the operands are rounded to f16 (the
    /// cooperative matrices wgpu offers are f16 or f32), accumulation in f32.
    MixedBf16,
}

impl Precision {
    /// Parses a `fabric.precision` value (`32`, `32-true`, `16-mixed`, `bf16-mixed`; an
    /// integer 32 from YAML too); anything else is an error naming the value.
    pub fn parse(value: &str) -> Result<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "32" | "32-true" => Ok(Precision::F32),
            "16-mixed" => Ok(Precision::Mixed16),
            "bf16-mixed" => Ok(Precision::MixedBf16),
            other => Err(NnError::input(
                "fabric.precision",
                format!(
                    "`{other}` is not supported for dense math (use 32, 32-true, 16-mixed or \
                     bf16-mixed)"
                ),
            )),
        }
    }

    /// Whether products may round their operands to 16 bits.
    pub fn is_mixed(self) -> bool {
        !matches!(self, Precision::F32)
    }
}

/// The gemm kernel for a run at `precision`: the cooperative-matrix (tensor-core) kernel when
/// the run asks for mixed precision and the device has it ([`cooperative_matrix_available`]),
/// else the f32 choice ([`gemm_kernel`]).
pub fn gemm_kernel_for(c: &dyn Compute, precision: Precision) -> Result<GemmKernel> {
    if precision.is_mixed() && cooperative_matrix_available(c) {
        return Ok(GemmKernel::Cooperative);
    }
    gemm_kernel(c)
}

/// Where a [`GemmChoice`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChoiceSource {
    /// The override (`FUSION_GEMM`).
    Override,
    /// The tuning cache file.
    Cache,
    /// Timed now (and written to the cache when there is a cache folder).
    Tuned,
    /// The default for the device kind, without timing (`FUSION_GEMM_TUNE=0`).
    Default,
}

/// The [`GemmKernel`] for a device and how it was chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct GemmChoice {
    /// The kernel.
    pub kernel: GemmKernel,
    /// How it was chosen.
    pub source: ChoiceSource,
    /// Milliseconds per product of each variant timed (empty unless tuned now).
    pub timings_ms: Vec<(GemmKernel, f64)>,
}

/// The cache folder: `FUSION_CACHE_DIR`, else `$XDG_CACHE_HOME/fusion-host`, else
/// `$HOME/.cache/fusion-host`; `None` when none of them is set.
pub fn cache_dir() -> Option<PathBuf> {
    let get = |n: &str| {
        std::env::var_os(n)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    get("FUSION_CACHE_DIR")
        .or_else(|| get("XDG_CACHE_HOME").map(|d| d.join("fusion-host")))
        .or_else(|| get("HOME").map(|d| d.join(".cache").join("fusion-host")))
}

/// The override a run's configuration sets ([`set_gemm_override`]); `None` when unset.
static CONFIGURED: Mutex<Option<GemmKernel>> = Mutex::new(None);

/// Sets the gemm kernel every later product of this process uses, from a run's configuration
/// (the clip-vision task pool's `gemm_kernel` key), or with `None`, `""` or `auto` clears it.
/// It takes precedence over `FUSION_GEMM` and the tuning cache (an explicit setting of the run
/// wins over the environment, as [`Precision`] from `fabric.precision` does). `key` names the
/// setting in errors. A name that is not a kernel is an error here; a kernel the device cannot
/// run is an error at the first product on it.
pub fn set_gemm_override(key: &'static str, name: Option<&str>) -> Result<Option<GemmKernel>> {
    let kernel = match name.map(str::trim) {
        None | Some("") | Some("auto") => None,
        Some(name) => Some(GemmKernel::parse(name).ok_or_else(|| {
            NnError::input(
                key,
                format!(
                    "`{name}` is not one of registers, tiled8, tiled16, subgroup, cooperative, auto"
                ),
            )
        })?),
    };
    *CONFIGURED.lock().unwrap_or_else(|e| e.into_inner()) = kernel;
    if let Some(k) = kernel {
        tracing::info!(
            kernel = k.name(),
            key,
            "gemm kernel set by the configuration"
        );
    }
    Ok(kernel)
}

/// The kernel [`super::gemm`] uses on this device: the configured override
/// ([`set_gemm_override`]) when there is one, else [`resolve_gemm_kernel`] with the
/// environment's override and cache folder, once per device and process.
pub fn gemm_kernel(c: &dyn Compute) -> Result<GemmKernel> {
    let configured = *CONFIGURED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(kernel) = configured {
        if !kernel.supported(c) {
            return Err(NnError::input(
                "gemm_kernel",
                format!(
                    "the configured `{}` kernel does not run on `{}` (pick another, or auto)",
                    kernel.name(),
                    c.device_name()
                ),
            ));
        }
        return Ok(kernel);
    }
    static CHOICES: OnceLock<Mutex<HashMap<String, GemmKernel>>> = OnceLock::new();
    memo(&CHOICES, device_key(c), || {
        let over = std::env::var("FUSION_GEMM").ok();
        let tune = !matches!(
            std::env::var("FUSION_GEMM_TUNE").as_deref().map(str::trim),
            Ok("0" | "off" | "false" | "no")
        );
        let choice = resolve_gemm_kernel(c, over.as_deref(), cache_dir().as_deref(), tune)?;
        tracing::info!(
            device = %c.device_name(),
            kernel = choice.kernel.name(),
            source = ?choice.source,
            "gemm kernel chosen"
        );
        Ok(choice.kernel)
    })
}

/// The default without timing: registers on a software adapter, the largest tiles the device
/// runs elsewhere.
pub fn default_gemm_kernel(c: &dyn Compute) -> GemmKernel {
    if crate::is_software_adapter(&c.device_name())
        || c.device_type() == fusion_plugin_api::DeviceType::Cpu
    {
        return GemmKernel::Registers;
    }
    [GemmKernel::Tiled16, GemmKernel::Tiled8]
        .into_iter()
        .find(|k| k.supported(c))
        .unwrap_or(GemmKernel::Registers)
}

/// Chooses the gemm kernel for `c`: `over` (a [`GemmKernel::name`], or `auto`) wins; else the
/// entry for this device in `cache_dir`'s [`TUNING_FILE`]; else, with `tune`, the fastest
/// variant on a [`TUNING_SIZE`]³ product, written to the cache file (other entries kept); else
/// [`default_gemm_kernel`]. An unreadable or malformed cache file is ignored (and replaced
/// after tuning), with a warning.
pub fn resolve_gemm_kernel(
    c: &dyn Compute,
    over: Option<&str>,
    cache_dir: Option<&Path>,
    tune: bool,
) -> Result<GemmChoice> {
    let choice = |kernel, source| GemmChoice {
        kernel,
        source,
        timings_ms: Vec::new(),
    };
    if let Some(name) = over
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "auto")
    {
        let kernel = GemmKernel::parse(name).ok_or_else(|| {
            NnError::input(
                "FUSION_GEMM",
                format!(
                    "`{name}` is not one of registers, tiled8, tiled16, subgroup, cooperative, auto"
                ),
            )
        })?;
        if !kernel.supported(c) {
            return Err(NnError::input(
                "FUSION_GEMM",
                format!(
                    "the `{name}` kernel does not run on `{}` (unset FUSION_GEMM or pick another)",
                    c.device_name()
                ),
            ));
        }
        return Ok(choice(kernel, ChoiceSource::Override));
    }
    let key = device_key(c);
    let file = cache_dir.map(|d| d.join(TUNING_FILE));
    let mut doc = file
        .as_deref()
        .and_then(read_cache)
        .unwrap_or_else(|| serde_json::json!({ "format": 1, "devices": {} }));
    if let Some(kernel) = doc["devices"][&key]["gemm"]["kernel"]
        .as_str()
        .and_then(GemmKernel::parse)
        .filter(|k| GemmKernel::ALL.contains(k) && k.supported(c))
    {
        return Ok(choice(kernel, ChoiceSource::Cache));
    }
    if !tune {
        return Ok(choice(default_gemm_kernel(c), ChoiceSource::Default));
    }
    let timings = time_variants(c)?;
    let best = timings
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|t| t.0)
        .unwrap_or_else(|| default_gemm_kernel(c));
    if let Some(file) = &file {
        let ms: serde_json::Map<String, serde_json::Value> = timings
            .iter()
            .map(|(k, t)| (k.name().to_string(), serde_json::json!(t)))
            .collect();
        if !doc["devices"].is_object() {
            doc["devices"] = serde_json::json!({});
        }
        doc["devices"][&key]["gemm"] = serde_json::json!({
            "kernel": best.name(),
            "size": [TUNING_SIZE, TUNING_SIZE, TUNING_SIZE],
            "ms": ms,
            "subgroup_size": subgroup_size(c),
        });
        if let Err(e) = write_cache(file, &doc) {
            tracing::warn!(file = %file.display(), error = %e, "cannot write the kernel tuning cache");
        }
    }
    Ok(GemmChoice {
        kernel: best,
        source: ChoiceSource::Tuned,
        timings_ms: timings,
    })
}

fn read_cache(file: &Path) -> Option<serde_json::Value> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "cannot read the kernel tuning cache");
            return None;
        }
    };
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) if v.is_object() => Some(v),
        _ => {
            tracing::warn!(file = %file.display(), "the kernel tuning cache is not a JSON object; retuning");
            None
        }
    }
}

fn write_cache(file: &Path, doc: &serde_json::Value) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Write beside and rename, so a concurrent reader never sees half a file.
    let tmp = file.with_extension(format!("json.{}.tmp", std::process::id()));
    let text = serde_json::to_string_pretty(doc).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, file)
}

/// Milliseconds per [`TUNING_SIZE`]³ product (best of 3 after a warm-up) of every variant the
/// device runs.
fn time_variants(c: &dyn Compute) -> Result<Vec<(GemmKernel, f64)>> {
    let n = TUNING_SIZE;
    let data: Vec<f32> = (0..n * n).map(|i| ((i * 7919) % 13) as f32 * 0.1).collect();
    let a = super::from_f32(c, &[n, n], &data)?;
    let b = super::from_f32(c, &[n, n], &data)?;
    let out = super::zeros(c, &[n, n])?;
    let g = Gemm::dense(n, n, n, false, false);
    let mut timings = Vec::new();
    for kernel in GemmKernel::ALL {
        if !kernel.supported(c) {
            continue;
        }
        let run = || -> Result<f64> {
            let t = Instant::now();
            gemm_with(kernel, c, a.id(), b.id(), out.id(), &g)?;
            c.synchronize().map_err(NnError::compute(format!(
                "timing the {} gemm",
                kernel.name()
            )))?;
            Ok(t.elapsed().as_secs_f64() * 1e3)
        };
        // A variant that fails here (a driver that rejects it) is skipped, not fatal.
        match run() {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(kernel = kernel.name(), error = %e, "gemm variant skipped");
                continue;
            }
        }
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            best = best.min(run()?);
        }
        tracing::debug!(kernel = kernel.name(), ms = best, "gemm variant timed");
        timings.push((kernel, best));
    }
    Ok(timings)
}
