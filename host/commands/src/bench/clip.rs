//! CLIP images/s: the vision tower of a generated ViT-B/32-shaped checkpoint on random 224x224
//! pixel batches, through the same tower the CLIP task pool evaluates with (the native CPU path
//! on a software adapter, WGSL kernels on a GPU).

use std::path::Path;
use std::time::Instant;

use fusion_clip::gpu::GpuClipVision;
use fusion_clip::{CheckpointConfig, Tensor, WeightStore};
use fusion_plugin_api::Compute;

use super::generate::Rng;
use super::{Figure, Sizes};

pub fn run(c: &dyn Compute, model_dir: &Path, sizes: &Sizes) -> anyhow::Result<Figure> {
    let config = CheckpointConfig::from_file(model_dir.join("config.json"))?;
    let store = WeightStore::open_dir(model_dir)?;
    let tower = GpuClipVision::load(c, &store, &config)?;
    let image = tower.config().image_size;
    let batch = sizes.clip_batch;
    let pixels = Tensor::new(
        vec![batch, 3, image, image],
        Rng::new(4).fill(batch * 3 * image * image, 2.0),
    )?;
    // Warm-up (pipelines compiled, buffers pooled), then the median of the timed passes.
    tower.pooled(&pixels)?;
    let mut times = Vec::new();
    for _ in 0..sizes.repeats {
        let start = Instant::now();
        let pooled = tower.pooled(&pixels)?;
        times.push(start.elapsed().as_secs_f64());
        anyhow::ensure!(
            pooled.data().iter().all(|v| v.is_finite()),
            "the CLIP benchmark's tower gave non-finite outputs"
        );
    }
    times.sort_by(f64::total_cmp);
    let secs = times[times.len() / 2];
    Ok(Figure {
        suite: "clip".into(),
        name: "vision_images".into(),
        value: batch as f64 / secs,
        unit: "images/s".into(),
        seconds: secs,
        detail: format!(
            "ViT-B/32-shaped vision tower ({} layers), batches of {batch} images {image}x{image}, backend {}, median of {}",
            sizes.layers,
            tower.backend(),
            sizes.repeats
        ),
    })
}
