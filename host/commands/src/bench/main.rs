//! `fusion-host bench` (the executable `fusion-host-bench`): the vendor-neutral GPU benchmark.
//! On the adapter `--device` picks: memory bandwidth (copy, weighted sum), f32 matmul, merge
//! throughput (task arithmetic and TIES through `fusion-host` on generated ViT-B/32-shaped
//! checkpoints) and CLIP images/s. Prints a markdown table, writes a JSON record with `--json`,
//! and compares two records with `--compare`.

mod clip;
mod generate;
mod kernels;
mod merge;
mod record;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use fusion_host_commands::{usage, DeviceArg, LogArgs};
use fusion_plugin_api::Compute;

pub use record::{Figure, Record};

/// The vendor-neutral GPU benchmark: bandwidth, matmul, merge and CLIP throughput on one adapter.
///
/// Examples:
///   fusion-host bench                       # everything, on the default adapter
///   fusion-host --device cpu bench all --quick --json lavapipe.json
///   fusion-host bench --compare lavapipe.json h100.json
#[derive(Parser, Debug)]
#[command(
    name = "fusion-host bench",
    bin_name = "fusion-host bench",
    version,
    verbatim_doc_comment
)]
struct Cli {
    /// What to measure.
    #[arg(value_enum, default_value = "all")]
    what: What,
    /// Write the record (adapter, driver, backend, versions, figures) as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Compare two JSON records (B against A: ratios B/A, above 1 when B is faster) and exit.
    #[arg(long, num_args = 2, value_names = ["A.json", "B.json"], conflicts_with = "json")]
    compare: Vec<PathBuf>,
    /// Smaller sizes (2-layer checkpoints, two fine-tuned models, smaller tensors): seconds
    /// instead of minutes, for a quick check; figures are lower than the full run's.
    #[arg(long)]
    quick: bool,
    #[command(flatten)]
    device: DeviceArg,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum What {
    Kernels,
    Merge,
    Clip,
    All,
}

/// The sizes of a run.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Sizes {
    /// Elements per tensor of the bandwidth benchmarks.
    pub elements: usize,
    /// m = n = k of the matmul.
    pub matmul: usize,
    /// Encoder layers of the generated checkpoints.
    pub layers: usize,
    /// Fine-tuned checkpoints merged (besides the pretrained one).
    pub models: usize,
    /// Images per CLIP pass.
    pub clip_batch: usize,
    /// Timed repeats (median) of kernels and CLIP.
    pub repeats: usize,
    /// Runs of the host (median) per merge method.
    pub merge_repeats: usize,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Sizes {
                elements: 1 << 20,
                matmul: 256,
                layers: 2,
                models: 2,
                clip_batch: 2,
                repeats: 3,
                merge_repeats: 1,
            }
        } else {
            // FusionBench's TA8 pool: eight fine-tuned ViT-B/32 and the pretrained one.
            Sizes {
                elements: 1 << 24,
                matmul: 1024,
                layers: 12,
                models: 8,
                clip_batch: 16,
                repeats: 5,
                merge_repeats: 3,
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init();
    fusion_host_commands::main(|| run(&cli))
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    if !cli.compare.is_empty() {
        let a = Record::read(&cli.compare[0])?;
        let b = Record::read(&cli.compare[1])?;
        return fusion_host_commands::stdout(&record::compare(
            &a,
            &b,
            &cli.compare[0],
            &cli.compare[1],
        ));
    }
    if let Some(json) = &cli.json {
        // Refuse an unwritable target before minutes of measuring.
        if json.is_dir() {
            return Err(usage(format!(
                "--json {}: a folder, not a file",
                json.display()
            )));
        }
        if let Some(parent) = json.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.is_dir() {
                return Err(usage(format!(
                    "--json {}: no folder {}",
                    json.display(),
                    parent.display()
                )));
            }
        }
    }
    let sizes = Sizes::new(cli.quick);
    let runtime = cli.device.start()?;
    let c: &dyn Compute = &runtime;
    let kernels = matches!(cli.what, What::Kernels | What::All);
    let merge = matches!(cli.what, What::Merge | What::All);
    let clip = matches!(cli.what, What::Clip | What::All);

    let steps =
        2 * u64::from(kernels) + u64::from(merge || clip) + u64::from(merge) + u64::from(clip);
    let bar = indicatif::ProgressBar::new(steps);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix("bench");
    let step = |msg: &str| {
        bar.set_message(msg.to_string());
        tracing::info!("{msg}");
    };

    let mut figures = Vec::new();
    let mut report = |f: Figure, bar: &indicatif::ProgressBar| {
        bar.suspend(|| tracing::info!(suite = %f.suite, name = %f.name, value = f.value, unit = %f.unit, "measured"));
        figures.push(f);
    };
    if kernels {
        step("kernels: copy and weighted-sum bandwidth");
        for f in kernels::bandwidth(c, &sizes)? {
            report(f, &bar);
        }
        bar.inc(1);
        step("kernels: f32 matmul");
        report(kernels::matmul_f32(c, &sizes)?, &bar);
        bar.inc(1);
    }
    let work = if merge || clip {
        Some(
            tempfile::Builder::new()
                .prefix("fusion-host-bench")
                .tempdir()?,
        )
    } else {
        None
    };
    if let Some(work) = &work {
        step("generating ViT-B/32-shaped checkpoints");
        let mut bytes =
            generate::write_checkpoint(&work.path().join("pretrained"), sizes.layers, 0)?;
        if merge {
            for i in 0..sizes.models {
                bytes += generate::write_checkpoint(
                    &work.path().join(format!("task_{i}")),
                    sizes.layers,
                    i as u64 + 1,
                )?;
            }
        }
        bar.inc(1);
        if merge {
            step("merge: task arithmetic and TIES through fusion-host");
            for f in merge::run(work.path(), sizes.models, bytes, &cli.device.device, &sizes)? {
                report(f, &bar);
            }
            bar.inc(1);
        }
        if clip {
            step("clip: vision tower images/s");
            report(clip::run(c, &work.path().join("pretrained"), &sizes)?, &bar);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let record = Record::new(runtime.adapter(), cli.quick, sizes, figures);
    if let Some(json) = &cli.json {
        record.write(json)?;
        tracing::info!(file = %json.display(), "record written");
    }
    fusion_host_commands::stdout(&record.markdown())
}
