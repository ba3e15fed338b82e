//! Every `shaders/src/nn/*.wgsl` file parses and validates with naga (no GPU needed), and every one
//! is embedded in `fusion_kernels::wgsl::nn` (the sources the CLIP op layer launches, each the
//! file after the shared parts under `src/nn/include/` it uses), so what ships is what was
//! validated.

use std::path::Path;

#[test]
fn every_nn_kernel_validates_and_is_embedded() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shaders/src/nn");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    files.sort();
    let mut embedded: Vec<&str> = fusion_kernels::wgsl::nn::ALL
        .iter()
        .map(|(n, _)| *n)
        .collect();
    embedded.sort();
    assert_eq!(
        files, embedded,
        "shaders/src/nn/*.wgsl vs fusion_kernels::wgsl::nn::ALL"
    );

    for (name, source) in fusion_kernels::wgsl::nn::ALL {
        // The shipped source is the file, after the shared parts of `src/nn/include/` it uses.
        let on_disk = std::fs::read_to_string(dir.join(name)).unwrap();
        assert!(
            source
                .replace("\r\n", "\n")
                .ends_with(&on_disk.replace("\r\n", "\n")),
            "{name}: the embedded source does not end with the file"
        );
        let module = naga::front::wgsl::parse_str(source)
            .unwrap_or_else(|e| panic!("{name} does not parse:\n{}", e.emit_to_string(source)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name} does not validate:\n{}", e.emit_to_string(source)));
        assert!(!module.entry_points.is_empty(), "{name} has no entry point");
    }
}
