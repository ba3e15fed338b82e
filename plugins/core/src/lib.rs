//! fusion-core: the built-in components every fusion-host installation has.
//!
//! - `BaseModelPool` (`fusion_bench.modelpool.BaseModelPool`): checkpoints from safetensors files,
//!   Hugging Face checkpoint folders and the local hub cache, opened lazily (memory-mapped).
//! - `CausalLMPool` (`fusion_bench.modelpool.CausalLMPool`, v0.1 `AutoModelForCausalLMPool`,
//!   `LLamaForCausalLMPool`, `MistralForCausalLMPool`): causal language models with their
//!   tokenizer, `model_kwargs.torch_dtype` and an architecture check.
//! - `DummyAlgorithm` (`fusion_bench.method.DummyAlgorithm`): the pretrained model, or the first.
//! - `DummyTaskPool` (`fusion_bench.taskpool.DummyTaskPool`): reports model info only.

pub mod causal_lm;
pub mod dummy;
pub mod pool;

pub use causal_lm::CausalLMPool;
pub use dummy::{model_info, DummyAlgorithm, DummyTaskPool};
pub use pool::BaseModelPool;

fusion_plugin_api::export_plugin! {
    modelpool BaseModelPool {
        names: ["BaseModelPool", "fusion_bench.modelpool.BaseModelPool", "base"],
        description: "Models from safetensors files, Hugging Face checkpoint folders or the hub cache, opened lazily.",
    }
    modelpool CausalLMPool {
        names: [
            "CausalLMPool",
            "fusion_bench.modelpool.CausalLMPool",
            "fusion_bench.modelpool.causal_lm.CausalLMPool",
            "AutoModelForCausalLMPool",
            "LLamaForCausalLMPool",
            "MistralForCausalLMPool",
        ],
        description: "Causal language models (Hugging Face folders or hub ids) with their tokenizer files, read lazily, optionally as model_kwargs.torch_dtype.",
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
