//! Parquet splits as Hugging Face `datasets` writes them.
//!
//! The image column is either the `datasets.Image` struct `{bytes: binary, path: string}` or
//! plain `binary`; the label column is any integer column. Labels are read once when the
//! dataset is opened (they are small); image bytes are decoded one row group at a time, on
//! demand, and kept in a small cache bounded by bytes, so a sequential pass decodes every row
//! group once and random access never decodes a whole file per `get`.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use parquet::basic::{ConvertedType, LogicalType, Type as PhysicalType};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use parquet::schema::types::{Type, TypePtr};

use crate::{DatasetError, ImageDataset, Sample};

/// Default image column names, tried in order.
pub const DEFAULT_IMAGE_COLUMNS: &[&str] = &["image", "img"];
/// Default label column names, tried in order.
pub const DEFAULT_LABEL_COLUMNS: &[&str] = &["label", "labels"];
/// Default budget for decoded row groups kept in memory (the most recent one is always kept).
pub const DEFAULT_CACHE_BYTES: usize = 512 << 20;

/// How the image column is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ImageKind {
    /// `struct<bytes: binary, path: string>` (`datasets.Image`).
    Struct,
    /// Plain `binary`.
    Binary,
}

/// One parquet file of the split.
struct PartFile {
    path: PathBuf,
    reader: SerializedFileReader<File>,
    /// Projection of the file schema onto the image column.
    image_projection: Type,
}

/// A row group, placed in the split's global row numbering.
#[derive(Debug, Clone, Copy)]
struct GroupRef {
    file: usize,
    group: usize,
    /// Global index of the group's first row.
    start: usize,
    /// Index of the group's first row within its file.
    file_row: usize,
    rows: usize,
}

/// Decoded image bytes of one row group.
type Decoded = Arc<Vec<Vec<u8>>>;

/// A split of a parquet dataset: one or more files (shards) read as one sequence of rows.
pub struct ParquetDataset {
    name: String,
    root: Option<PathBuf>,
    files: Vec<PartFile>,
    groups: Vec<GroupRef>,
    labels: Vec<i64>,
    classes: Option<Vec<String>>,
    image_column: String,
    label_column: String,
    image_kind: ImageKind,
    /// One slot per row group: its decoded images, when cached.
    slots: Vec<Mutex<Option<Decoded>>>,
    /// Cached row groups, least recently loaded first, with their sizes in bytes.
    resident: Mutex<VecDeque<(usize, usize)>>,
    cache_bytes: usize,
}

impl ParquetDataset {
    /// Opens the files of one split, in order. `name` is used in messages (for example
    /// `tanganke/eurosat split 'test'`); `root` is the repository folder, used to resolve image
    /// `path`s of rows whose bytes are not embedded. `None` columns mean the defaults
    /// ([`DEFAULT_IMAGE_COLUMNS`], [`DEFAULT_LABEL_COLUMNS`]).
    pub fn open(
        name: impl Into<String>,
        root: Option<&Path>,
        paths: &[PathBuf],
        image_column: Option<&str>,
        label_column: Option<&str>,
    ) -> Result<Self, DatasetError> {
        let name = name.into();
        if paths.is_empty() {
            return Err(DatasetError::InvalidSpec(format!(
                "{name}: no parquet files to read"
            )));
        }
        let mut files = Vec::with_capacity(paths.len());
        let mut groups = Vec::new();
        let mut labels = Vec::new();
        let mut classes = None;
        let mut columns: Option<(String, String, ImageKind)> = None;
        for (file_index, path) in paths.iter().enumerate() {
            let handle = File::open(path).map_err(|e| DatasetError::io(path, e))?;
            let reader = guarded(path, || {
                SerializedFileReader::new(handle).map_err(|source| DatasetError::Parquet {
                    file: path.clone(),
                    source,
                })
            })?;
            let schema = reader.metadata().file_metadata().schema();
            let image = find_column(path, schema, image_column, DEFAULT_IMAGE_COLUMNS)?;
            let label = find_column(path, schema, label_column, DEFAULT_LABEL_COLUMNS)?;
            let kind = image_kind(path, &image)?;
            check_label_type(path, &label)?;
            match &columns {
                None => {
                    columns = Some((image.name().to_string(), label.name().to_string(), kind));
                    classes = class_names(&reader, label.name());
                }
                Some((i, l, k)) if i == image.name() && l == label.name() && *k == kind => {}
                Some((i, l, _)) => {
                    return Err(DatasetError::ColumnType {
                        file: path.clone(),
                        column: image.name().to_string(),
                        found: format!(
                            "columns '{}'/'{}' of another shape",
                            image.name(),
                            label.name()
                        ),
                        expected: format!("the same columns as the first file ('{i}'/'{l}')"),
                    })
                }
            }
            let root_name = schema.name().to_string();
            let project = |field: &TypePtr| {
                Type::group_type_builder(&root_name)
                    .with_fields(vec![field.clone()])
                    .build()
                    .map_err(|source| DatasetError::Parquet {
                        file: path.clone(),
                        source,
                    })
            };
            let image_projection = project(&image)?;
            let label_projection = project(&label)?;

            let mut file_row = 0;
            for (group, meta) in reader.metadata().row_groups().iter().enumerate() {
                let rows = usize::try_from(meta.num_rows()).unwrap_or(0);
                groups.push(GroupRef {
                    file: file_index,
                    group,
                    start: labels.len() + file_row,
                    file_row,
                    rows,
                });
                file_row += rows;
            }
            guarded(path, || {
                read_labels(path, &reader, label_projection, label.name(), &mut labels)
            })?;
            if labels.len() != groups.iter().map(|g| g.rows).sum::<usize>() {
                return Err(DatasetError::BadValue {
                    file: path.clone(),
                    row: file_row,
                    column: label.name().to_string(),
                    reason: "the file has fewer label values than its metadata says rows".into(),
                });
            }
            files.push(PartFile {
                path: path.clone(),
                reader,
                image_projection,
            });
        }
        let (image_column, label_column, image_kind) = columns.expect("at least one file");
        let slots = groups.iter().map(|_| Mutex::new(None)).collect();
        Ok(Self {
            name,
            root: root.map(Path::to_path_buf),
            files,
            groups,
            labels,
            classes,
            image_column,
            label_column,
            image_kind,
            slots,
            resident: Mutex::new(VecDeque::new()),
            cache_bytes: DEFAULT_CACHE_BYTES,
        })
    }

