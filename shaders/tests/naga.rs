//! Every `shaders/*.wgsl` parses and validates with naga; needs no GPU.

use std::path::Path;

/// The source a file compiles as: with `common.wgsl` in front when its first line asks for it.
fn composed(dir: &Path, file: &str) -> String {
    let text = std::fs::read_to_string(dir.join(file)).unwrap();
    match text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("// requires: "))
    {
        Some(dep) => format!(
            "{}\n{}",
            std::fs::read_to_string(dir.join(dep.trim())).unwrap(),
            text
        ),
        None => text,
    }
}

fn validate(name: &str, source: &str) -> Result<naga::Module, String> {
    let module = naga::front::wgsl::parse_str(source)
        .map_err(|e| format!("{name} does not parse:\n{}", e.emit_to_string(source)))?;
    // Portable kernels need no capability; one that opts into f16 gets exactly that one.
    let caps = if source.contains("enable f16;") {
        naga::valid::Capabilities::SHADER_FLOAT16
    } else {
        naga::valid::Capabilities::empty()
    };
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .validate(&module)
        .map_err(|e| format!("{name} does not validate:\n{}", e.emit_to_string(source)))?;
    Ok(module)
}

#[test]
fn every_wgsl_file_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    files.sort();
    assert!(
        files.len() >= fusion_kernels::wgsl::ALL.len(),
        "found only {files:?}"
    );
    // Check every file before failing, so one report names every broken kernel.
    let mut failures = Vec::new();
    for file in &files {
        if let Err(e) = validate(file, &composed(dir, file)) {
            failures.push(e);
        }
    }
    // What this crate ships is what was validated: each embedded source is the composition of
    // its file. (Other crates may keep kernels here too; they embed their own.)
    for (file, embedded) in fusion_kernels::wgsl::ALL {
        assert!(
            files.iter().any(|f| f == file),
            "{file} is embedded but missing from shaders/"
        );
        let source = composed(dir, file);
        assert_eq!(
            embedded.replace("\r\n", "\n"),
            source.replace("\r\n", "\n"),
            "{file}"
        );
        if let Ok(module) = validate(file, &source) {
            assert!(
                *file == "common.wgsl" || !module.entry_points.is_empty(),
                "{file} has no entry point"
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} WGSL files fail:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn multi_input_entry_points_exist_for_every_arity() {
    for (source, prefix) in [
        (fusion_kernels::wgsl::WEIGHTED_SUM, "weighted_sum_"),
        (fusion_kernels::wgsl::TIES_ELECT, "ties_elect_"),
        (fusion_kernels::wgsl::TIES_MERGE, "ties_merge_"),
    ] {
        let module = naga::front::wgsl::parse_str(source).unwrap();
        for n in 1..=fusion_kernels::wgsl::MAX_ARITY {
            let name = format!("{prefix}{n}");
            assert!(
                module.entry_points.iter().any(|e| e.name == name),
                "missing {name}"
            );
        }
    }
}
