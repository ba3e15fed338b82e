//! fusion-core: the built-in components every fusion-host installation has.
//!
//! - `BaseModelPool` (`fusion_bench.modelpool.BaseModelPool`): checkpoints from safetensors files,
//!   Hugging Face checkpoint folders and the local hub cache, opened lazily (memory-mapped).
//! - `DummyAlgorithm` (`fusion_bench.method.DummyAlgorithm`): the pretrained model, or the first.
//! - `DummyTaskPool` (`fusion_bench.taskpool.DummyTaskPool`): reports model info only.

pub mod dummy;
pub mod pool;

pub use dummy::{model_info, DummyAlgorithm, DummyTaskPool};
pub use pool::BaseModelPool;

fusion_plugin_api::export_plugin! {
    modelpool BaseModelPool {
        names: ["BaseModelPool", "fusion_bench.modelpool.BaseModelPool", "base"],
        description: "Models from safetensors files, Hugging Face checkpoint folders or the hub cache, opened lazily.",
    }
    algorithm DummyAlgorithm {
        names: ["dummy", "fusion_bench.method.DummyAlgorithm"],
        description: "Returns the pretrained model, or the first model when there is none.",
    }
    taskpool DummyTaskPool {
        names: ["dummy", "fusion_bench.taskpool.DummyTaskPool"],
        description: "Evaluates nothing; reports the model's parameter and tensor counts.",
    }
}
