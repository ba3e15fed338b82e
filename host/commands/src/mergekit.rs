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
use fusion_gpu::{DeviceChoice, Runtime, RuntimeOptions};
use fusion_host_commands::{usage, LogArgs};
use fusion_hub::{HubClient, HubSettings};
use fusion_plugin_api::hub::Hub;

/// Run a mergekit YAML config (as `mergekit-yaml CONFIG OUT_DIR` does): merge the models it names
/// (paths relative to the working directory, or hub ids) on the CPU, on all its cores, or with
/// `--device` on a GPU through wgpu, and write the merged checkpoint folder. See docs/mergekit.md.
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
    /// Where the merge runs, as mergekit users name devices: `cpu` (the default: all CPU
    /// cores), `cuda`, `cuda:N`, `auto` (a GPU through wgpu, a hardware one where there is one,
    /// else the software Vulkan adapter), `gpu` (a hardware GPU only), `vulkan`, `metal`/`mps`,
    /// `dx12`, `gl` (an adapter of that backend), or a substring of an adapter's name (see
    /// `fusion-host devices`). Methods without device kernels run on the CPU (the log says so).
    #[arg(long, value_name = "DEVICE", env = "FUSION_DEVICE")]
    device: Option<String>,
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
    // `--device` (also from `fusion-host --device`, as FUSION_DEVICE): the CPU path unless a
    // device is named; the device is opened before any model is read, so a missing one fails
    // fast.
    let compute = match target(req.device.as_deref())? {
        Target::Cpu => {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            tracing::info!(threads, "mergekit merges run on the CPU");
            None
        }
        Target::Device { choice, asked } => Some(start(&choice, &asked)?),
    };
    install_hub(req.offline, req.log.quiet)?;
    let options = fusion_mergekit::Options {
        random_seed: req.random_seed,
        allow_crimes: req.allow_crimes,
    };
    let mut merge = fusion_mergekit::Merge::from_yaml(&text, &options)
        .map_err(anyhow::Error::new)
        .with_context(|| req.config.display().to_string())?;
    if let Some(rt) = compute {
        merge = merge.with_device(Arc::new(rt));
    }
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

/// Where a merge runs.
#[derive(Debug, PartialEq)]
enum Target {
    /// The CPU path.
    Cpu,
    /// A wgpu adapter; `asked` is the user's word for it, for messages.
    Device { choice: DeviceChoice, asked: String },
}

/// The wgpu backends mergekit users may name, with the names wgpu reports.
const BACKENDS: &[(&[&str], &str)] = &[
    (&["vulkan"], "Vulkan"),
    (&["metal", "mps"], "Metal"),
    (&["dx12", "directml"], "Dx12"),
    (&["gl", "opengl"], "Gl"),
];

