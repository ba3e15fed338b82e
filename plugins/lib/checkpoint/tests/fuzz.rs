//! Fuzzing of the safetensors header reader (`Checkpoint::open` and the reads after it): any
//! file must open as a checkpoint whose every tensor reads back with the bytes its dtype and shape
//! call for, or be refused with an error; never a panic, an abort or a hang.
//!
//! First the seed corpus in `tests/data/fuzz/safetensors` is replayed, then proptest's random
//! cases: 256 per property by default (a few seconds in CI); `PROPTEST_CASES=100000 cargo test
//! -p fusion-checkpoint --test fuzz --release` for a long local run. A failing case is shrunk and
//! kept in `fuzz.proptest-regressions` beside this file, and replayed first from then on.

use std::path::{Path, PathBuf};

use fusion_checkpoint::Checkpoint;
use fusion_plugin_api::{Model, StateDict};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../tests/data/fuzz/safetensors")
}

/// Open `path` and read everything; on success, check every tensor's byte length against its
/// dtype and shape. Returns whether the file opened.
fn exercise(path: &Path) -> bool {
    let Ok(ck) = Checkpoint::open(path, "fuzz") else {
        return false;
    };
    let names = ck.names().unwrap();
    for name in &names {
        let info = ck.info(name).unwrap();
        let bytes = ck.data(name).unwrap();
        // In shape order, as safetensors checks it: [u64::MAX, 0] holds no element.
        let want = info
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .and_then(|n| n.checked_mul(info.dtype.size()));
        assert_eq!(
            Some(bytes.len()),
            want,
            "{}: tensor `{name}`",
            path.display()
        );
    }
    let model = Model::new(ck);
    let summary = model.summary().unwrap();
    assert_eq!(summary.tensors as usize, names.len());
    for name in &names {
        // Converts, or says the dtype cannot be: either is fine, a panic is not.
        let _ = model.to_f32(name);
    }
    true
}

fn header_file(header: &[u8], data: &[u8], declared_len: Option<u64>) -> Vec<u8> {
    let mut out = declared_len
        .unwrap_or(header.len() as u64)
        .to_le_bytes()
        .to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

#[test]
fn corpus_files_open_or_fail_cleanly() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(files.len() >= 30, "{files:?}");
    let mut opened = Vec::new();
    for f in &files {
        if exercise(f) {
            opened.push(f.file_stem().unwrap().to_string_lossy().to_string());
        }
    }
    // The well-formed ones open; the others are refused (not read out of bounds).
    for name in [
        "valid",
        "scalar_tensor",
        "metadata_only",
        "f16_nan_inf",
        "dtype_bool",
    ] {
        assert!(opened.iter().any(|o| o == name), "{name} opens: {opened:?}");
    }
    for name in [
        "len_max",
        "len_past_end",
        "data_short",
        "offsets_overlap",
        "shape_overflow",
    ] {
        assert!(!opened.iter().any(|o| o == name), "{name} is refused");
    }
}

/// A header of up to four tensors whose fields are drawn from plausible and broken values.
fn header() -> impl Strategy<Value = (Vec<u8>, usize)> {
    let dtype = prop_oneof![
        6 => prop::sample::select(vec!["F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL"]),
        1 => prop::sample::select(vec!["F8_E4M3", "F7", "", "f32"]),
    ];
    let dim = prop_oneof![
        12 => 0u64..5,
        1 => Just(u64::from(u32::MAX) + 1),
        1 => Just(u64::MAX),
        1 => Just(1u64 << 62),
    ];
    let tensor = (
        "[a-z.]{0,6}",
        dtype,
        prop::collection::vec(dim, 0..4),
        prop_oneof![6 => Just(None), 1 => (0u64..64, 0u64..64).prop_map(Some)],
    );
    (prop::collection::vec(tensor, 0..4), any::<bool>()).prop_map(|(tensors, metadata)| {
        // Offsets: contiguous from the shapes unless the case breaks them.
        let mut entries = Vec::new();
        let mut at: u64 = 0;
        for (name, dtype, shape, broken) in &tensors {
            let size: u64 = match *dtype {
                "F64" | "I64" => 8,
                "F32" | "I32" => 4,
                "F16" | "BF16" => 2,
                _ => 1,
            };
            let numel = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
            let len = numel.and_then(|n| n.checked_mul(size)).unwrap_or(0).min(256);
            let (start, end) = broken.unwrap_or((at, at + len));
            at = at.max(end);
            entries.push(format!(
                "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape:?},\"data_offsets\":[{start},{end}]}}"
            ));
        }
        if metadata {
            entries.push("\"__metadata__\":{\"format\":\"pt\"}".to_string());
        }
        (format!("{{{}}}", entries.join(",")).into_bytes(), at as usize)
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fuzz.proptest-regressions"
        )))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_bytes_open_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        exercise(&path);
        // The same bytes behind a header length that covers them.
        std::fs::write(&path, header_file(&bytes, &[], None)).unwrap();
        exercise(&path);
    }

    #[test]
    fn any_header_opens_or_fails_cleanly(
        (header, data_len) in header(),
        extra in prop_oneof![4 => Just(0i64), 1 => -8i64..8],
        declared in prop_oneof![6 => Just(None), 1 => any::<u64>().prop_map(Some)],
        flips in prop_oneof![
            3 => Just(Vec::new()),
            1 => prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..3),
        ],
    ) {
        let data_len = (data_len as i64 + extra).max(0) as usize;
        let mut file = header_file(&header, &vec![0x3c; data_len], declared);
        for (at, byte) in flips {
            let i = at.index(file.len());
            file[i] ^= byte;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, &file).unwrap();
        exercise(&path);
        // As a checkpoint folder too.
        exercise(dir.path());
    }
}
