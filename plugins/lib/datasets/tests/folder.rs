//! Image folders: `root/[<split>/]<class>/*.{png,jpg,jpeg}`.

mod common;

use common::{data, marker};
use fusion_datasets::{open, DatasetError, DatasetSpec, ImageFolderDataset};

#[test]
fn reads_split_folder_with_sorted_classes() {
    let spec = DatasetSpec::new(data("image_folder").to_string_lossy());
    let ds = open(&spec).unwrap();
    assert_eq!(ds.len(), 6);
    assert_eq!(
        ds.classes(),
        Some(vec!["bird".to_string(), "cat".into(), "dog".into()])
    );
    let labels: Vec<i64> = (0..6).map(|i| ds.get(i).unwrap().label).collect();
    assert_eq!(labels, vec![0, 0, 1, 1, 2, 2]);
    // PNGs come back byte for byte; the last dog is a JPEG.
    for i in 0..5 {
        let s = ds.get(i).unwrap();
        assert_eq!(marker(&s.image), (i as u8, (s.label * 50) as u8));
    }
    let jpeg = ds.get(5).unwrap().image;
    assert!(jpeg.starts_with(&[0xFF, 0xD8, 0xFF]), "a JPEG");
    assert_eq!(
        jpeg,
        std::fs::read(data("image_folder/test/dog/01.jpg")).unwrap()
    );
    assert!(ds.describe().contains("3 classes"), "{}", ds.describe());
}

#[test]
fn reads_train_split_and_class_root() {
    let spec = DatasetSpec::new(data("image_folder").to_string_lossy()).with_split("train");
    let ds = open(&spec).unwrap();
    let rows: Vec<u8> = (0..ds.len())
        .map(|i| marker(&ds.get(i).unwrap().image).0)
        .collect();
    assert_eq!(rows, vec![6, 7, 8]);
    // The class root itself: the split is not needed.
    let ds = open(&DatasetSpec::new(
        data("image_folder/train").to_string_lossy(),
    ))
    .unwrap();
    assert_eq!(ds.len(), 3);
    let direct = ImageFolderDataset::open("direct", &data("image_folder/test")).unwrap();
    assert_eq!(direct.items().len(), 6);
    assert!(direct
        .items()
        .iter()
        .all(|(p, _)| !p.ends_with("notes.txt")));
}

#[test]
fn missing_split_lists_split_folders() {
    let spec = DatasetSpec::new(data("image_folder").to_string_lossy()).with_split("validation");
    let err = open(&spec).err().expect("no validation split");
    let msg = err.to_string();
    assert!(matches!(err, DatasetError::SplitNotFound { .. }), "{msg}");
    assert!(
        msg.contains("'validation'") && msg.contains("test, train"),
        "{msg}"
    );
}

#[test]
fn index_out_of_range_and_empty_folders() {
    let ds = open(&DatasetSpec::new(data("image_folder").to_string_lossy())).unwrap();
    let err = ds.get(6).unwrap_err();
    assert!(
        err.to_string().contains("index 6") && err.to_string().contains("6 samples"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("a")).unwrap();
    std::fs::write(dir.path().join("a").join("x.txt"), b"x").unwrap();
    let err = ImageFolderDataset::open("empty", dir.path())
        .err()
        .expect("no images");
    assert!(matches!(err, DatasetError::ImageFolder { .. }), "{err}");
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
}

/// `locate` names the image file of a sample.
#[test]
fn locate_names_the_image_file() {
    let ds = open(&DatasetSpec::new(data("image_folder").to_string_lossy())).unwrap();
    let got = ds.locate(5);
    assert!(
        got.starts_with("sample 5, ") && got.ends_with("dog/01.jpg"),
        "{got}"
    );
    assert_eq!(ds.locate(6), "sample 6");
}
