//! IDX files, the MNIST / Fashion-MNIST / EMNIST / KMNIST format: a pair
//! `<prefix>-images-idx3-ubyte` (u8 pixels, `n x rows x cols`) and `<prefix>-labels-idx1-ubyte`,
//! either possibly gzipped. Images are re-encoded as 8-bit grayscale PNG on `get`, so every
//! source yields encoded image bytes.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{DatasetError, ImageDataset, Sample};

/// An IDX image/label pair, held in memory (Fashion-MNIST's test set is 7.8 MB).
pub struct IdxDataset {
    name: String,
    images_path: PathBuf,
    labels_path: PathBuf,
    pixels: Vec<u8>,
    rows: usize,
    cols: usize,
    labels: Vec<i64>,
}

/// The element types of the IDX format.
fn dtype_size(code: u8) -> Option<usize> {
    match code {
        0x08 | 0x09 => Some(1),
        0x0B => Some(2),
        0x0C | 0x0D => Some(4),
        0x0E => Some(8),
        _ => None,
    }
}

/// A parsed IDX file: its element type, dimensions and payload.
struct IdxFile {
    dtype: u8,
    dims: Vec<usize>,
    data: Vec<u8>,
}

/// Reads an IDX file, transparently gunzipping it when it starts with the gzip magic.
fn read_idx(path: &Path) -> Result<IdxFile, DatasetError> {
    let raw = std::fs::read(path).map_err(|e| DatasetError::io(path, e))?;
    let bad = |reason: String| DatasetError::Idx {
        file: path.to_path_buf(),
        reason,
    };
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("cannot gunzip: {e}")))?;
        out
    } else {
        raw
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad(
            "bad magic number (expected 0x00 0x00 <type> <ndim>)".into()
        ));
    }
    let dtype = bytes[2];
    let size =
        dtype_size(dtype).ok_or_else(|| bad(format!("unknown element type 0x{dtype:02x}")))?;
    let ndim = usize::from(bytes[3]);
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(bad(format!(
            "truncated header ({ndim} dimensions announced)"
        )));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| {
            let b = &bytes[4 + 4 * i..8 + 4 * i];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let expected = dims
        .iter()
        .try_fold(size, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
    let payload = bytes.len() - header;
    if payload != expected {
        return Err(bad(format!(
            "dimensions {dims:?} need {expected} bytes of data, the file has {payload}"
        )));
    }
    Ok(IdxFile {
        dtype,
        dims,
        data: bytes[header..].to_vec(),
    })
}

impl IdxDataset {
    /// Opens an images file and its labels file. `name` is used in messages.
    pub fn open(
        name: impl Into<String>,
        images_path: &Path,
        labels_path: &Path,
    ) -> Result<Self, DatasetError> {
        let images = read_idx(images_path)?;
        let bad_images = |reason: String| DatasetError::Idx {
            file: images_path.to_path_buf(),
            reason,
        };
        if images.dtype != 0x08 {
            return Err(bad_images(format!(
                "images must be unsigned bytes (type 0x08), found type 0x{:02x}",
                images.dtype
            )));
        }
        let (n, rows, cols) = match images.dims.as_slice() {
            [n, r, c] => (*n, *r, *c),
            [n, r] => (*n, *r, 1),
            other => {
                return Err(bad_images(format!(
                    "images must have 3 dimensions (count, rows, columns), found {other:?}"
                )))
            }
        };
        if n > 0 && (rows == 0 || cols == 0) {
            return Err(bad_images(format!("empty image size {rows}x{cols}")));
        }
        let label_file = read_idx(labels_path)?;
        let bad_labels = |reason: String| DatasetError::Idx {
            file: labels_path.to_path_buf(),
            reason,
        };
        if label_file.dims.len() != 1 {
            return Err(bad_labels(format!(
                "labels must have 1 dimension, found {:?}",
                label_file.dims
            )));
        }
        let labels: Vec<i64> = match label_file.dtype {
            0x08 => label_file.data.iter().map(|&b| i64::from(b)).collect(),
            0x09 => label_file
                .data
                .iter()
                .map(|&b| i64::from(b as i8))
                .collect(),
            0x0B => label_file
                .data
                .chunks_exact(2)
                .map(|c| i64::from(i16::from_be_bytes([c[0], c[1]])))
                .collect(),
            0x0C => label_file
                .data
                .chunks_exact(4)
                .map(|c| i64::from(i32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
            other => {
                return Err(bad_labels(format!(
                    "labels must be integers, found type 0x{other:02x}"
                )))
            }
        };
        if labels.len() != n {
            return Err(bad_labels(format!(
                "{} labels for {n} images in {}",
                labels.len(),
                images_path.display()
            )));
        }
        Ok(Self {
            name: name.into(),
            images_path: images_path.to_path_buf(),
            labels_path: labels_path.to_path_buf(),
            pixels: images.data,
            rows,
            cols,
            labels,
        })
    }

    /// Finds the pair for `split` in `folder` and opens it. The split `test` matches the
    /// prefixes `t10k` and `test`; any other split matches itself (`train`, or EMNIST's
    /// `emnist-letters-test` through its last `-` token).
    pub fn open_split(
        name: impl Into<String>,
        folder: &Path,
        split: &str,
    ) -> Result<Self, DatasetError> {
        let (images, labels) = find_pair(folder, split)?;
        Self::open(name, &images, &labels)
    }

    /// All labels, in order.
    pub fn labels(&self) -> &[i64] {
        &self.labels
    }

    /// The image size as (rows, columns).
    pub fn image_size(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The raw pixels of image `index` (row-major, `rows * cols` bytes).
    pub fn pixels(&self, index: usize) -> Option<&[u8]> {
        let size = self.rows * self.cols;
        (index < self.labels.len()).then(|| &self.pixels[index * size..(index + 1) * size])
    }
}

impl ImageDataset for IdxDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn get(&self, index: usize) -> Result<Sample, DatasetError> {
        let pixels = self
            .pixels(index)
            .ok_or_else(|| DatasetError::IndexOutOfRange {
                dataset: self.name.clone(),
                index,
                len: self.labels.len(),
            })?;
        let image =
            encode_gray_png(pixels, self.cols as u32, self.rows as u32).map_err(|source| {
                DatasetError::Encode {
                    dataset: self.name.clone(),
                    index,
                    source,
                }
            })?;
        Ok(Sample {
            image,
            label: self.labels[index],
        })
    }

    fn locate(&self, index: usize) -> String {
        if index >= self.labels.len() {
            return format!("sample {index}");
        }
        format!(
            "sample {index}, image {index} of {}",
            self.images_path.display()
        )
    }

    fn describe(&self) -> String {
        format!(
            "IDX dataset {}: {} grayscale {}x{} images from {} and {}",
            self.name,
            self.labels.len(),
            self.cols,
            self.rows,
            self.images_path.display(),
            self.labels_path.display()
        )
    }
}

/// Encodes 8-bit grayscale pixels as a PNG.
pub fn encode_gray_png(
    pixels: &[u8],
    width: u32,
    height: u32,
) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::with_capacity(pixels.len() + 128);
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Fast);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(pixels)?;
        writer.finish()?;
    }
    Ok(out)
}

