//! # fusion-plugin-api: write a model-fusion component for fusion-host
//!
//! fusion-host runs FusionBench-style experiments: a **model pool** serves models, a fusion
//! **algorithm** (FusionBench's "method") merges them, and a **task pool** evaluates the result.
//! Each of these is a *component* in a plugin: a shared library (`.so`, `.dylib`, `.dll`) built
//! against this crate alone. The prebuilt `fusion-host` binary loads it at run time and picks the
//! component named by the config's `_target_`; nothing else is rebuilt.
//!
//! ## Your first plugin
//!
//! `Cargo.toml`:
//! ```toml
//! [package]
//! name = "my-merge"
//! version = "0.1.0"
//! edition = "2021"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! fusion-plugin-api = { path = "/path/to/fusion-host/plugin-api" }
//! ```
//!
//! `src/lib.rs`, an algorithm that linearly interpolates between the pretrained model and the
//! average of the others:
//! ```
//! use fusion_plugin_api::prelude::*;
//!
//! pub struct Interpolate {
//!     alpha: f32,
//! }
//!
//! impl FromConfig for Interpolate {
//!     fn from_config(config: &Config) -> Result<Self> {
//!         // `alpha: 0.5` in the YAML; 0.5 when absent. A wrong type is an error naming it.
//!         // Read every parameter here: the host refuses a key an algorithm never read (a
//!         // misspelt `alhpa`), listing the ones it did; `config.accept` takes one to ignore.
//!         Ok(Self { alpha: config.get_or("alpha", 0.5)? })
//!     }
//! }
//!
//! impl Algorithm for Interpolate {
//!     fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
//!         let base = pool.load_pretrained()?;
//!         let others = pool
//!             .model_names()?
//!             .iter()
//!             .map(|n| pool.load_model(n))
//!             .collect::<Result<Vec<_>>>()?;
//!         let names = base.names()?;
//!         let progress = ctx.progress("interpolate", names.len() as u64);
//!         let mut merged = MemoryStateDict::new();
//!         for name in &names {
//!             let info = base.info(name)?;
//!             let (mut acc, shape) = base.to_f32(name)?;
//!             for v in acc.iter_mut() {
//!                 *v *= 1.0 - self.alpha;
//!             }
//!             for model in &others {
//!                 let (x, _) = model.to_f32(name)?;
//!                 for (a, b) in acc.iter_mut().zip(x) {
//!                     *a += self.alpha * b / others.len() as f32;
//!                 }
//!             }
//!             merged.insert_f32(name.as_str(), shape, &acc, info.dtype)?;
//!             progress.advance(1);
//!         }
//!         tracing::info!(tensors = names.len(), "interpolated");
//!         Ok(Model::new(merged))
//!     }
//! }
//!
//! fusion_plugin_api::export_plugin! {
//!     algorithm Interpolate {
//!         names: ["interpolate", "my_merge.Interpolate"],
//!         description: "Interpolate between the pretrained model and the average of the others.",
//!     }
//! }
//! ```
//!
//! Build it with `cargo build --release`, then run it with a prebuilt host:
//! ```sh
//! fusion-host --plugin-dir target/release method._target_=interpolate method.alpha=0.3 ...
//! ```
//! (or put the `.so` in a folder listed in `FUSION_PLUGIN_PATH`). `fusion-host plugins` lists what
//! was found.
//!
//! ## What you get and what you must respect
//! - Models are lazy [`Model`] handles: ask for names, then each tensor's [`TensorInfo`] and bytes.
//!   Pools memory-map checkpoints, so visiting one tensor at a time keeps memory bounded.
//! - Return errors with [`Error`] (`Error::config`, `Error::model`, ...); say which parameter,
//!   file or tensor is at fault. A panic is caught at the boundary and reported as an error naming
//!   your plugin and component; it never takes the host down, but it is still a bug.
//! - `tracing` events from your plugin appear in the host's log, tagged with the plugin's name.
//! - [`Context::compute`] lends you the host's GPU ([`Compute`]): create tensors and dispatch
//!   WGSL kernels, your own or those of the `fusion-kernels` crate. The [`kernel`] module is the
//!   convenient layer: a prepared [`Kernel`], owned [`DeviceTensor`]s freed on drop, uniforms as
//!   a `#[repr(C)]` struct, grids and chunks that fit the device (`plugins/example` uses it).
//! - [`hub::current`] reaches Hugging Face hub repositories through the host: files come from the
//!   local cache, or are downloaded into it (unless the run is offline).
//! - A plugin built against a plugin-api with a different version or ABI is refused at load time
//!   with a message naming both versions; rebuild it against the host's plugin-api.

#![warn(missing_docs)]

pub mod abi;
mod component;
pub mod compute;
pub mod ensemble;
pub mod error;
mod export;
pub mod host;
pub mod hub;
pub mod kernel;
mod logging;
mod model;
pub mod tensor;

pub use component::{
    is_special_model_name, Algorithm, Config, Context, FromConfig, HostServices, ModelPool,
    NoHostServices, Progress, TaskPool, PRETRAINED,
};
pub use compute::{Binding, Compute, ComputeLimits, DeviceType, GpuTensor, KernelCall};
pub use error::{Error, ErrorKind, Result};
pub use kernel::{DeviceTensor, Kernel};
pub use model::{
    bytes_to_f32, f32_to_bytes, MemoryStateDict, Model, ModelSummary, StateDict, REPORT_VALUE_FILE,
};
pub use tensor::{parse_torch_dtype, DType, TensorInfo};

/// Everything a plugin usually needs: `use fusion_plugin_api::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Algorithm, Binding, Compute, Config, Context, DType, DeviceTensor, Error, FromConfig,
        GpuTensor, Kernel, KernelCall, MemoryStateDict, Model, ModelPool, Result, StateDict,
        TaskPool, TensorInfo,
    };
    pub use bytemuck;
    pub use serde_json;
    pub use tracing;
}

#[doc(hidden)]
pub mod __private {
    pub use abi_stable;
    pub use abi_stable::std_types::RVec;
}

/// Uniform blocks are `bytemuck::Pod` structs (see [`kernel`]).
pub use bytemuck;
pub use serde_json;
pub use tracing;
