//! IDX files (MNIST / Fashion-MNIST format), plain and gzipped.

mod common;

use std::path::Path;

use common::{data, decode_png};
use fusion_datasets::{open, DatasetError, DatasetSpec, IdxDataset, ImageDataset};

/// The pixels the fixture script wrote for image `i` (3 rows x 4 columns).
fn fixture_pixels(i: usize) -> Vec<u8> {
    (0..12).map(|p| ((i * 16 + p) % 256) as u8).collect()
}

#[test]
fn reads_plain_test_pair_from_folder() {
    let ds = open(&DatasetSpec::new(data("idx").to_string_lossy())).unwrap();
    assert_eq!(ds.len(), 5);
    for i in 0..5 {
        let s = ds.get(i).unwrap();
        assert_eq!(s.label, (i as i64 * 3) % 10);
        let (w, h, channels, px) = decode_png(&s.image);
        assert_eq!((w, h, channels), (4, 3, 1), "grayscale 4 wide, 3 high");
        assert_eq!(px, fixture_pixels(i));
    }
    assert!(
        ds.describe().contains("t10k-images-idx3-ubyte"),
        "{}",
        ds.describe()
    );
}

#[test]
fn reads_gzipped_train_pair() {
    let spec = DatasetSpec::new(data("idx").to_string_lossy()).with_split("train");
    let ds = open(&spec).unwrap();
    assert_eq!(ds.len(), 3);
    let (_, _, _, px) = decode_png(&ds.get(2).unwrap().image);
    assert_eq!(px, fixture_pixels(2));
    // The images file itself is a source too.
    let spec = DatasetSpec::new(data("idx/train-images-idx3-ubyte.gz").to_string_lossy());
    assert_eq!(open(&spec).unwrap().len(), 3);
}

#[test]
fn errors_name_the_file_or_split() {
    let spec = DatasetSpec::new(data("idx").to_string_lossy()).with_split("validation");
    let err = open(&spec).err().expect("no such split");
    let msg = err.to_string();
    assert!(matches!(err, DatasetError::IdxPair { .. }), "{msg}");
    assert!(
        msg.contains("'validation'") && msg.contains("t10k-images-idx3-ubyte"),
        "{msg}"
    );

    let dir = tempfile::tempdir().unwrap();
    let images = std::fs::read(data("idx/t10k-images-idx3-ubyte")).unwrap();
    let labels = std::fs::read(data("idx/t10k-labels-idx1-ubyte")).unwrap();
    // Truncated images file.
    let bad_images = dir.path().join("bad-images-idx3-ubyte");
    std::fs::write(&bad_images, &images[..images.len() - 1]).unwrap();
    std::fs::write(dir.path().join("bad-labels-idx1-ubyte"), &labels).unwrap();
    let err = open(&DatasetSpec::new(bad_images.to_string_lossy()))
        .err()
        .expect("truncated");
    assert!(matches!(err, DatasetError::Idx { .. }), "{err}");
    assert!(err.to_string().contains("bad-images-idx3-ubyte"), "{err}");
    // Labels that do not match the image count.
    let short_images = dir.path().join("short-images-idx3-ubyte");
    std::fs::write(&short_images, &images).unwrap();
    let mut short_labels = labels.clone();
    short_labels[7] = 4; // count 4 instead of 5
    short_labels.pop();
    std::fs::write(dir.path().join("short-labels-idx1-ubyte"), &short_labels).unwrap();
    let err = open(&DatasetSpec::new(short_images.to_string_lossy()))
        .err()
        .expect("mismatch");
    assert!(err.to_string().contains("short-labels-idx1-ubyte"), "{err}");
    // Labels file missing.
    let lonely = dir.path().join("lonely-images-idx3-ubyte");
    std::fs::write(&lonely, &images).unwrap();
    let err = open(&DatasetSpec::new(lonely.to_string_lossy()))
        .err()
        .expect("no labels");
    assert!(
        err.to_string().contains("lonely-labels-idx1-ubyte"),
        "{err}"
    );

    let ds = IdxDataset::open(
        "fixture",
        &data("idx/t10k-images-idx3-ubyte"),
        &data("idx/t10k-labels-idx1-ubyte"),
    )
    .unwrap();
    let err = ds.get(5).unwrap_err();
    assert!(
        err.to_string().contains("fixture") && err.to_string().contains("index 5"),
        "{err}"
    );
}

#[test]
fn real_fashion_mnist() {
    let folder = Path::new("/usr/share/datasets/fashion-mnist");
    if !folder.is_dir() {
        eprintln!("skipped: {} is missing", folder.display());
        return;
    }
    let ds = open(&DatasetSpec::new(folder.to_string_lossy())).unwrap();
    assert_eq!(ds.len(), 10_000);
    // The first test images are an ankle boot (9), a pullover (2), trousers (1), trousers (1).
    let labels: Vec<i64> = (0..4).map(|i| ds.get(i).unwrap().label).collect();
    assert_eq!(labels, vec![9, 2, 1, 1]);
    let (w, h, channels, px) = decode_png(&ds.get(0).unwrap().image);
    assert_eq!((w, h, channels, px.len()), (28, 28, 1, 784));
    assert!(px.iter().any(|&p| p > 0));
    let last = ds.get(9_999).unwrap();
    assert!((0..10).contains(&last.label));
    // Every class appears 1000 times in the test split.
    let idx = IdxDataset::open_split("fashion", folder, "test").unwrap();
    for class in 0..10 {
        assert_eq!(idx.labels().iter().filter(|&&l| l == class).count(), 1000);
    }
    assert_eq!(idx.image_size(), (28, 28));
}

/// `locate` names the image's index in the images file.
#[test]
fn locate_names_the_images_file() {
    let ds = open(&DatasetSpec::new(data("idx").to_string_lossy())).unwrap();
    let got = ds.locate(3);
    assert!(
        got.starts_with("sample 3, image 3 of ") && got.contains("t10k-images-idx3-ubyte"),
        "{got}"
    );
}
