//! Element types and tensor descriptions shared by every component.

use abi_stable::StableAbi;

/// The element type of a tensor, with safetensors' names.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, StableAbi)]
pub enum DType {
    /// Boolean, one byte each.
    Bool,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer.
    U16,
    /// IEEE 754 half precision.
    F16,
    /// bfloat16 (the upper half of an f32).
    BF16,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// IEEE 754 single precision.
    F32,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 64-bit integer.
    U64,
    /// IEEE 754 double precision.
    F64,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::Bool | DType::U8 | DType::I8 => 1,
            DType::I16 | DType::U16 | DType::F16 | DType::BF16 => 2,
            DType::I32 | DType::U32 | DType::F32 => 4,
            DType::I64 | DType::U64 | DType::F64 => 8,
        }
    }

    /// Whether this is a floating-point type (the ones merging algorithms combine).
    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }

    /// The safetensors name of the type (`"F32"`, `"BF16"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::I16 => "I16",
            DType::U16 => "U16",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I32 => "I32",
            DType::U32 => "U32",
            DType::F32 => "F32",
            DType::I64 => "I64",
            DType::U64 => "U64",
            DType::F64 => "F64",
        }
    }

    /// Parse a safetensors or PyTorch-style name (`"F32"`, `"float32"`, `"bfloat16"`, `"fp16"`, ...).
    pub fn parse(name: &str) -> Option<DType> {
        let n = name.trim().to_ascii_lowercase();
        let n = n.strip_prefix("torch.").unwrap_or(&n);
        Some(match n {
            "bool" => DType::Bool,
            "u8" | "uint8" => DType::U8,
            "i8" | "int8" => DType::I8,
            "i16" | "int16" => DType::I16,
            "u16" | "uint16" => DType::U16,
            "f16" | "float16" | "fp16" | "half" => DType::F16,
            "bf16" | "bfloat16" => DType::BF16,
            "i32" | "int32" => DType::I32,
            "u32" | "uint32" => DType::U32,
            "f32" | "float32" | "fp32" | "float" => DType::F32,
            "i64" | "int64" | "long" => DType::I64,
            "u64" | "uint64" => DType::U64,
            "f64" | "float64" | "fp64" | "double" => DType::F64,
            _ => return None,
        })
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The dtype and shape of a tensor.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorInfo {
    /// Element type.
    pub dtype: DType,
    /// Dimensions, outermost first; empty for a scalar.
    pub shape: Vec<usize>,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Size of the raw data in bytes.
    pub fn nbytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }
}

/// FusionBench's `parse_dtype` (`fusion_bench.utils.dtype`): a `torch_dtype`-style name for
/// parameter `key` of `owner` (an algorithm or `modelpool`). The names are FusionBench's
/// (`float32`, `float16`, `bfloat16`, `float64`, `fp32`, `fp16`, `half`, `bf16`, `float`,
/// `double`, `fp64`), optionally quoted as FusionBench strips them, or written `torch.NAME`.
/// Anything else is a configuration error naming `owner`, `key` and the value.
pub fn parse_torch_dtype(text: &str, owner: &str, key: &str) -> crate::Result<DType> {
    let t = text.trim_matches('"');
    Ok(match t.strip_prefix("torch.").unwrap_or(t) {
        "fp16" | "float16" | "half" => DType::F16,
        "bf16" | "bfloat16" => DType::BF16,
        "float" | "fp32" | "float32" => DType::F32,
        "double" | "fp64" | "float64" => DType::F64,
        other => {
            return Err(crate::Error::config(format!(
                "{owner}: `{key}` is `{other}`, which is not a dtype; use one of float32, \
                 float16, bfloat16, float64 (or fp32, fp16, half, bf16, float, double, fp64)"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_dtype_names_are_fusionbenchs() {
        let names: [(DType, &[&str]); 4] = [
            (DType::F32, &["float32", "float", "fp32"]),
            (DType::F16, &["float16", "half", "fp16"]),
            (
                DType::BF16,
                &["bfloat16", "bf16", "\"bf16\"", "torch.bfloat16"],
            ),
            (DType::F64, &["float64", "double", "fp64"]),
        ];
        for (dtype, texts) in names {
            for text in texts {
                assert_eq!(parse_torch_dtype(text, "m", "k").unwrap(), dtype, "{text}");
            }
        }
    }

    #[test]
    fn other_torch_dtype_names_name_owner_key_and_value() {
        for text in ["int8", "F32", "auto", ""] {
            let err = parse_torch_dtype(text, "modelpool", "torch_dtype").unwrap_err();
            assert_eq!(err.kind, crate::ErrorKind::Config);
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!(
                    "modelpool: `torch_dtype` is `{text}`, which is not a dtype"
                )),
                "{msg}"
            );
        }
    }
}