    /// Sets the byte budget for cached row groups (the most recently used one is always kept).
    pub fn with_cache_bytes(mut self, bytes: usize) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// All labels of the split, in order.
    pub fn labels(&self) -> &[i64] {
        &self.labels
    }

    /// The parquet files of the split, in order.
    pub fn files(&self) -> Vec<&Path> {
        self.files.iter().map(|f| f.path.as_path()).collect()
    }

    /// The image and label column names in use.
    pub fn columns(&self) -> (&str, &str) {
        (&self.image_column, &self.label_column)
    }

    /// The row group holding global row `index`.
    fn group_of(&self, index: usize) -> usize {
        // Groups are sorted by start; the last group whose start <= index.
        self.groups.partition_point(|g| g.start <= index) - 1
    }

    /// The decoded images of row group `g`, from the cache or read now.
    fn decoded(&self, g: usize) -> Result<Decoded, DatasetError> {
        let mut slot = self.slots[g].lock().unwrap_or_else(|p| p.into_inner());
        if let Some(images) = slot.as_ref() {
            return Ok(images.clone());
        }
        let part = &self.files[self.groups[g].file].path;
        let images = Arc::new(guarded(part, || self.decode_group(self.groups[g]))?);
        *slot = Some(images.clone());
        drop(slot);
        self.remember(g, images.iter().map(Vec::len).sum());
        Ok(images)
    }