/// The file-name prefix of an IDX images file (`t10k` for `t10k-images-idx3-ubyte.gz`), if it is one.
fn images_prefix(file_name: &str) -> Option<&str> {
    let base = file_name.strip_suffix(".gz").unwrap_or(file_name);
    ["-images-idx3-ubyte", "-images.idx3-ubyte"]
        .iter()
        .find_map(|suffix| base.strip_suffix(suffix))
}

/// Whether `path` names an IDX images file.
pub(crate) fn is_images_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(images_prefix)
        .is_some()
}

/// The labels file that goes with an images file (plain or gzipped, whichever exists).
pub(crate) fn labels_for(images: &Path) -> Result<PathBuf, DatasetError> {
    let name = images
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let base = name.strip_suffix(".gz").unwrap_or(name);
    let labels_base = base
        .replace("-images-idx3-ubyte", "-labels-idx1-ubyte")
        .replace("-images.idx3-ubyte", "-labels.idx1-ubyte");
    let dir = images.parent().unwrap_or(Path::new("."));
    let candidates = [
        dir.join(&labels_base),
        dir.join(format!("{labels_base}.gz")),
    ];
    candidates
        .iter()
        .find(|c| c.is_file())
        .cloned()
        .ok_or_else(|| DatasetError::IdxPair {
            folder: dir.to_path_buf(),
            reason: format!(
                "no labels file for {name} (looked for {labels_base} and {labels_base}.gz)"
            ),
        })
}

/// Lists the IDX images files of `folder`, sorted.
pub(crate) fn images_files(folder: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && is_images_file(p))
        .collect();
    files.sort();
    files
}

/// Finds the images/labels pair of `split` in `folder`.
fn find_pair(folder: &Path, split: &str) -> Result<(PathBuf, PathBuf), DatasetError> {
    let prefixes: Vec<&str> = match split {
        "test" => vec!["t10k", "test"],
        other => vec![other],
    };
    let files = images_files(folder);
    let prefix_of = |p: &PathBuf| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(images_prefix)
            .map(str::to_string)
            .unwrap_or_default()
    };
    let matches_split = |prefix: &str| {
        prefixes
            .iter()
            .any(|want| prefix == *want || prefix.ends_with(&format!("-{want}")))
    };
    let mut matching: Vec<&PathBuf> = files
        .iter()
        .filter(|p| matches_split(&prefix_of(p)))
        .collect();
    // The same file plain and gzipped: prefer the plain one.
    matching.sort_by_key(|p| (prefix_of(p), p.extension().is_some_and(|e| e == "gz")));
    matching.dedup_by_key(|p| prefix_of(p));
    let found = || {
        files
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
    };
    match matching.as_slice() {
        [one] => Ok(((*one).clone(), labels_for(one)?)),
        [] => Err(DatasetError::IdxPair {
            folder: folder.to_path_buf(),
            reason: format!(
                "no IDX images file for split '{split}' (looked for {}-images-idx3-ubyte[.gz]; \
                 images files found: {})",
                prefixes.join("|"),
                crate::error::list(&found())
            ),
        }),
        many => Err(DatasetError::IdxPair {
            folder: folder.to_path_buf(),
            reason: format!(
                "several IDX images files match split '{split}': {}; give the images file path instead",
                many.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}
