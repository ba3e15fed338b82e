//! Image-classification dataset readers for fusion-host.
//!
//! FusionBench scores merged CLIP vision encoders on the test splits of image-classification
//! datasets (SUN397, Cars, RESISC45, EuroSAT, SVHN, GTSRB, MNIST, DTD, ... and the corruption
//! splits of `tanganke/*` repos). This crate reads them into one shape, [`Sample`]: the image as
//! encoded PNG/JPEG bytes (decoding and preprocessing belong to the CLIP task pool) and an
//! integer label.
//!
//! [`open`] takes a [`DatasetSpec`] whose `source` is any of:
//!
//! * a **Hugging Face dataset id** (`tanganke/eurosat`, `org/name@revision`,
//!   `hf://datasets/org/name`), fetched through the host's hub ([`fusion_plugin_api::hub`]): from
//!   the Hugging Face cache, downloaded into it when missing (only the split's files);
//! * a **local folder** holding a parquet dataset repository in any of the layouts Hugging Face
//!   uses (`data/<split>-0000N-of-0000M.parquet`,
//!   `<config>/<split>/0000.parquet`, `<split>/*.parquet`, ...), an **image folder**
//!   (`root/[<split>/]<class>/*.png|jpg|jpeg`), or **IDX files** (`t10k-images-idx3-ubyte[.gz]`
//!   and its labels file);
//! * a single **`.parquet` file** or an **IDX images file**.
//!
//! The split may be any name (`test`, `train`, `validation`, `gaussian_noise`, ...) and may be
//! qualified by a config as `<config>/<split>` (`cropped_digits/test` for SVHN).
//!
//! ```no_run
//! use fusion_datasets::{open, DatasetSpec};
//! let test = open(&DatasetSpec::new("tanganke/eurosat"))?;
//! for i in 0..test.len() {
//!     let sample = test.get(i)?;
//!     // sample.image: PNG/JPEG bytes, sample.label: class index
//! }
//! # Ok::<(), fusion_datasets::DatasetError>(())
//! ```

use std::path::{Path, PathBuf};

use fusion_plugin_api::hub::Hub;

mod error;
pub mod folder;
pub mod hub;
pub mod idx;
mod layout;
pub mod parquet_ds;

pub use error::DatasetError;
pub use folder::ImageFolderDataset;
pub use hub::HubId;
pub use idx::IdxDataset;
pub use parquet_ds::ParquetDataset;

/// One example: the image as stored (encoded PNG or JPEG bytes) and its class index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Encoded image bytes (PNG or JPEG), exactly as stored; IDX images are encoded as
    /// grayscale PNG.
    pub image: Vec<u8>,
    /// The class index.
    pub label: i64,
}

/// A random-access image-classification dataset (one split).
pub trait ImageDataset: Send + Sync {
    /// The number of samples.
    fn len(&self) -> usize;

    /// Whether the dataset has no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sample at `index` (`0..len()`); an index past the end is an error that names it.
    fn get(&self, index: usize) -> Result<Sample, DatasetError>;

    /// A one-line description: the kind of source, the split, the size, where it was read from.
    fn describe(&self) -> String;

    /// Where sample `index` is stored, for messages about that one sample (an image that
    /// does not decode): the image file of a folder dataset, the row and file of a parquet
    /// dataset, the image and file of IDX files.
    fn locate(&self, index: usize) -> String {
        format!("sample {index}")
    }

    /// The class names, index = label, when the source records them (image folders; parquet
    /// files written by `datasets` with a `ClassLabel` feature).
    fn classes(&self) -> Option<Vec<String>> {
        None
    }
}

/// Which dataset to open, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetSpec {
    /// A hub id (`org/name`, `org/name@revision`, `hf://datasets/org/name`) or a local path
    /// (folder, `.parquet` file, IDX images file).
    pub source: String,
    /// The split: `test` (the default), `train`, `validation`, a corruption name such as
    /// `gaussian_noise`, or `<config>/<split>`. Ignored when `source` is a single file.
    pub split: String,
    /// The image column of parquet files; `None` tries `image` then `img`.
    pub image_column: Option<String>,
    /// The label column of parquet files; `None` tries `label` then `labels`.
    pub label_column: Option<String>,
}

impl DatasetSpec {
    /// The `test` split of `source`, default columns.
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            ..Self::default()
        }
    }

    /// The same spec with another split.
    pub fn with_split(mut self, split: impl Into<String>) -> Self {
        self.split = split.into();
        self
    }

    /// The same spec with explicit image and label columns.
    pub fn with_columns(mut self, image: Option<String>, label: Option<String>) -> Self {
        self.image_column = image;
        self.label_column = label;
        self
    }
}

impl Default for DatasetSpec {
    fn default() -> Self {
        Self {
            source: String::new(),
            split: "test".to_string(),
            image_column: None,
            label_column: None,
        }
    }
}

