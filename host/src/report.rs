//! `fusion-host report DIR...`: every `program_report.json` under the folders (single runs and
//! sweep jobs alike) in one table, to compare methods and settings: the run's folder, its method,
//! the overrides that differ between the runs, and the report's metrics. Markdown on stdout,
//! CSV with `--csv`, plots with `--plot-dir`.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::error::usage;
use crate::summary::{self, Row};

const REPORT: &str = "program_report.json";
/// Deep enough for `outputs/multirun/<config>/<time>/<job>` under any folder a user names.
const MAX_DEPTH: usize = 16;

pub fn run(dirs: &[PathBuf], csv: Option<&Path>, plot_dir: Option<&Path>) -> anyhow::Result<()> {
    let mut found = Vec::new();
    for dir in dirs {
        if !dir.is_dir() {
            return Err(usage(format!(
                "report: {}: {}",
                dir.display(),
                if dir.exists() {
                    "not a folder"
                } else {
                    "no such folder"
                }
            )));
        }
        let before = found.len();
        walk(dir, 0, &mut found);
        if found.len() == before {
            return Err(usage(format!(
                "report: no {REPORT} under {} (a run writes one into its output folder)",
                dir.display()
            )));
        }
    }
    found.sort();
    found.dedup();

    let mut rows: Vec<Row> = found.iter().map(|d| row(d)).collect();
    // The override keys that tell the runs apart: those whose value is not the same in all.
    let mut keys: Vec<String> = Vec::new();
    for r in &rows {
        for (k, _) in &r.values {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    keys.retain(|k| {
        let vals: Vec<Option<&String>> = rows
            .iter()
            .map(|r| r.values.iter().find(|(key, _)| key == k).map(|(_, v)| v))
            .collect();
        k == "method" || vals.iter().any(|v| *v != vals[0])
    });
    for r in &mut rows {
        r.values.retain(|(k, _)| keys.contains(k));
    }
    let table = summary::table("run", &keys, &rows);
    if let Some(path) = csv {
        crate::program::write_atomic(path, table.csv().as_bytes())?;
    }
    if let Some(dir) = plot_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        let mut plots = summary::write_plots(dir, &keys, &rows)?;
        // Every run's average accuracy side by side, for comparing methods.
        let bars: Vec<(String, f64)> = rows
            .iter()
            .filter_map(|r| {
                let acc = summary::average_accuracy(r.report.as_ref()?)?;
                let label = if r.values.is_empty() {
                    r.label.clone()
                } else {
                    r.values
                        .iter()
                        .map(|(k, v)| {
                            if k == "method" {
                                v.clone()
                            } else {
                                format!("{k}={v}")
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                Some((label, acc))
            })
            .collect();
        if !bars.is_empty() {
            let path = dir.join("average_accuracy.svg");
            summary::write_bars(&path, &bars)?;
            plots.push(path);
        }
        if plots.is_empty() {
            tracing::warn!("no plot: no run reports an average accuracy");
        }
        for p in plots {
            tracing::info!("plot: {}", p.display());
        }
    }
    crate::cli::stdout(&table.markdown())
}

/// The run folders under `dir` that hold a report (symbolic links are not followed).
fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if dir.join(REPORT).is_file() {
        out.push(dir.to_path_buf());
    }
    if depth >= MAX_DEPTH {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        tracing::warn!("report: cannot read {}", dir.display());
        return;
    };
    let mut subdirs: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    subdirs.sort();
    for d in subdirs {
        walk(&d, depth + 1, out);
    }
}

/// One run: its overrides (`overrides.yaml`), its method, its report.
fn row(dir: &Path) -> Row {
    let overrides: Vec<String> = std::fs::read_to_string(dir.join("overrides.yaml"))
        .ok()
        .and_then(|t| serde_norway::from_str(&t).ok())
        .unwrap_or_default();
    let mut values: Vec<(String, String)> = overrides
        .iter()
        .filter_map(|o| {
            let (k, v) = o.split_once('=')?;
            Some((k.trim_start_matches('+').to_string(), v.to_string()))
        })
        .collect();
    if !values.iter().any(|(k, _)| k == "method") {
        // The method from the run's composed config, by its target's short name.
        let method = std::fs::read_to_string(dir.join("config.yaml"))
            .ok()
            .and_then(|t| serde_norway::from_str::<serde_norway::Value>(&t).ok())
            .and_then(|c| {
                let m = c.get("method")?;
                m.get("_target_")
                    .or_else(|| m.get("name"))
                    .and_then(|t| t.as_str())
                    .map(|t| t.rsplit('.').next().unwrap_or(t).to_string())
            });
        if let Some(m) = method {
            values.insert(0, ("method".to_string(), m));
        }
    }
    let text = std::fs::read_to_string(dir.join(REPORT));
    let (report, status) = match text
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str::<Json>(&t).map_err(|e| e.to_string()))
    {
        Ok(r) => (Some(r), "ok".to_string()),
        Err(e) => {
            tracing::warn!("report: {}: {e}", dir.join(REPORT).display());
            (None, format!("unreadable report: {e}"))
        }
    };
    Row {
        label: dir.display().to_string(),
        values,
        status,
        report,
    }
}
