//! Choosing a wgpu adapter: the `--device auto|gpu|cpu|NAME` switch and the `devices` report.

use std::fmt;
use std::str::FromStr;

use crate::GpuError;

/// Which adapter the runtime opens.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The best hardware GPU (discrete, then integrated, then virtual); the software adapter if
    /// there is none.
    #[default]
    Auto,
    /// A hardware GPU; an error if only software adapters exist.
    Gpu,
    /// The software adapter (Mesa lavapipe/llvmpipe, WARP: `DeviceType::Cpu`).
    Cpu,
    /// The first adapter (in [`DeviceChoice::Auto`] order) whose name contains this text,
    /// compared case-insensitively.
    Name(String),
}

impl FromStr for DeviceChoice {
    type Err = GpuError;

    fn from_str(s: &str) -> Result<Self, GpuError> {
        let t = s.trim();
        Ok(match t.to_ascii_lowercase().as_str() {
            "" => return Err(GpuError::BadChoice(s.to_string())),
            "auto" => DeviceChoice::Auto,
            "gpu" => DeviceChoice::Gpu,
            "cpu" => DeviceChoice::Cpu,
            _ => DeviceChoice::Name(t.to_string()),
        })
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Gpu => f.write_str("gpu"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Name(n) => f.write_str(n),
        }
    }
}

/// What `fusion-host devices` prints about one adapter: identity and the limits that decide how
/// kernels are dispatched and chunked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterReport {
    /// Adapter name (e.g. `"llvmpipe (LLVM 15.0.6, 256 bits)"`).
    pub name: String,
    /// Backend (`"Vulkan"`, `"Metal"`, `"Dx12"`, `"Gl"`).
    pub backend: String,
    /// Device type (`"DiscreteGpu"`, `"IntegratedGpu"`, `"VirtualGpu"`, `"Cpu"`, `"Other"`).
    pub device_type: String,
    /// Driver name.
    pub driver: String,
    /// Driver version and details.
    pub driver_info: String,
    /// Largest storage-buffer binding, bytes.
    pub max_storage_binding_size: u64,
    /// Largest buffer, bytes.
    pub max_buffer_size: u64,
    /// Most workgroups per dispatch dimension.
    pub max_workgroups_per_dimension: u32,
    /// Most invocations per workgroup.
    pub max_invocations_per_workgroup: u32,
    /// Most storage buffers per shader stage.
    pub max_storage_buffers_per_stage: u32,
    /// Whether the adapter offers `SHADER_F16`.
    pub shader_f16: bool,
    /// Whether the adapter offers `SUBGROUP` (subgroup operations in compute shaders).
    pub subgroups: bool,
    /// The cooperative-matrix shapes the adapter lists (`MxNxK AB->CR`), empty without wgpu's
    /// `EXPERIMENTAL_COOPERATIVE_MATRIX`.
    pub cooperative_matrix: Vec<String>,
    /// Whether those include 16x16x16 with f16 operands and f32 accumulation (the shape of
    /// fusion_kernels' mixed-precision gemm).
    pub cooperative_f16_16: bool,
    /// Whether the adapter runs compute shaders at all (false for some GL adapters).
    pub compute: bool,
}

impl AdapterReport {
    pub(crate) fn of(adapter: &wgpu::Adapter) -> Self {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let downlevel = adapter.get_downlevel_capabilities();
        let coop = if adapter
            .features()
            .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
        {
            adapter.cooperative_matrix_properties()
        } else {
            Vec::new()
        };
        AdapterReport {
            name: info.name,
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: info.driver,
            driver_info: info.driver_info,
            max_storage_binding_size: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            max_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_storage_buffers_per_stage: limits.max_storage_buffers_per_shader_stage,
            shader_f16: adapter.features().contains(wgpu::Features::SHADER_F16),
            subgroups: adapter.features().contains(wgpu::Features::SUBGROUP),
            cooperative_matrix: coop
                .iter()
                .map(|p| {
                    format!(
                        "{}x{}x{} {:?}->{:?}",
                        p.m_size, p.n_size, p.k_size, p.ab_type, p.cr_type
                    )
                })
                .collect(),
            cooperative_f16_16: coop.iter().any(|p| {
                (p.m_size, p.n_size, p.k_size) == (16, 16, 16)
                    && p.ab_type == wgpu::CooperativeScalarType::F16
                    && p.cr_type == wgpu::CooperativeScalarType::F32
            }),
            compute: downlevel
                .flags
                .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS),
        }
    }
}

