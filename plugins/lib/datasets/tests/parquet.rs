//! Parquet datasets in the Hugging Face layouts, read from local folders and files.

mod common;

use std::sync::Arc;

use common::{data, marker};
use fusion_datasets::{open, DatasetError, DatasetSpec, ImageDataset, ParquetDataset};

fn spec(rel: &str, split: &str) -> DatasetSpec {
    DatasetSpec::new(data(rel).to_string_lossy()).with_split(split)
}

/// (row marker, label) of every sample.
fn rows(ds: &dyn ImageDataset) -> Vec<(u8, i64)> {
    (0..ds.len())
        .map(|i| {
            let s = ds.get(i).unwrap();
            let (row, green) = marker(&s.image);
            assert_eq!(i64::from(green), s.label * 50, "label stored in the image");
            (row, s.label)
        })
        .collect()
}

#[test]
fn reads_push_to_hub_layout_test_split() {
    let ds = open(&spec("hf_parquet", "test")).unwrap();
    assert_eq!(ds.len(), 5);
    assert_eq!(
        rows(ds.as_ref()),
        vec![(0, 0), (1, 1), (2, 2), (3, 0), (4, 1)]
    );
    assert_eq!(
        ds.classes(),
        Some(vec!["cat".into(), "dog".into(), "bird".into()])
    );
    let d = ds.describe();
    assert!(d.contains("split 'test'") && d.contains("5 samples"), "{d}");
    // PNG bytes come back exactly as stored.
    assert!(ds.get(0).unwrap().image.starts_with(b"\x89PNG\r\n\x1a\n"));
}

#[test]
fn default_split_is_test() {
    let spec = DatasetSpec::new(data("hf_parquet").to_string_lossy());
    assert_eq!(spec.split, "test");
    assert_eq!(open(&spec).unwrap().len(), 5);
    // An empty split also means test.
    let spec = spec.with_split("");
    assert_eq!(open(&spec).unwrap().len(), 5);
}

#[test]
fn reads_shards_in_order() {
    let ds = open(&spec("hf_parquet", "train")).unwrap();
    let got: Vec<u8> = rows(ds.as_ref()).into_iter().map(|(r, _)| r).collect();
    assert_eq!(got, (10..17).collect::<Vec<u8>>());
    assert!(ds.describe().contains("2 file(s)"));
}

#[test]
fn corruption_splits_are_named_splits() {
    let ds = open(&spec("hf_parquet", "gaussian_noise")).unwrap();
    let got: Vec<u8> = rows(ds.as_ref()).into_iter().map(|(r, _)| r).collect();
    assert_eq!(got, vec![20, 21, 22]);
    // Old push_to_hub names carry a hash after the shard count.
    let ds = open(&spec("hf_parquet", "contrast")).unwrap();
    let got: Vec<u8> = rows(ds.as_ref()).into_iter().map(|(r, _)| r).collect();
    assert_eq!(got, vec![30, 31]);
}

#[test]
fn reads_convert_parquet_layout_with_configs() {
    let ds = open(&spec("hf_convert", "cropped_digits/test")).unwrap();
    let got: Vec<u8> = rows(ds.as_ref()).into_iter().map(|(r, _)| r).collect();
    assert_eq!(got, vec![40, 41, 42, 43, 44]);
    let ds = open(&spec("hf_convert", "full_numbers/test")).unwrap();
    assert_eq!(ds.len(), 2);
    // `train` exists in one config only, so it needs no qualification.
    let ds = open(&spec("hf_convert", "train")).unwrap();
    assert_eq!(rows(ds.as_ref()), vec![(60, 0)]);
}

