//! The GPU, created on first use: runs that never dispatch a kernel (the dummy flow, `--cfg`,
//! `plugins`) do not pay for starting a device.

use std::sync::{Arc, OnceLock};

use fusion_gpu::{DeviceChoice, Runtime, RuntimeOptions};
use fusion_plugin_api::{
    Compute, ComputeLimits, DType, DeviceType, Error, GpuTensor, KernelCall, Result,
};

/// A [`Compute`] that creates the wgpu runtime the first time it is used.
pub struct LazyCompute {
    choice: DeviceChoice,
    /// Where the choice came from (`--device` or `FUSION_DEVICE`), for the error.
    origin: &'static str,
    runtime: OnceLock<std::result::Result<Arc<Runtime>, String>>,
}

impl LazyCompute {
    pub fn new(choice: DeviceChoice, origin: &'static str) -> Self {
        Self {
            choice,
            origin,
            runtime: OnceLock::new(),
        }
    }

    /// Log (debug) where the device's host time went, if a device was started.
    pub fn log_timing(&self) {
        if let Some(Ok(rt)) = self.runtime.get() {
            rt.log_timing();
        }
    }

    fn get(&self) -> Result<&Arc<Runtime>> {
        self.runtime
            .get_or_init(|| {
                let started = std::time::Instant::now();
                match Runtime::new(&self.choice, RuntimeOptions::default()) {
                    Ok(rt) => {
                        tracing::info!(
                            device = %rt.adapter().name,
                            backend = %rt.adapter().backend,
                            seconds = started.elapsed().as_secs_f64(),
                            "compute device ready"
                        );
                        Ok(Arc::new(rt))
                    }
                    Err(e) => Err(format!(
                        "could not create the compute device ({} {}): {e}",
                        self.origin,
                        match self.origin {
                            "FUSION_DEVICE" => format!("= {:?}", self.choice.to_string()),
                            _ => self.choice.to_string(),
                        }
                    )),
                }
            })
            .as_ref()
            .map_err(Error::compute)
    }
}

impl Compute for LazyCompute {
    fn device_name(&self) -> String {
        match self.get() {
            Ok(rt) => rt.device_name(),
            Err(e) => format!("unavailable ({e})"),
        }
    }
    fn limits(&self) -> ComputeLimits {
        match self.get() {
            Ok(rt) => rt.limits(),
            // Every call that does work reports the real error.
            Err(_) => ComputeLimits {
                max_storage_binding_size: 0,
                max_buffer_size: 0,
                max_workgroups_per_dimension: 0,
                max_invocations_per_workgroup: 0,
                max_storage_buffers_per_stage: 0,
                max_workgroup_storage_size: 0,
                min_storage_offset_alignment: 256,
                shader_f16: false,
            },
        }
    }
    fn create(&self, dtype: DType, shape: &[usize], data: Option<&[u8]>) -> Result<GpuTensor> {
        self.get()?.create(dtype, shape, data)
    }
    fn write(&self, tensor: GpuTensor, offset: u64, data: &[u8]) -> Result<()> {
        self.get()?.write(tensor, offset, data)
    }
    fn read(&self, tensor: GpuTensor) -> Result<Vec<u8>> {
        self.get()?.read(tensor)
    }
    fn describe(&self, tensor: GpuTensor) -> Result<(DType, Vec<usize>)> {
        self.get()?.describe(tensor)
    }
    fn release(&self, tensor: GpuTensor) {
        if let Ok(rt) = self.get() {
            rt.release(tensor)
        }
    }
    fn dispatch(&self, call: &KernelCall<'_>) -> Result<()> {
        self.get()?.dispatch(call)
    }
    fn synchronize(&self) -> Result<()> {
        self.get()?.synchronize()
    }
    fn device_type(&self) -> DeviceType {
        self.get()
            .map_or(DeviceType::Unknown, |rt| rt.device_type())
    }
}

/// Parse `--device` (or `FUSION_DEVICE`, `origin` says which) into the choice, with where it
/// came from for later errors.
pub fn parse_choice(text: &str, origin: &'static str) -> anyhow::Result<Device> {
    let choice = text.parse::<DeviceChoice>().map_err(|e| {
        crate::error::usage(match origin {
            "FUSION_DEVICE" => format!("the environment variable FUSION_DEVICE={text:?}: {e}"),
            _ => format!("{origin} {text:?}: {e}"),
        })
    })?;
    Ok(Device { choice, origin })
}

/// A parsed device choice and where it came from.
#[derive(Clone, Debug)]
pub struct Device {
    pub choice: DeviceChoice,
    /// `--device` or `FUSION_DEVICE`.
    pub origin: &'static str,
}

impl Device {
    /// The lazily created compute for this choice.
    pub fn lazy(&self) -> LazyCompute {
        LazyCompute::new(self.choice.clone(), self.origin)
    }
}

/// `fusion-host devices`: every adapter with its backend, type, driver and limits.
pub fn list() -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let mut out = String::new();
    let adapters = fusion_gpu::list_adapters();
    if adapters.is_empty() {
        writeln!(out, "no GPU adapters found (install a Vulkan driver, e.g. Mesa's lavapipe: apt-get install mesa-vulkan-drivers)")?;
        return crate::cli::stdout(&out);
    }
    for a in adapters {
        writeln!(out, "{}", a.name)?;
        writeln!(
            out,
            "  backend {}, type {}, driver {} {}",
            a.backend, a.device_type, a.driver, a.driver_info
        )?;
        writeln!(
            out,
            "  max storage binding {} B, max buffer {} B, {} workgroups per dimension, {} invocations per workgroup, {} storage buffers per stage",
            a.max_storage_binding_size,
            a.max_buffer_size,
            a.max_workgroups_per_dimension,
            a.max_invocations_per_workgroup,
            a.max_storage_buffers_per_stage
        )?;
        writeln!(
            out,
            "  f16: {}, compute shaders: {}",
            if a.shader_f16 { "yes" } else { "no" },
            if a.compute { "yes" } else { "no" }
        )?;
    }
    crate::cli::stdout(&out)
}
