//! Embeds the class names and prompt templates of `configs/clip_classification/*.yaml` (their one
//! home) into the plugin, so FusionBench's own task pool configs, which name tasks but carry no
//! class names, find them as FusionBench finds its `fusion_bench.tasks.clip_classification`
//! modules. The YAML is checked here (a bad file fails the build naming it) and written to
//! `$OUT_DIR/clip_classification.json` for `include_str!`.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

fn strings(entry: &Value, key: &str, file: &Path) -> Result<Vec<String>, String> {
    let list = entry
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{}: `{key}` must be a list of strings", file.display()))?;
    list.iter()
        .map(|v| {
            v.as_str().map(str::to_string).ok_or_else(|| {
                format!(
                    "{}: `{key}` must be a list of strings, found {v}",
                    file.display()
                )
            })
        })
        .collect()
}

fn run() -> Result<(), String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/clip_classification");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut table = Map::new();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("reading {}: {e}", file.display()))?;
        let doc: Value =
            serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        let task = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let entry = match doc.as_object() {
            Some(m) if m.len() == 1 && m.contains_key(&task) => m[&task].clone(),
            _ => {
                return Err(format!(
                    "{}: must hold exactly one key, `{task}` (the file's name)",
                    file.display()
                ))
            }
        };
        let classnames = strings(&entry, "classnames", file)?;
        let templates = strings(&entry, "templates", file)?;
        let aliases = match entry.get("aliases") {
            None => Vec::new(),
            Some(_) => strings(&entry, "aliases", file)?,
        };
        if classnames.is_empty() || templates.is_empty() {
            return Err(format!(
                "{}: `classnames` and `templates` must not be empty",
                file.display()
            ));
        }
        if let Some(t) = templates.iter().find(|t| !t.contains("{}")) {
            return Err(format!(
                "{}: template {t:?} has no `{{}}` for the class name",
                file.display()
            ));
        }
        table.insert(
            task,
            serde_json::json!({"aliases": aliases, "classnames": classnames, "templates": templates}),
        );
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?)
        .join("clip_classification.json");
    let json = serde_json::to_string(&Value::Object(table)).map_err(|e| e.to_string())?;
    std::fs::write(&out, json).map_err(|e| format!("writing {}: {e}", out.display()))
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
