//! fusion-clip-vision: FusionBench's CLIP components for fusion-host.
//!
//! - `CLIPVisionModelPool` (`fusion_bench.modelpool.CLIPVisionModelPool`, v0.1
//!   `type: huggingface_clip_vision`): CLIP vision towers from checkpoint folders or hub ids.
//! - `CLIPVisionModelTaskPool` (`fusion_bench.taskpool.CLIPVisionModelTaskPool`, v0.1
//!   `type: clip_vit_classification`): zero-shot classification on the GPU, FusionBench's report.

pub mod classification;
pub mod pool;
pub mod taskpool;

pub use pool::ClipVisionModelPool;
pub use taskpool::ClipVisionModelTaskPool;

fusion_plugin_api::export_plugin! {
    modelpool ClipVisionModelPool {
        names: ["CLIPVisionModelPool", "fusion_bench.modelpool.CLIPVisionModelPool", "huggingface_clip_vision"],
        description: "CLIP vision towers (CLIPVisionModel, or the vision part of a CLIPModel) from checkpoint folders or the hub cache.",
    }
    taskpool ClipVisionModelTaskPool {
        names: ["CLIPVisionModelTaskPool", "fusion_bench.taskpool.CLIPVisionModelTaskPool", "clip_vit_classification"],
        description: "Zero-shot image classification with CLIP on the GPU: accuracy and loss per task and their average.",
    }
}