/// `--device` as mergekit (torch) users type it: `cpu` (and no `--device`) is the CPU path;
/// `cuda`, `auto`, `gpu` and the backend names pick a wgpu adapter (`cuda:N`, `vulkan:N`: the
/// N-th such adapter, hardware first); anything else names an adapter as fusion-host's
/// `--device` does. Adapters are listed only when an index or a backend must be resolved.
fn target(text: Option<&str>) -> anyhow::Result<Target> {
    let Some(text) = text else {
        return Ok(Target::Cpu);
    };
    let lower = text.trim().to_ascii_lowercase();
    let (kind, index) = match lower.split_once(':') {
        Some((k, i)) => {
            let i = i.parse::<usize>().map_err(|_| {
                usage(format!(
                    "--device {text:?}: `{i}` is not a device index (e.g. cuda:0)"
                ))
            })?;
            (k.to_string(), Some(i))
        }
        None => (lower.clone(), None),
    };
    let device = |choice| {
        Ok(Target::Device {
            choice,
            asked: text.trim().to_string(),
        })
    };
    let backend = BACKENDS
        .iter()
        .find(|(names, _)| names.contains(&kind.as_str()));
    match (kind.as_str(), index, backend) {
        ("cpu", None | Some(0), _) => Ok(Target::Cpu),
        ("cpu", Some(_), _) => Err(usage(format!(
            "--device {text:?}: there is one CPU device (use `cpu`)"
        ))),
        ("cuda" | "auto", None | Some(0), _) => device(DeviceChoice::Auto),
        ("gpu", None | Some(0), _) => device(DeviceChoice::Gpu),
        (_, _, None) if index.is_none() => device(
            kind.parse::<DeviceChoice>()
                .map_err(|e| usage(format!("--device {text:?}: {e}")))?,
        ),
        _ => {
            // A backend, or an index: pick among the adapters wgpu lists (hardware first).
            let all = fusion_gpu::list_adapters();
            let hardware = |r: &&fusion_gpu::AdapterReport| r.device_type != "Cpu";
            let candidates: Vec<&fusion_gpu::AdapterReport> = match (kind.as_str(), backend) {
                (_, Some((_, b))) => all.iter().filter(|r| r.backend == *b).collect(),
                ("gpu", _) => all.iter().filter(hardware).collect(),
                ("cuda" | "auto", _) => all.iter().collect(),
                _ => {
                    return Err(usage(format!(
                        "--device {text:?}: an index goes with cuda, gpu, auto or a backend (vulkan, metal, dx12, gl)"
                    )))
                }
            };
            match candidates.get(index.unwrap_or(0)) {
                Some(r) => device(DeviceChoice::Name(r.name.clone())),
                None => {
                    let listed = if all.is_empty() {
                        "none".to_string()
                    } else {
                        all.iter()
                            .map(|r| format!("`{}` ({}, {})", r.name, r.backend, r.device_type))
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    Err(anyhow::anyhow!(
                        "--device {text:?}: no such device on this machine ({} matching adapter(s); adapters: {listed}); use --device cpu to merge on the CPU",
                        candidates.len()
                    ))
                }
            }
        }
    }
}

/// Open the adapter; a missing one is an error naming what was asked and what exists.
fn start(choice: &DeviceChoice, asked: &str) -> anyhow::Result<Runtime> {
    let rt = Runtime::new(choice, RuntimeOptions::default()).map_err(|e| {
        let hint = if *choice == DeviceChoice::Gpu {
            " (`cuda` or `auto` also take a software adapter)"
        } else {
            ""
        };
        anyhow::anyhow!(
            "--device {asked}: no such compute device ({e}); use --device cpu to merge on the CPU{hint}"
        )
    })?;
    let info = rt.adapter();
    if info.device_type == "Cpu" {
        tracing::warn!(
            device = %info.name,
            "--device {asked}: no hardware GPU, merging on the software adapter (slower than the CPU path)"
        );
    } else {
        tracing::info!(device = %info.name, backend = %info.backend, "compute device ready");
    }
    Ok(rt)
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
    fn devices_read_as_mergekit_users_type_them() {
        use super::{target, DeviceChoice, Target};
        let dev = |c| Target::Device {
            choice: c,
            asked: String::new(),
        };
        let strip = |t: Target| match t {
            Target::Device { choice, .. } => dev(choice),
            cpu => cpu,
        };
        assert_eq!(target(None).unwrap(), Target::Cpu);
        assert_eq!(target(Some("cpu")).unwrap(), Target::Cpu);
        assert_eq!(target(Some("CPU")).unwrap(), Target::Cpu);
        assert_eq!(
            strip(target(Some("cuda")).unwrap()),
            dev(DeviceChoice::Auto)
        );
        assert_eq!(
            strip(target(Some("cuda:0")).unwrap()),
            dev(DeviceChoice::Auto)
        );
        assert_eq!(
            strip(target(Some("auto")).unwrap()),
            dev(DeviceChoice::Auto)
        );
        assert_eq!(strip(target(Some("gpu")).unwrap()), dev(DeviceChoice::Gpu));
        assert_eq!(
            strip(target(Some("llvmpipe")).unwrap()),
            dev(DeviceChoice::Name("llvmpipe".into()))
        );
        assert!(target(Some("cuda:x")).is_err());
        assert!(target(Some("cpu:1")).is_err());
        assert!(target(Some("llvmpipe:1")).is_err());
    }

    #[test]
    fn shard_sizes_read_as_mergekit_reads_them() {
        assert_eq!(super::parse_kmb("5B"), Some(5_000_000_000));
        assert_eq!(super::parse_kmb("500m"), Some(500_000_000));
        assert_eq!(super::parse_kmb("20000"), Some(20_000));
        assert_eq!(super::parse_kmb("lots"), None);
    }
}