impl fmt::Display for AdapterReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}, {}; driver {} {}): storage binding {} B, buffer {} B, {} workgroups/dim, \
             {} invocations/workgroup, {} storage buffers/stage, f16 {}, subgroups {}{}{}",
            self.name,
            self.backend,
            self.device_type,
            self.driver,
            self.driver_info,
            self.max_storage_binding_size,
            self.max_buffer_size,
            self.max_workgroups_per_dimension,
            self.max_invocations_per_workgroup,
            self.max_storage_buffers_per_stage,
            if self.shader_f16 { "yes" } else { "no" },
            if self.subgroups { "yes" } else { "no" },
            if self.cooperative_matrix.is_empty() {
                String::new()
            } else {
                format!(
                    ", cooperative matrices {}",
                    self.cooperative_matrix.join(" ")
                )
            },
            if self.compute {
                ""
            } else {
                ", NO compute shaders"
            },
        )
    }
}

/// A wgpu instance over the backends named by `WGPU_BACKEND`, or the primary ones (Vulkan,
/// Metal, DX12). GL is left out by default: where it works, Vulkan does too, and probing EGL on a
/// headless machine only adds noise.
pub(crate) fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if wgpu::Backends::from_env().is_none() {
        desc.backends = wgpu::Backends::PRIMARY;
    }
    wgpu::Instance::new(desc)
}

fn adapters(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY);
    pollster::block_on(instance.enumerate_adapters(backends))
}

/// Every adapter wgpu can see, in preference order (hardware first), for `fusion-host devices`.
pub fn list_adapters() -> Vec<AdapterReport> {
    let instance = instance();
    let mut found = adapters(&instance);
    found.sort_by_key(rank);
    found.iter().map(AdapterReport::of).collect()
}

/// Lower is preferred: discrete > integrated > virtual > other > software, and native backends
/// before GL.
fn rank(adapter: &wgpu::Adapter) -> (u8, u8) {
    let info = adapter.get_info();
    let kind = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    let backend = u8::from(info.backend == wgpu::Backend::Gl);
    (kind, backend)
}

fn is_hardware(adapter: &wgpu::Adapter) -> bool {
    matches!(
        adapter.get_info().device_type,
        wgpu::DeviceType::DiscreteGpu
            | wgpu::DeviceType::IntegratedGpu
            | wgpu::DeviceType::VirtualGpu
    )
}

/// Pick the adapter for `choice`, or explain which adapters exist.
pub(crate) fn select(
    instance: &wgpu::Instance,
    choice: &DeviceChoice,
) -> Result<wgpu::Adapter, GpuError> {
    let mut found: Vec<wgpu::Adapter> = adapters(instance)
        .into_iter()
        .filter(|a| {
            a.get_downlevel_capabilities()
                .flags
                .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        })
        .collect();
    found.sort_by_key(rank);
    let available = if found.is_empty() {
        "none (is a Vulkan driver installed? on Linux without a GPU install Mesa lavapipe, \
         e.g. `apt-get install mesa-vulkan-drivers`)"
            .to_string()
    } else {
        found
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("`{}` ({:?}, {:?})", i.name, i.backend, i.device_type)
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (wanted, pick) = match choice {
        DeviceChoice::Auto => ("any".to_string(), found.into_iter().next()),
        DeviceChoice::Gpu => (
            "hardware GPU".to_string(),
            found.into_iter().find(is_hardware),
        ),
        DeviceChoice::Cpu => (
            "software (CPU)".to_string(),
            found
                .into_iter()
                .find(|a| a.get_info().device_type == wgpu::DeviceType::Cpu),
        ),
        DeviceChoice::Name(name) => {
            let needle = name.to_lowercase();
            (
                format!("name matching {name:?}"),
                found
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&needle)),
            )
        }
    };
    let adapter = pick.ok_or(GpuError::NoAdapter { wanted, available })?;
    let info = adapter.get_info();
    tracing::debug!(
        choice = %choice,
        adapter = %info.name,
        backend = ?info.backend,
        device_type = ?info.device_type,
        driver = %info.driver_info,
        "selected GPU adapter"
    );
    Ok(adapter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_choices() {
        assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
        assert_eq!(" GPU ".parse::<DeviceChoice>().unwrap(), DeviceChoice::Gpu);
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!(
            "llvmpipe".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Name("llvmpipe".into())
        );
        assert!("  ".parse::<DeviceChoice>().is_err());
        assert_eq!(DeviceChoice::Name("RTX".into()).to_string(), "RTX");
    }
}