#[test]
fn ambiguous_split_lists_configs() {
    let err = open(&spec("hf_convert", "test")).err().expect("ambiguous");
    assert!(matches!(err, DatasetError::AmbiguousSplit { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("cropped_digits") && msg.contains("full_numbers") && msg.contains("'test'"),
        "{msg}"
    );
}

#[test]
fn reads_plain_binary_zstd_with_small_row_groups() {
    // `img` and `labels` are the fallback default names; labels are int32.
    let ds = open(&spec("variants/plain_binary_zstd.parquet", "ignored")).unwrap();
    assert_eq!(
        rows(ds.as_ref()),
        (70u8..76)
            .map(|r| (r, i64::from(r % 3)))
            .collect::<Vec<_>>()
    );
    assert_eq!(ds.classes(), None);
}

#[test]
fn random_access_across_row_groups() {
    let paths = vec![data("variants/plain_binary_zstd.parquet")];
    // A budget of 0 bytes keeps only the latest row group, so every jump re-reads one group.
    let ds = ParquetDataset::open("zstd", None, &paths, None, None)
        .unwrap()
        .with_cache_bytes(0);
    for &i in &[5usize, 0, 3, 1, 4, 2, 5, 5, 0] {
        let s = ds.get(i).unwrap();
        assert_eq!(marker(&s.image).0, 70 + i as u8);
    }
    assert_eq!(ds.labels(), &[1, 2, 0, 1, 2, 0]);
    assert_eq!(ds.columns(), ("img", "labels"));
}

#[test]
fn concurrent_gets_agree() {
    let ds: Arc<dyn ImageDataset> = Arc::from(open(&spec("hf_parquet", "train")).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let ds = ds.clone();
            std::thread::spawn(move || {
                for k in 0..50 {
                    let i = (k * 7 + t) % ds.len();
                    assert_eq!(marker(&ds.get(i).unwrap().image).0, 10 + i as u8);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn reads_file_written_by_datasets_library() {
    let path = data("hf_datasets_lib");
    if !path.exists() {
        eprintln!(
            "skipped: {} was not generated (datasets not installed)",
            path.display()
        );
        return;
    }
    let ds = open(&spec("hf_datasets_lib", "test")).unwrap();
    assert_eq!(
        rows(ds.as_ref()),
        (80u8..84)
            .map(|r| (r, i64::from(r % 3)))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        ds.classes(),
        Some(vec!["cat".into(), "dog".into(), "bird".into()])
    );
}

#[test]
fn column_overrides() {
    let s = spec("hf_parquet", "test").with_columns(Some("image".into()), Some("label".into()));
    assert_eq!(open(&s).unwrap().len(), 5);
    // The image column may not be the label column's type.
    let s = spec("hf_parquet", "test").with_columns(Some("label".into()), None);
    let err = open(&s).err().expect("wrong type");
    let msg = err.to_string();
    assert!(matches!(err, DatasetError::ColumnType { .. }), "{msg}");
    assert!(
        msg.contains("'label'") && msg.contains("test-00000-of-00001.parquet"),
        "{msg}"
    );
}

#[test]
fn missing_split_lists_the_splits_found() {
    let err = open(&spec("hf_parquet", "validation"))
        .err()
        .expect("no split");
    let msg = err.to_string();
    assert!(matches!(err, DatasetError::SplitNotFound { .. }), "{msg}");
    for name in [
        "'validation'",
        "contrast",
        "gaussian_noise",
        "test",
        "train",
        "hf_parquet",
    ] {
        assert!(msg.contains(name), "{name} missing from: {msg}");
    }
    let err = open(&spec("hf_convert", "other/test"))
        .err()
        .expect("no config");
    assert!(err.to_string().contains("cropped_digits/test"), "{err}");
}

#[test]
fn missing_column_lists_the_columns() {
    let s = spec("hf_parquet", "test").with_columns(None, Some("fine_label".into()));
    let err = open(&s).err().expect("no column");
    let msg = err.to_string();
    assert!(matches!(err, DatasetError::ColumnNotFound { .. }), "{msg}");
    assert!(
        msg.contains("'fine_label'")
            && msg.contains("image, label")
            && msg.contains("test-00000-of-00001.parquet"),
        "{msg}"
    );
}

#[test]
fn index_out_of_range_names_dataset_and_index() {
    let ds = open(&spec("hf_parquet", "gaussian_noise")).unwrap();
    let err = ds.get(3).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            DatasetError::IndexOutOfRange {
                index: 3,
                len: 3,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("index 3") && msg.contains("gaussian_noise") && msg.contains("3 samples"),
        "{msg}"
    );
}

#[test]
fn corrupt_parquet_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(data("hf_parquet/data/test-00000-of-00001.parquet")).unwrap();
    // A truncated file: the footer is gone.
    let truncated = dir.path().join("data").join("test-00000-of-00001.parquet");
    std::fs::create_dir_all(truncated.parent().unwrap()).unwrap();
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    let err = open(&DatasetSpec::new(dir.path().to_string_lossy()))
        .err()
        .expect("corrupt");
    let msg = err.to_string();
    assert!(matches!(err, DatasetError::Parquet { .. }), "{msg}");
    assert!(msg.contains("test-00000-of-00001.parquet"), "{msg}");

    // Intact footer, garbage pages: opening works, reading the images fails with the file name.
    let mut bad = good.clone();
    let footer_len =
        u32::from_le_bytes(bad[bad.len() - 8..bad.len() - 4].try_into().unwrap()) as usize;
    let data_end = bad.len() - 8 - footer_len;
    for b in &mut bad[4..data_end] {
        *b = 0xAB;
    }
    let garbled = dir.path().join("garbled.parquet");
    std::fs::write(&garbled, &bad).unwrap();
    let result = open(&DatasetSpec::new(garbled.to_string_lossy())).and_then(|ds| ds.get(0));
    let err = result.expect_err("garbled pages");
    assert!(err.to_string().contains("garbled.parquet"), "{err}");

    // Not parquet at all.
    let text = dir.path().join("notes.parquet");
    std::fs::write(&text, b"hello").unwrap();
    let err = open(&DatasetSpec::new(text.to_string_lossy()))
        .err()
        .expect("not parquet");
    assert!(err.to_string().contains("notes.parquet"), "{err}");
}

#[test]
fn missing_source_is_an_error() {
    let err = open(&DatasetSpec::new("/nonexistent/folder/for/fusion"))
        .err()
        .expect("missing");
    assert!(
        err.to_string().contains("/nonexistent/folder/for/fusion"),
        "{err}"
    );
    let err = open(&DatasetSpec::new("  ")).err().expect("empty");
    assert!(matches!(err, DatasetError::InvalidSpec(_)), "{err}");
}

#[test]
fn damaged_bytes_give_errors_not_panics() {
    let good = std::fs::read(data("hf_parquet/data/test-00000-of-00001.parquet")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.parquet");
    let spec = DatasetSpec::new(path.to_string_lossy());
    for offset in (4..good.len() - 4).step_by(37) {
        let mut bytes = good.clone();
        bytes[offset] ^= 0x5A;
        std::fs::write(&path, &bytes).unwrap();
        // Either the damage is harmless, or it is an error naming the file.
        let result = open(&spec).and_then(|ds| (0..ds.len()).try_for_each(|i| ds.get(i).map(drop)));
        if let Err(e) = result {
            assert!(
                e.to_string().contains("damaged.parquet"),
                "offset {offset}: {e}"
            );
        }
    }
}

/// `locate` names the shard and the row within it, across shard boundaries.
#[test]
fn locate_names_the_shard_and_row_of_a_sample() {
    let ds = open(&spec("hf_parquet", "train")).unwrap();
    let first = ds.locate(0);
    assert!(
        first.starts_with("sample 0, row 0 of ") && first.ends_with("train-00000-of-00002.parquet"),
        "{first}"
    );
    // Shard 0 holds 4 rows, so sample 5 is row 1 of shard 1.
    let later = ds.locate(5);
    assert!(
        later.starts_with("sample 5, row 1 of ") && later.ends_with("train-00001-of-00002.parquet"),
        "{later}"
    );
    assert_eq!(ds.locate(7), "sample 7");
}