    /// Records that row group `g` is cached and evicts the oldest ones past the budget.
    fn remember(&self, g: usize, bytes: usize) {
        let evicted: Vec<usize> = {
            let mut resident = self.resident.lock().unwrap_or_else(|p| p.into_inner());
            resident.retain(|&(r, _)| r != g);
            resident.push_back((g, bytes));
            let mut total: usize = resident.iter().map(|&(_, b)| b).sum();
            let mut evicted = Vec::new();
            while total > self.cache_bytes && resident.len() > 1 {
                let (old, size) = resident.pop_front().expect("non-empty");
                total -= size;
                evicted.push(old);
            }
            evicted
        };
        for old in evicted {
            *self.slots[old].lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// Reads the image bytes of every row of one row group.
    fn decode_group(&self, group: GroupRef) -> Result<Vec<Vec<u8>>, DatasetError> {
        let part = &self.files[group.file];
        let parquet_err = |source| DatasetError::Parquet {
            file: part.path.clone(),
            source,
        };
        let reader = part
            .reader
            .get_row_group(group.group)
            .map_err(parquet_err)?;
        let rows = reader
            .get_row_iter(Some(part.image_projection.clone()))
            .map_err(parquet_err)?;
        let mut images = Vec::with_capacity(group.rows);
        for (i, row) in rows.enumerate() {
            let row = row.map_err(parquet_err)?;
            images.push(self.image_bytes(&part.path, group.file_row + i, row)?);
        }
        if images.len() != group.rows {
            return Err(DatasetError::BadValue {
                file: part.path.clone(),
                row: group.file_row + images.len(),
                column: self.image_column.clone(),
                reason: format!(
                    "row group {} has {} image values, its metadata says {} rows",
                    group.group,
                    images.len(),
                    group.rows
                ),
            });
        }
        Ok(images)
    }

    /// The encoded image of one projected row.
    fn image_bytes(&self, file: &Path, row: usize, value: Row) -> Result<Vec<u8>, DatasetError> {
        let bad = |reason: String| DatasetError::BadValue {
            file: file.to_path_buf(),
            row,
            column: self.image_column.clone(),
            reason,
        };
        let field = value
            .into_columns()
            .into_iter()
            .next()
            .map(|(_, f)| f)
            .unwrap_or(Field::Null);
        match (self.image_kind, field) {
            (ImageKind::Binary, Field::Bytes(b)) => Ok(b.data().to_vec()),
            (ImageKind::Struct, Field::Group(inner)) => {
                let mut bytes = None;
                let mut image_path = None;
                for (name, f) in inner.into_columns() {
                    match (name.as_str(), f) {
                        ("bytes", Field::Bytes(b)) => bytes = Some(b.data().to_vec()),
                        ("path", Field::Str(p)) => image_path = Some(p),
                        _ => {}
                    }
                }
                if let Some(bytes) = bytes {
                    return Ok(bytes);
                }
                match image_path {
                    Some(p) => self.read_external(&p).ok_or_else(|| {
                        bad(format!(
                            "the image has no embedded bytes and its path '{p}' is not a readable file"
                        ))
                    }),
                    None => Err(bad("the image is null (no bytes, no path)".into())),
                }
            }
            (_, Field::Null) => Err(bad("the image is null".into())),
            (_, other) => Err(bad(format!("unexpected value {other:?}"))),
        }
    }

    /// Reads an image that a row references by path (absolute, or relative to the dataset root).
    fn read_external(&self, path: &str) -> Option<Vec<u8>> {
        let p = Path::new(path);
        let candidates = [Some(p.to_path_buf()), self.root.as_ref().map(|r| r.join(p))];
        candidates
            .into_iter()
            .flatten()
            .filter(|c| c.is_file())
            .find_map(|c| std::fs::read(c).ok())
    }
}

impl ImageDataset for ParquetDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn get(&self, index: usize) -> Result<Sample, DatasetError> {
        if index >= self.labels.len() {
            return Err(DatasetError::IndexOutOfRange {
                dataset: self.name.clone(),
                index,
                len: self.labels.len(),
            });
        }
        let g = self.group_of(index);
        let images = self.decoded(g)?;
        Ok(Sample {
            image: images[index - self.groups[g].start].clone(),
            label: self.labels[index],
        })
    }

    fn locate(&self, index: usize) -> String {
        if index >= self.labels.len() {
            return format!("sample {index}");
        }
        let g = self.groups[self.group_of(index)];
        format!(
            "sample {index}, row {} of {}",
            g.file_row + index - g.start,
            self.files[g.file].path.display()
        )
    }

    fn describe(&self) -> String {
        let classes = self
            .classes
            .as_ref()
            .map(|c| format!(", {} classes", c.len()))
            .unwrap_or_default();
        format!(
            "parquet dataset {}: {} samples{classes} in {} file(s) ({}), columns '{}' and '{}'",
            self.name,
            self.labels.len(),
            self.files.len(),
            self.files
                .iter()
                .map(|f| f.path.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            self.image_column,
            self.label_column
        )
    }

    fn classes(&self) -> Option<Vec<String>> {
        self.classes.clone()
    }
}

/// Runs `f`, turning a panic inside the parquet reader (possible on corrupt files) into an
/// error that names the file, so one bad file never aborts an evaluation.
fn guarded<T>(file: &Path, f: impl FnOnce() -> Result<T, DatasetError>) -> Result<T, DatasetError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        Err(DatasetError::Parquet {
            file: file.to_path_buf(),
            source: parquet::errors::ParquetError::General(format!("the reader panicked: {what}")),
        })
    })
}

/// Finds a top-level column: the one named `wanted`, else the first of `defaults` present.
fn find_column(
    file: &Path,
    schema: &Type,
    wanted: Option<&str>,
    defaults: &[&str],
) -> Result<TypePtr, DatasetError> {
    let names: Vec<&str> = match wanted {
        Some(w) => vec![w],
        None => defaults.to_vec(),
    };
    for name in &names {
        if let Some(field) = schema.get_fields().iter().find(|f| f.name() == *name) {
            return Ok(field.clone());
        }
    }
    Err(DatasetError::ColumnNotFound {
        file: file.to_path_buf(),
        wanted: names
            .iter()
            .map(|n| format!("'{n}'"))
            .collect::<Vec<_>>()
            .join(" or "),
        available: schema
            .get_fields()
            .iter()
            .map(|f| f.name().to_string())
            .collect(),
    })
}

