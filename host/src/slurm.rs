//! The Slurm launcher of `--multirun` (`hydra/launcher=submitit_slurm`, with the keys of Hydra's
//! submitit plugin): the sweep becomes one sbatch job array, `slurm_array.sh` in the sweep
//! folder, whose task N runs job N (`fusion-host ... --job-dir DIR --job-num N`, its stdout and
//! stderr into `stdout.log` / `stderr.log` in its folder, as the local launchers do). fusion-host
//! submits it with `sbatch --parsable`, waits until `squeue` no longer lists it, and the sweep
//! then collects the reports. Slurm's own messages go to `.slurm/` in the sweep folder.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use serde_norway::Value as Yaml;

use crate::error::usage;
use crate::multirun::{Job, JOB_DIR_ARG, JOB_NUM_ARG};

/// Where a task writes its job's exit status.
pub const EXIT_CODE_FILE: &str = "exit_code";

/// How often `squeue` is asked whether the array is still there.
const POLL: Duration = Duration::from_secs(15);

/// True when the launcher node is the submitit Slurm launcher.
pub fn selected(launcher: Option<&Yaml>) -> bool {
    launcher
        .and_then(|l| l.get("_target_"))
        .and_then(Yaml::as_str)
        .is_some_and(|t| t.ends_with("SlurmLauncher"))
}

/// A launcher setting as sbatch text, None when unset (`null`).
fn setting(launcher: &Yaml, key: &str) -> anyhow::Result<Option<String>> {
    match launcher.get(key) {
        None | Some(Yaml::Null) => Ok(None),
        Some(v @ (Yaml::String(_) | Yaml::Number(_) | Yaml::Bool(_))) => {
            let s = fusion_config::value::scalar_to_string(v);
            if s.contains(['\n', '\r']) {
                return Err(usage(format!(
                    "hydra.launcher.{key} must be one line, got {s:?}"
                )));
            }
            Ok(Some(s))
        }
        Some(other) => Err(usage(format!(
            "hydra.launcher.{key} must be a single value, got {}",
            fusion_config::to_yaml(other).trim()
        ))),
    }
}

/// A launcher setting that must be a positive whole number.
fn count(launcher: &Yaml, key: &str) -> anyhow::Result<Option<u64>> {
    match launcher.get(key) {
        None | Some(Yaml::Null) => Ok(None),
        Some(v) => v.as_u64().filter(|n| *n > 0).map(Some).ok_or_else(|| {
            usage(format!(
                "hydra.launcher.{key} must be a positive whole number, got {}",
                fusion_config::value::scalar_to_string(v)
            ))
        }),
    }
}

