//! The GPU runtime of fusion-host: one wgpu device owned by the host and lent to plugins through
//! [`fusion_plugin_api::Compute`].
//!
//! - [`DeviceChoice`] and [`list_adapters`] pick and describe adapters (`--device`, `devices`).
//! - [`Runtime`] opens the device with the adapter's own limits, keeps tensors in pooled
//!   buffers, caches compute pipelines by (source hash, entry point, override constants, binding
//!   layout) and turns wgpu validation errors into errors that name the kernel.
//!
//! ```no_run
//! use fusion_gpu::{DeviceChoice, Runtime, RuntimeOptions};
//! use fusion_plugin_api::{Compute, DType};
//!
//! let rt = Runtime::new(&DeviceChoice::Auto, RuntimeOptions::default())?;
//! let t = rt.create(DType::F32, &[4], Some(bytemuck::cast_slice(&[1.0f32, 2.0, 3.0, 4.0])))?;
//! assert_eq!(rt.read(t)?.len(), 16);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod adapter;
mod error;
mod pool;
mod runtime;

pub use adapter::{list_adapters, AdapterReport, DeviceChoice};
pub use error::GpuError;
pub use pool::PoolStats;
pub use runtime::{LimitClamp, Runtime, RuntimeOptions};
