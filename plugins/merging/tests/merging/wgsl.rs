//! The plugin's own WGSL parses and validates (no device needed).

#[test]
fn plugin_kernels_validate() {
    let src = fusion_merging::wgsl_source();
    let module =
        naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("{}", e.emit_to_string(src)));
    let mut v = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    );
    v.validate(&module)
        .unwrap_or_else(|e| panic!("{}", e.emit_to_string(src)));
    for entry in [
        "abs_into",
        "band_keep",
        "consensus_add",
        "safe_divide",
        "della_keep",
    ] {
        assert!(
            module.entry_points.iter().any(|e| e.name == entry),
            "missing entry point {entry}"
        );
    }
}
