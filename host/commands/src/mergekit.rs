//! `fusion-host mergekit CONFIG.yml OUT_DIR` (the executable `fusion-host-mergekit`): run a
//! mergekit YAML config. The planning and the math are `fusion-mergekit`'s; this reads the config,
//! hands the lazy merged model to the checkpoint writer, and reports. An external command, so
//! that the host links no model code (mergekit's architectures and methods).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use fusion_checkpoint::save::{self, SaveOptions};
use fusion_host_commands::{usage, LogArgs};
use fusion_hub::{HubClient, HubSettings};
use fusion_plugin_api::hub::Hub;

/// Run a mergekit YAML config (as `mergekit-yaml CONFIG OUT_DIR` does): merge the models it names
/// (paths relative to the working directory, or hub ids) on the CPU, on all its cores, and write
/// the merged checkpoint folder. See docs/mergekit.md.
#[derive(Parser, Debug)]
#[command(
    name = "fusion-host mergekit",
    bin_name = "fusion-host mergekit",
    version
)]
struct MergekitRequest {
    /// The mergekit config (YAML).
    #[arg(value_name = "CONFIG.yml")]
    config: PathBuf,
    /// The output folder.
    #[arg(value_name = "OUT_DIR")]
    out: PathBuf,
    /// Start a new shard before one would exceed this size (`5B`, `500M`, bytes; mergekit's
    /// default 5B).
    #[arg(long = "out-shard-size", value_name = "SIZE")]
    out_shard_size: Option<String>,
    /// Seed of DARE's and DELLA's random draws.
    #[arg(long = "random-seed", value_name = "N", default_value_t = 0)]
    random_seed: u64,
    /// Merge models of different architectures.
    #[arg(long = "allow-crimes")]
    allow_crimes: bool,
    /// Use only the hub cache (as `HF_HUB_OFFLINE=1`; `fusion-host --offline mergekit ...` sets
    /// that).
    #[arg(long)]
    offline: bool,
    /// Checked, but the merge runs on the CPU whatever the device (the log says so).
    #[command(flatten)]
    device: fusion_host_commands::DeviceArg,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    let req = MergekitRequest::parse();
    req.log.init();
    fusion_host_commands::main(|| run(&req))
}

/// Resolve the hub settings from the environment (`HF_HOME`, `HF_HUB_CACHE`, `HF_ENDPOINT`,
/// `HF_TOKEN`, `HF_HUB_OFFLINE`) and install the hub for the models named by hub id. A bad
/// setting is a usage error.
fn install_hub(offline: bool, quiet: bool) -> anyhow::Result<()> {
    let settings = HubSettings::from_env(offline).map_err(|e| usage(e.to_string()))?;
    let mut client = HubClient::new(settings);
    if !quiet {
        client = client.with_progress(Arc::new(fusion_hub::download_bar));
    }
    let hub: Arc<dyn Hub> = Arc::new(client);
    fusion_plugin_api::hub::install(hub);
    Ok(())
}

/// Plan, merge and save.
fn run(req: &MergekitRequest) -> anyhow::Result<()> {
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
    // `--device` (from `fusion-host --device`, as FUSION_DEVICE): checked, then said plainly
    // not to apply. The merge is bound by reading the inputs and writing the output (see
    // BENCHMARKS.md); the elementwise methods have no device path here.
    let choice = req.device.choice()?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if req.device.device == "auto" {
        tracing::info!(threads, "mergekit merges run on the CPU");
    } else {
        tracing::warn!(
            threads,
            "--device {choice}: mergekit merges run on the CPU; the compute device is not used"
        );
    }
    install_hub(req.offline, req.log.quiet)?;
    let options = fusion_mergekit::Options {
        random_seed: req.random_seed,
        allow_crimes: req.allow_crimes,
    };
    let merge = fusion_mergekit::Merge::from_yaml(&text, &options)
        .map_err(anyhow::Error::new)
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