/// Single-quoted for bash.
fn sh(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The sbatch script of the array.
pub fn script(
    launcher: &Yaml,
    jobs: &[Job],
    exe: &Path,
    child_args: &[String],
    sweep_dir: &Path,
    cwd: &Path,
) -> anyhow::Result<String> {
    let mut lines = vec!["#!/bin/bash".to_string()];
    let mut sbatch = |flag: &str, value: String| lines.push(format!("#SBATCH --{flag}={value}"));
    let name = setting(launcher, "name")?.unwrap_or_else(|| "fusion_host".into());
    sbatch("job-name", name);
    let parallel = count(launcher, "array_parallelism")?.unwrap_or(256);
    sbatch(
        "array",
        format!("0-{}%{parallel}", jobs.len().saturating_sub(1)),
    );
    let slurm_dir = sweep_dir.join(".slurm");
    sbatch("output", format!("{}/%A_%a.out", slurm_dir.display()));
    sbatch("error", format!("{}/%A_%a.err", slurm_dir.display()));
    if let Some(t) = count(launcher, "timeout_min")? {
        sbatch("time", t.to_string());
    }
    for (key, flag) in [
        ("partition", "partition"),
        ("qos", "qos"),
        ("account", "account"),
        ("comment", "comment"),
        ("constraint", "constraint"),
        ("exclude", "exclude"),
        ("gres", "gres"),
        ("mem_per_gpu", "mem-per-gpu"),
        ("mem_per_cpu", "mem-per-cpu"),
    ] {
        if let Some(v) = setting(launcher, key)? {
            sbatch(flag, v);
        }
    }
    for (key, flag) in [
        ("nodes", "nodes"),
        ("tasks_per_node", "ntasks-per-node"),
        ("cpus_per_task", "cpus-per-task"),
        ("gpus_per_node", "gpus-per-node"),
        ("gpus_per_task", "gpus-per-task"),
        ("cpus_per_gpu", "cpus-per-gpu"),
    ] {
        if let Some(n) = count(launcher, key)? {
            sbatch(flag, n.to_string());
        }
    }
    if let Some(gb) = count(launcher, "mem_gb")? {
        sbatch("mem", format!("{gb}GB"));
    }
    if let Some(s) = count(launcher, "signal_delay_s")? {
        sbatch("signal", format!("USR2@{s}"));
    }
    // submitit passes additional_parameters on as `--key=value`, underscores as dashes.
    match launcher.get("additional_parameters") {
        None | Some(Yaml::Null) => {}
        Some(Yaml::Mapping(m)) => {
            for (k, _) in m {
                let key = fusion_config::value::scalar_to_string(k);
                let v = setting(&Yaml::Mapping(m.clone()), &key)?.unwrap_or_default();
                sbatch(&key.replace('_', "-"), v);
            }
        }
        Some(other) => {
            return Err(usage(format!(
                "hydra.launcher.additional_parameters must be a mapping, got {}",
                fusion_config::to_yaml(other).trim()
            )))
        }
    }
    lines.push(String::new());
    lines.push("# Written by fusion-host --multirun: task N of the array runs job N.".into());
    match launcher.get("setup") {
        Some(Yaml::Sequence(cmds)) => {
            for c in cmds {
                lines.push(fusion_config::value::scalar_to_string(c));
            }
        }
        None | Some(Yaml::Null) => {}
        Some(other) => {
            return Err(usage(format!(
                "hydra.launcher.setup must be a list of shell lines, got {}",
                fusion_config::to_yaml(other).trim()
            )))
        }
    }
    lines.push(format!("cd {} || exit 1", sh(&cwd.to_string_lossy())));
    lines.push("case \"$SLURM_ARRAY_TASK_ID\" in".into());
    for job in jobs {
        let mut cmd = vec![sh(&exe.to_string_lossy())];
        cmd.extend(child_args.iter().map(|a| sh(a)));
        cmd.extend(job.overrides.iter().map(|a| sh(a)));
        cmd.push(JOB_DIR_ARG.into());
        cmd.push(sh(&job.dir.to_string_lossy()));
        cmd.push(JOB_NUM_ARG.into());
        cmd.push(job.num.to_string());
        let dir = sh(&job.dir.to_string_lossy());
        lines.push(format!(
            "  {}) {} >{dir}/stdout.log 2>{dir}/stderr.log; code=$?; echo $code >{dir}/{EXIT_CODE_FILE}; exit $code ;;",
            job.num,
            cmd.join(" ")
        ));
    }
    lines.push("  *) echo \"no job $SLURM_ARRAY_TASK_ID in this sweep\" >&2; exit 2 ;;".into());
    lines.push("esac".into());
    lines.push(String::new());
    Ok(lines.join("\n"))
}

/// Write the script, submit it, wait for the array to leave the queue.
pub fn launch(
    launcher: &Yaml,
    jobs: &[Job],
    child_args: &[String],
    sweep_dir: &Path,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the fusion-host executable")?;
    let cwd = std::env::current_dir().context("reading the current folder")?;
    // Absolute folders: the array's tasks start wherever Slurm starts them.
    let abs = |p: &Path| -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            cwd.join(p)
        }
    };
    let sweep_dir = abs(sweep_dir);
    let jobs: Vec<Job> = jobs
        .iter()
        .map(|j| Job {
            dir: abs(&j.dir),
            ..j.clone()
        })
        .collect();
    let text = script(launcher, &jobs, &exe, child_args, &sweep_dir, &cwd)?;
    for j in &jobs {
        std::fs::create_dir_all(&j.dir).with_context(|| format!("creating {}", j.dir.display()))?;
    }
    std::fs::create_dir_all(sweep_dir.join(".slurm"))
        .with_context(|| format!("creating {}", sweep_dir.join(".slurm").display()))?;
    let path = sweep_dir.join("slurm_array.sh");
    crate::program::write_atomic(&path, text.as_bytes())?;

    let out = Command::new("sbatch")
        .arg("--parsable")
        .arg(&path)
        .output()
        .map_err(|e| {
            usage(format!(
                "hydra/launcher=submitit_slurm: cannot run `sbatch` ({e}); it needs Slurm's commands on PATH (the script is {})",
                path.display()
            ))
        })?;
    if !out.status.success() {
        return Err(anyhow::anyhow!(
            "sbatch refused {} ({}): {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    // `--parsable` prints `jobid` or `jobid;cluster`.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let id = stdout
        .trim()
        .split(';')
        .next()
        .filter(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()))
        .ok_or_else(|| anyhow::anyhow!("sbatch printed no job id: {:?}", stdout.trim()))?
        .to_string();
    tracing::info!(
        "submitted Slurm job array {id} ({} task{}); waiting for it to finish",
        jobs.len(),
        if jobs.len() == 1 { "" } else { "s" }
    );
    loop {
        let q = Command::new("squeue")
            .args(["--noheader", "--jobs", &id, "--format=%i %T"])
            .output()
            .map_err(|e| anyhow::anyhow!("cannot run `squeue` to follow job {id}: {e}"))?;
        let listed = String::from_utf8_lossy(&q.stdout);
        // squeue fails for an id it no longer knows: the array has left the queue.
        if !q.status.success() || listed.trim().is_empty() {
            break;
        }
        tracing::debug!("job {id} still queued or running: {}", listed.trim());
        std::thread::sleep(POLL);
    }
    tracing::info!("Slurm job array {id} finished");
    Ok(())
}