/// A short description of a parquet type for messages.
fn describe_type(t: &Type) -> String {
    if t.is_group() {
        let fields: Vec<String> = t
            .get_fields()
            .iter()
            .map(|f| format!("{}: {}", f.name(), describe_type(f)))
            .collect();
        format!("struct<{}>", fields.join(", "))
    } else {
        let info = t.get_basic_info();
        match info.logical_type_ref() {
            Some(l) => format!("{:?} ({l:?})", t.get_physical_type()),
            None if info.converted_type() != ConvertedType::NONE => {
                format!("{:?} ({})", t.get_physical_type(), info.converted_type())
            }
            None => format!("{:?}", t.get_physical_type()),
        }
    }
}

/// Checks that the image column is `binary` or a struct with a `bytes: binary` field.
fn image_kind(file: &Path, column: &TypePtr) -> Result<ImageKind, DatasetError> {
    let is_binary = |t: &Type| {
        t.is_primitive()
            && t.get_physical_type() == PhysicalType::BYTE_ARRAY
            && !matches!(
                t.get_basic_info().logical_type_ref(),
                Some(LogicalType::String)
            )
    };
    if is_binary(column) {
        return Ok(ImageKind::Binary);
    }
    if column.is_group()
        && column
            .get_fields()
            .iter()
            .any(|f| f.name() == "bytes" && is_binary(f))
    {
        return Ok(ImageKind::Struct);
    }
    Err(DatasetError::ColumnType {
        file: file.to_path_buf(),
        column: column.name().to_string(),
        found: describe_type(column),
        expected: "binary or struct<bytes: binary, path: string> (datasets.Image)".into(),
    })
}

/// Checks that the label column is an integer column.
fn check_label_type(file: &Path, column: &TypePtr) -> Result<(), DatasetError> {
    let ok = column.is_primitive()
        && matches!(
            column.get_physical_type(),
            PhysicalType::INT32 | PhysicalType::INT64
        )
        && !matches!(
            column.get_basic_info().logical_type_ref(),
            Some(
                LogicalType::Date
                    | LogicalType::Time { .. }
                    | LogicalType::Timestamp { .. }
                    | LogicalType::Decimal { .. }
            )
        );
    if ok {
        Ok(())
    } else {
        Err(DatasetError::ColumnType {
            file: file.to_path_buf(),
            column: column.name().to_string(),
            found: describe_type(column),
            expected: "an integer column (int8/16/32/64, signed or unsigned)".into(),
        })
    }
}

/// Appends the labels of every row of `reader` to `out`.
fn read_labels(
    file: &Path,
    reader: &SerializedFileReader<File>,
    projection: Type,
    column: &str,
    out: &mut Vec<i64>,
) -> Result<(), DatasetError> {
    let parquet_err = |source| DatasetError::Parquet {
        file: file.to_path_buf(),
        source,
    };
    let rows = reader.get_row_iter(Some(projection)).map_err(parquet_err)?;
    for (row_index, row) in rows.enumerate() {
        let row = row.map_err(parquet_err)?;
        let bad = |reason: String| DatasetError::BadValue {
            file: file.to_path_buf(),
            row: row_index,
            column: column.to_string(),
            reason,
        };
        let value = match row.get_column_iter().next().map(|(_, f)| f) {
            Some(Field::Byte(v)) => i64::from(*v),
            Some(Field::Short(v)) => i64::from(*v),
            Some(Field::Int(v)) => i64::from(*v),
            Some(Field::Long(v)) => *v,
            Some(Field::UByte(v)) => i64::from(*v),
            Some(Field::UShort(v)) => i64::from(*v),
            Some(Field::UInt(v)) => i64::from(*v),
            Some(Field::ULong(v)) => {
                i64::try_from(*v).map_err(|_| bad(format!("label {v} does not fit in i64")))?
            }
            Some(Field::Null) | None => return Err(bad("the label is null".into())),
            Some(other) => return Err(bad(format!("unexpected value {other:?}"))),
        };
        out.push(value);
    }
    Ok(())
}

/// Class names from the `huggingface` key-value metadata that `datasets` writes
/// (`info.features.<label>.names` of a `ClassLabel`).
fn class_names(reader: &SerializedFileReader<File>, label: &str) -> Option<Vec<String>> {
    let kv = reader.metadata().file_metadata().key_value_metadata()?;
    let text = kv.iter().find(|k| k.key == "huggingface")?.value.as_ref()?;
    let json: serde_json::Value = serde_json::from_str(text).ok()?;
    let features = json.pointer("/info/features")?;
    let names = features.get(label)?.get("names")?.as_array()?;
    names
        .iter()
        .map(|n| n.as_str().map(str::to_string))
        .collect()
}