/// Opens a dataset split; hub ids go through the installed hub
/// ([`fusion_plugin_api::hub::current`], which the host provides to every plugin).
pub fn open(spec: &DatasetSpec) -> Result<Box<dyn ImageDataset>, DatasetError> {
    let hub = fusion_plugin_api::hub::installed();
    open_inner(spec, hub.as_deref())
}

/// Opens a dataset split, fetching hub ids through `hub`. A source that exists as a local path
/// is always read as one, even when it also looks like a hub id.
pub fn open_with_hub(
    spec: &DatasetSpec,
    hub: &dyn Hub,
) -> Result<Box<dyn ImageDataset>, DatasetError> {
    open_inner(spec, Some(hub))
}

fn open_inner(
    spec: &DatasetSpec,
    hub: Option<&dyn Hub>,
) -> Result<Box<dyn ImageDataset>, DatasetError> {
    let source = spec.source.trim();
    if source.is_empty() {
        return Err(DatasetError::InvalidSpec(
            "the dataset source is empty".into(),
        ));
    }
    let split = match spec.split.trim() {
        "" => "test",
        s => s,
    };
    let local = Path::new(source);
    if local.exists() {
        return open_local(local, source, split, spec);
    }
    match HubId::parse(source) {
        Some(id) => {
            let hub = match hub {
                Some(hub) => hub,
                None => {
                    return Err(DatasetError::Hub {
                        source_name: id.to_string(),
                        message: fusion_plugin_api::hub::current()
                            .err()
                            .map(|e| e.message().to_string())
                            .unwrap_or_default(),
                    })
                }
            };
            hub::open(&id, hub, split, spec)
        }
        None => Err(DatasetError::io(
            local,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such file or folder (and not a hub id such as org/name)",
            ),
        )),
    }
}

/// Opens a local file or folder; `label` names the source in messages.
pub(crate) fn open_local(
    path: &Path,
    label: &str,
    split: &str,
    spec: &DatasetSpec,
) -> Result<Box<dyn ImageDataset>, DatasetError> {
    let columns = (spec.image_column.as_deref(), spec.label_column.as_deref());
    if path.is_file() {
        if idx::is_images_file(path) {
            let labels = idx::labels_for(path)?;
            return Ok(Box::new(IdxDataset::open(label, path, &labels)?));
        }
        // Anything else is read as parquet; a non-parquet file gets the parquet error naming it.
        let name = format!("'{label}'");
        let parent = path.parent();
        return Ok(Box::new(ParquetDataset::open(
            name,
            parent,
            &[path.to_path_buf()],
            columns.0,
            columns.1,
        )?));
    }
    let name = format!("'{label}' split '{split}'");
    let dataset = display_name(label, path);
    let parquet_files = layout::find_parquet_files(path)?;
    if !parquet_files.is_empty() {
        let picked = layout::select_split(&parquet_files, &dataset, split)?;
        let paths: Vec<PathBuf> = picked.into_iter().map(|f| f.path).collect();
        return Ok(Box::new(ParquetDataset::open(
            name,
            Some(path),
            &paths,
            columns.0,
            columns.1,
        )?));
    }
    if !idx::images_files(path).is_empty() {
        return Ok(Box::new(IdxDataset::open_split(name, path, split)?));
    }
    let root = image_folder_root(path, &dataset, split)?;
    Ok(Box::new(ImageFolderDataset::open(name, &root)?))
}

/// How a source is named in messages: the path, or the hub id with its snapshot folder.
fn display_name(label: &str, path: &Path) -> String {
    if Path::new(label) == path {
        label.to_string()
    } else {
        format!("{label} ({})", path.display())
    }
}

/// Split folder names recognised in image-folder datasets.
const SPLIT_FOLDERS: &[&str] = &["train", "test", "validation", "val", "valid", "dev"];

/// The class-folder root of an image folder: `path/<split>` when the folder is organised by
/// split, else `path` itself.
fn image_folder_root(path: &Path, dataset: &str, split: &str) -> Result<PathBuf, DatasetError> {
    let sub = path.join(split);
    if !split.contains(['/', '\\']) && sub.is_dir() && folder::has_images_within(&sub, 1) {
        return Ok(sub);
    }
    let folders = folder::sub_folders(path)?;
    let split_folders: Vec<String> = folders
        .iter()
        .filter(|f| SPLIT_FOLDERS.contains(&f.as_str()))
        .cloned()
        .collect();
    if !split_folders.is_empty() {
        return Err(DatasetError::SplitNotFound {
            dataset: dataset.to_string(),
            split: split.to_string(),
            available: split_folders,
        });
    }
    if !folder::has_images_within(path, 2) {
        return Err(DatasetError::SplitNotFound {
            dataset: dataset.to_string(),
            split: split.to_string(),
            available: Vec::new(),
        });
    }
    Ok(path.to_path_buf())
}
