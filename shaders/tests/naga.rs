//! Every `shaders/src/*.wgsl` parses and validates with naga; needs no GPU.

use std::path::Path;

/// The source a file compiles as: with the file its first line asks for in front (composed the
/// same way, so `ties_fused.wgsl` is plugin-api's f16/bf16 codecs, `common.wgsl`,
/// `ties_merge.wgsl`, then itself).
fn composed(dir: &Path, file: &str) -> String {
    if file == "fusion_plugin_api::HALF_WGSL" {
        return fusion_plugin_api::kernel::HALF_WGSL.to_string();
    }
    let text = std::fs::read_to_string(dir.join(file)).unwrap();
    match text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("// requires: "))
    {
        Some(dep) => format!("{}\n{}", composed(dir, dep.trim()), text),
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
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
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
        if let Err(e) = validate(file, &composed(&dir, file)) {
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
        let source = composed(&dir, file);
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
    // The weighted sum and the TIES elected sum are templates expanded per input count: each
    // expansion validates, has its entry points, and declares exactly its inputs (for the
    // weighted sum, two views of each: pairs and quads) after the output, around the uniform
    // block at binding 0. The TIES merge's batch entry point is expanded inside its file.
    type Expand = fn(usize) -> &'static str;
    let templates: [(&str, Expand, &[&str], u32); 2] = [
        (
            "weighted_sum",
            fusion_kernels::wgsl::weighted_sum,
            &["weighted_sum", "weighted_sum_q"],
            2,
        ),
        (
            "ties_elect_sum",
            fusion_kernels::wgsl::ties_elect_sum,
            &["ties_elect_sum"],
            1,
        ),
    ];
    for (template, expand, entries, views) in templates {
        for n in 1..=fusion_kernels::wgsl::MAX_ARITY {
            let name = format!("{template} for {n} inputs");
            let module = validate(&name, expand(n)).unwrap_or_else(|e| panic!("{e}"));
            for entry in entries {
                assert!(
                    module.entry_points.iter().any(|e| e.name == *entry),
                    "{name}: missing {entry}"
                );
            }
            let mut bindings: Vec<(u32, naga::AddressSpace)> = module
                .global_variables
                .iter()
                .filter_map(|(_, v)| Some((v.binding.as_ref()?.binding, v.space)))
                .collect();
            bindings.sort_by_key(|b| b.0);
            let uniform: Vec<u32> = bindings
                .iter()
                .filter(|b| b.1 == naga::AddressSpace::Uniform)
                .map(|b| b.0)
                .collect();
            assert_eq!(uniform, [0], "{name}");
            let storage: Vec<u32> = bindings
                .iter()
                .filter(|b| b.1 != naga::AddressSpace::Uniform)
                .map(|b| b.0)
                .collect();
            let want: Vec<u32> = (1..=n as u32 + 1)
                .flat_map(|b| std::iter::repeat_n(b, views as usize))
                .collect();
            assert_eq!(storage, want, "{name}");
        }
    }
}

#[test]
fn the_ties_merge_batch_is_expanded_for_every_arity() {
    let template = fusion_kernels::wgsl::TIES_MERGE;
    let steps = |src: &str| src.matches("st = add(st, ld").count();
    for n in 1..=fusion_kernels::wgsl::MAX_ARITY {
        let source = fusion_kernels::wgsl::ties_merge_sum(n);
        let name = format!("ties_merge_sum for {n} inputs");
        let module = validate(&name, source).unwrap_or_else(|e| panic!("{e}"));
        for entry in ["ties_merge_sum", "ties_merge_delta", "ties_finalize"] {
            assert!(
                module.entry_points.iter().any(|e| e.name == entry),
                "{name}: missing {entry}"
            );
        }
        // The template's one marked step became one step per input, the last reading input n - 1.
        assert_eq!(steps(source), steps(template) - 1 + n, "{name}");
        assert!(
            source.contains(&format!("ld{}(t, n), pm.thr", n - 1)),
            "{name}"
        );
        assert!(!source.contains(&format!("ld{n}(t, n), pm.thr")), "{name}");
    }
}

#[test]
fn templates_expand_each_line_per_input() {
    let template = "a\n//@each x{k} at {k+2}, w[{k/4}][{k%4}], y{k+1}\nb\n";
    assert_eq!(fusion_kernels::wgsl::expand_inputs(template, 0), "a\nb\n");
    assert_eq!(
        fusion_kernels::wgsl::expand_inputs(template, 6),
        "a\nx0 at 2, w[0][0], y1\nx1 at 3, w[0][1], y2\nx2 at 4, w[0][2], y3\n\
         x3 at 5, w[0][3], y4\nx4 at 6, w[1][0], y5\nx5 at 7, w[1][1], y6\nb\n"
    );
}
