//! Integration tests of the merging algorithms, run in-process on a real wgpu adapter (Mesa
//! lavapipe by default; `FUSION_DEVICE=gpu` or an adapter name picks another). One test binary,
//! so wgpu is linked once.

mod common;
mod continual;
mod dare;
mod dtypes;
mod errors;
mod golden;
mod host;
mod linalg;
mod mergekit;
mod multi;
mod smile;
mod streaming;
mod wgsl;
