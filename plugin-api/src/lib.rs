//! fusion-plugin-api (work in progress: see compute.rs, tensor.rs, error.rs)
pub mod compute;
pub mod error;
pub mod tensor;
pub use compute::{Binding, Compute, ComputeLimits, GpuTensor, KernelCall};
pub use error::{Error, ErrorKind, Result};
pub use tensor::{DType, TensorInfo};
