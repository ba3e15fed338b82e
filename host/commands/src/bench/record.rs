//! The benchmark's record: what ran where (adapter, driver, backend, versions, machine) and the
//! figures, as JSON; a markdown table of one record; the ratios between two.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use fusion_gpu::AdapterReport;
use serde::{Deserialize, Serialize};

use super::Sizes;

/// The wgpu the runtime is built on (pinned with `=` in the workspace's Cargo.toml).
const WGPU_VERSION: &str = "30.0.1";

/// One measured figure; every value is a throughput (higher is faster).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Figure {
    /// `kernels`, `merge` or `clip`.
    pub suite: String,
    pub name: String,
    pub value: f64,
    pub unit: String,
    /// The time the value was computed from (median).
    pub seconds: f64,
    pub detail: String,
}

/// The adapter a record was measured on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Adapter {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub shader_f16: bool,
}

/// A benchmark run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    /// `fusion-host-bench/1`.
    pub format: String,
    /// When it ran (UTC, RFC 3339).
    pub date: String,
    pub adapter: Adapter,
    /// `fusion-host` and `wgpu`.
    pub versions: serde_json::Map<String, serde_json::Value>,
    /// OS, architecture and CPU threads of the machine.
    pub machine: serde_json::Map<String, serde_json::Value>,
    pub quick: bool,
    pub sizes: Sizes,
    pub figures: Vec<Figure>,
    /// What this benchmark does not measure on this adapter, and why.
    pub not_measured: Vec<String>,
}

impl Record {
    pub fn new(adapter: &AdapterReport, quick: bool, sizes: Sizes, figures: Vec<Figure>) -> Self {
        let mut versions = serde_json::Map::new();
        versions.insert("fusion-host".into(), env!("CARGO_PKG_VERSION").into());
        versions.insert("wgpu".into(), WGPU_VERSION.into());
        let mut machine = serde_json::Map::new();
        machine.insert("os".into(), std::env::consts::OS.into());
        machine.insert("arch".into(), std::env::consts::ARCH.into());
        machine.insert(
            "cpu_threads".into(),
            std::thread::available_parallelism()
                .map_or(0, |n| n.get())
                .into(),
        );
        Record {
            format: "fusion-host-bench/1".into(),
            date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            adapter: Adapter {
                name: adapter.name.clone(),
                backend: adapter.backend.clone(),
                device_type: adapter.device_type.clone(),
                driver: adapter.driver.clone(),
                driver_info: adapter.driver_info.clone(),
                shader_f16: adapter.shader_f16,
            },
            versions,
            machine,
            quick,
            sizes,
            figures,
            not_measured: vec![
                "matmul f16 / tensor cores: the kernel library has no f16 matmul kernel".into(),
            ],
        }
    }

    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| {
            fusion_host_commands::usage(format!(
                "{} is not a fusion-host bench record: {e}",
                path.display()
            ))
        })
    }

    /// Write the JSON under a temporary name beside `path`, then rename it into place.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.partial-{}", std::process::id()));
        let text = serde_json::to_string_pretty(self)? + "\n";
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| {
            let _ = std::fs::remove_file(&tmp);
            format!("renaming into {}", path.display())
        })
    }

    fn title(&self) -> String {
        format!(
            "{} ({}, {} {}){}",
            self.adapter.name,
            self.adapter.backend,
            self.adapter.driver,
            self.adapter.driver_info,
            if self.quick { ", --quick" } else { "" }
        )
    }

    /// The figures as a markdown table.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}, {}\n", self.title(), self.date);
        out.push_str(
            "| suite | benchmark | value | unit | seconds | what |\n|---|---|---:|---|---:|---|\n",
        );
        for f in &self.figures {
            let _ = writeln!(
                out,
                "| {} | {} | {:.2} | {} | {:.4} | {} |",
                f.suite, f.name, f.value, f.unit, f.seconds, f.detail
            );
        }
        out
    }
}

/// A markdown table of B against A: each figure of either, and B/A where both have it.
pub fn compare(a: &Record, b: &Record, a_path: &Path, b_path: &Path) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "A: {} — {}", a_path.display(), a.title());
    let _ = writeln!(out, "B: {} — {}\n", b_path.display(), b.title());
    if a.quick != b.quick {
        out.push_str("(one record is --quick and the other is not: sizes differ)\n\n");
    }
    out.push_str("| suite | benchmark | unit | A | B | B/A |\n|---|---|---|---:|---:|---:|\n");
    let mut keys: Vec<(&str, &str)> = Vec::new();
    for f in a.figures.iter().chain(&b.figures) {
        if !keys.contains(&(f.suite.as_str(), f.name.as_str())) {
            keys.push((&f.suite, &f.name));
        }
    }
    let find = |r: &'_ Record, k: (&str, &str)| {
        r.figures
            .iter()
            .find(|f| f.suite == k.0 && f.name == k.1)
            .cloned()
    };
    for k in keys {
        let (fa, fb) = (find(a, k), find(b, k));
        let unit = fa
            .as_ref()
            .or(fb.as_ref())
            .map_or("", |f| f.unit.as_str())
            .to_string();
        let cell =
            |f: &Option<Figure>| f.as_ref().map_or("—".into(), |f| format!("{:.2}", f.value));
        let ratio = match (&fa, &fb) {
            (Some(x), Some(y)) if x.value > 0.0 => format!("{:.2}", y.value / x.value),
            _ => "—".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {unit} | {} | {} | {ratio} |",
            k.0,
            k.1,
            cell(&fa),
            cell(&fb)
        );
    }
    out
}
