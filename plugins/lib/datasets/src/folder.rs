//! Image folders in the torchvision `ImageFolder` layout: `root/<class>/**/*.{png,jpg,jpeg}`.
//! The label of an image is the index of its class folder in sorted order; within a class,
//! files are in sorted path order.

use std::path::{Path, PathBuf};

use crate::{DatasetError, ImageDataset, Sample};

/// File extensions read as images (case-insensitive).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];

/// An image-folder dataset. Images are read from disk on each `get`.
pub struct ImageFolderDataset {
    name: String,
    root: PathBuf,
    classes: Vec<String>,
    items: Vec<(PathBuf, i64)>,
}

impl ImageFolderDataset {
    /// Reads the class folders of `root` (the folder that holds one sub-folder per class).
    /// `name` is used in messages.
    pub fn open(name: impl Into<String>, root: &Path) -> Result<Self, DatasetError> {
        let classes = sub_folders(root)?;
        if classes.is_empty() {
            return Err(DatasetError::ImageFolder {
                root: root.to_path_buf(),
                reason: "no class folders (expected <root>/<class>/<image>.png|jpg|jpeg)".into(),
            });
        }
        let mut items = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let mut files = Vec::new();
            collect_images(&root.join(class), &mut files, 0)?;
            files.sort();
            items.extend(files.into_iter().map(|f| (f, label as i64)));
        }
        if items.is_empty() {
            return Err(DatasetError::ImageFolder {
                root: root.to_path_buf(),
                reason: format!(
                    "no .png/.jpg/.jpeg files in the class folders ({})",
                    classes.join(", ")
                ),
            });
        }
        Ok(Self {
            name: name.into(),
            root: root.to_path_buf(),
            classes,
            items,
        })
    }

    /// The image files, in sample order, with their labels.
    pub fn items(&self) -> &[(PathBuf, i64)] {
        &self.items
    }
}

impl ImageDataset for ImageFolderDataset {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn get(&self, index: usize) -> Result<Sample, DatasetError> {
        let (path, label) = self
            .items
            .get(index)
            .ok_or_else(|| DatasetError::IndexOutOfRange {
                dataset: self.name.clone(),
                index,
                len: self.items.len(),
            })?;
        let image = std::fs::read(path).map_err(|e| DatasetError::io(path, e))?;
        Ok(Sample {
            image,
            label: *label,
        })
    }

    fn describe(&self) -> String {
        format!(
            "image folder {}: {} samples, {} classes, under {}",
            self.name,
            self.items.len(),
            self.classes.len(),
            self.root.display()
        )
    }

    fn locate(&self, index: usize) -> String {
        match self.items.get(index) {
            Some((path, _)) => format!("sample {index}, {}", path.display()),
            None => format!("sample {index}"),
        }
    }

    fn classes(&self) -> Option<Vec<String>> {
        Some(self.classes.clone())
    }
}

/// Sorted names of the visible sub-folders of `dir`.
pub(crate) fn sub_folders(dir: &Path) -> Result<Vec<String>, DatasetError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DatasetError::io(dir, e))? {
        let entry = entry.map_err(|e| DatasetError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && entry.path().is_dir() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Whether `path` has an image extension.
pub(crate) fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Whether `dir` holds images directly or one level down (a class folder or a split folder).
pub(crate) fn has_images_within(dir: &Path, depth: usize) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let p = e.path();
            (p.is_file() && is_image(&p))
                || (depth > 0 && p.is_dir() && has_images_within(&p, depth - 1))
        })
}

/// Collects the image files under `dir`, recursively (hidden entries skipped).
fn collect_images(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) -> Result<(), DatasetError> {
    if depth > 16 {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).map_err(|e| DatasetError::io(dir, e))? {
        let entry = entry.map_err(|e| DatasetError::io(dir, e))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            collect_images(&path, out, depth + 1)?;
        } else if is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}
