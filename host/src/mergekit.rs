//! `fusion-host mergekit CONFIG.yml OUT_DIR`: run a mergekit YAML config. The planning and the
//! math are `fusion-mergekit`'s; this reads the config, hands the lazy merged model to the
//! checkpoint writer, and reports.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::error::{plugin, usage};
use fusion_checkpoint::save::{self, SaveOptions};

/// What to run.
pub struct MergekitRequest {
    pub config: PathBuf,
    pub out: PathBuf,
    pub out_shard_size: Option<String>,
    pub random_seed: u64,
    pub allow_crimes: bool,
    pub offline: bool,
    pub quiet: bool,
}

/// Plan, merge and save.
pub fn run(req: &MergekitRequest) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&req.config).map_err(|e| {
        usage(format!(
            "cannot read the mergekit config {}: {e}",
            req.config.display()
        ))
    })?;
    if req.out.extension().is_some_and(|e| e == "safetensors") || req.out.is_file() {
        return Err(usage(format!(
            "OUT_DIR {} must be a folder (mergekit writes a checkpoint folder)",
            req.out.display()
        )));
    }
    let mut opts = SaveOptions::default();
    if let Some(size) = &req.out_shard_size {
        opts.max_shard_size = parse_kmb(size).filter(|s| *s > 0).ok_or_else(|| {
            usage(format!(
                "--out-shard-size {size}: not a size (e.g. 5B, 500M, 1000000)"
            ))
        })?;
    }
    crate::hub::install(req.offline, req.quiet)?;
    let options = fusion_mergekit::Options {
        random_seed: req.random_seed,
        allow_crimes: req.allow_crimes,
    };
    let merge = fusion_mergekit::Merge::from_yaml(&text, &options)
        .map_err(plugin)
        .with_context(|| req.config.display().to_string())?;
    let (method, layers) = (merge.method(), merge.layers);
    let summary = save::save_model(&merge.model(), &req.out, &opts)
        .with_context(|| format!("writing the merged model to {}", req.out.display()))?;
    tracing::info!(
        method,
        layers,
        tensors = summary.tensors,
        shards = summary.shards,
        bytes = summary.bytes,
        "merged model written to {}",
        summary.path.display()
    );
    Ok(())
}

/// mergekit's `parse_kmb`: a count with an optional `K`, `M` or `B` (thousands, millions,
/// billions; any case), as `--out-shard-size` takes it.
fn parse_kmb(text: &str) -> Option<u64> {
    let t = text.trim();
    let (num, mult) = match t.chars().last()?.to_ascii_lowercase() {
        'k' => (&t[..t.len() - 1], 1_000),
        'm' => (&t[..t.len() - 1], 1_000_000),
        'b' => (&t[..t.len() - 1], 1_000_000_000),
        _ => (t, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    #[test]
    fn shard_sizes_read_as_mergekit_reads_them() {
        assert_eq!(super::parse_kmb("5B"), Some(5_000_000_000));
        assert_eq!(super::parse_kmb("500m"), Some(500_000_000));
        assert_eq!(super::parse_kmb("20000"), Some(20_000));
        assert_eq!(super::parse_kmb("lots"), None);
    }
}
