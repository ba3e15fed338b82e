//! Merge throughput: the host itself (`fusion-host`, with its plugins) merging generated
//! ViT-B/32-shaped checkpoints by task arithmetic and TIES and saving the merged model, as a
//! user runs it. Merges are lazy (a tensor is computed when the save or the evaluation asks for
//! it), so the figure is the checkpoint bytes read per second of the profiler's `run method`
//! and `save merged model` stages together (the inputs stream from the page cache: the files
//! were just written); the process's wall time is in the detail.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

use super::{Figure, Sizes};

/// The `fusion-host` to run: FUSION_HOST (set when run as `fusion-host bench`), else the one
/// beside this executable.
fn host() -> anyhow::Result<PathBuf> {
    if let Some(h) = std::env::var_os("FUSION_HOST") {
        return Ok(PathBuf::from(h));
    }
    let exe = std::env::current_exe().context("finding this executable")?;
    let beside = exe.with_file_name(format!("fusion-host{}", std::env::consts::EXE_SUFFIX));
    if beside.is_file() {
        Ok(beside)
    } else {
        bail!(
            "the merge benchmark runs fusion-host, and there is none beside {} (run it as `fusion-host bench`, or set FUSION_HOST)",
            exe.display()
        )
    }
}

/// The mean seconds of `stage` in the host's profiler summary on `stderr`.
fn stage_seconds(stderr: &str, stage: &str) -> Option<f64> {
    stderr.lines().find_map(|l| {
        let mut cols = l.split('|').map(str::trim);
        (cols.next() == Some(stage))
            .then(|| cols.next()?.parse::<f64>().ok())
            .flatten()
    })
}

/// Merge the pool in `work` (`_pretrained_` and `models` fine-tuned checkpoints, `bytes` in all)
/// with each method.
pub fn run(
    work: &Path,
    models: usize,
    bytes: u64,
    device: &str,
    sizes: &Sizes,
) -> anyhow::Result<Vec<Figure>> {
    let configs = work.join("configs");
    std::fs::create_dir_all(configs.join("modelpool"))?;
    let mut pool = String::from("_target_: fusion_bench.modelpool.BaseModelPool\nmodels:\n");
    pool.push_str(&format!(
        "  _pretrained_: {}\n",
        work.join("pretrained/model.safetensors").display()
    ));
    for i in 0..models {
        pool.push_str(&format!(
            "  task_{i}: {}\n",
            work.join(format!("task_{i}/model.safetensors")).display()
        ));
    }
    std::fs::write(configs.join("modelpool/bench.yaml"), pool)?;
    let host = host()?;
    let mut figures = Vec::new();
    for method in ["task_arithmetic", "ties_merging"] {
        let mut times = Vec::new();
        for _ in 0..sizes.merge_repeats {
            let started = std::time::Instant::now();
            let out = Command::new(&host)
                .current_dir(work)
                .env("FUSION_DEVICE", device)
                .env("NO_COLOR", "1")
                .args(["--config-path"])
                .arg(&configs)
                .args([
                    "modelpool=bench",
                    &format!("method={method}"),
                    "taskpool=dummy",
                    "print_config=false",
                    "report_save_path=null",
                ])
                .arg(format!(
                    "merged_model_save_path={}",
                    work.join("merged").display()
                ))
                .output()
                .with_context(|| format!("running {}", host.display()))?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() {
                bail!(
                    "{} method={method} failed ({}):\n{}",
                    host.display(),
                    out.status,
                    stderr.trim()
                );
            }
            let secs = stage_seconds(&stderr, "run method").with_context(|| {
                format!(
                    "no `run method` line in the profiler summary of {}:\n{stderr}",
                    host.display()
                )
            })?;
            let save = stage_seconds(&stderr, "save merged model").unwrap_or(0.0);
            times.push((secs + save, started.elapsed().as_secs_f64()));
        }
        times.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (secs, wall) = times[times.len() / 2];
        figures.push(Figure {
            suite: "merge".into(),
            name: method.into(),
            value: bytes as f64 / secs / 1e9,
            unit: "GB/s".into(),
            seconds: secs,
            detail: format!(
                "fusion-host method={method} on {} ViT-B/32-shaped f32 checkpoints ({} layers, {:.2} GB), checkpoint bytes per second of `run method` + `save merged model` (process wall {wall:.2} s), median of {}",
                models + 1,
                sizes.layers,
                bytes as f64 / 1e9,
                sizes.merge_repeats
            ),
        });
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_run_method_stage_is_read_from_the_profiler_summary() {
        let stderr = "Profiler summary\nAction | Mean duration (s) | Num calls\n---\nload plugins             |             0.0100 |         1 |\nrun method               |             2.5000 |         1 |         2.5000 |         90.0\n";
        assert_eq!(super::stage_seconds(stderr, "run method"), Some(2.5));
        assert_eq!(super::stage_seconds(stderr, "evaluate"), None);
    }
}
