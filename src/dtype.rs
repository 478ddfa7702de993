//! Element types: f32, f16 and bf16, with exact conversions to and from f64 for the CPU references.
use cudarc::driver::{DeviceRepr, ValidAsZeroBits};
use half::{bf16, f16};
use std::fmt;

/// The element types the kernels take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (needs compute capability 8.0 on the GPU).
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// The short name used in kernel names and golden metadata (`f32`, `f16`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// Parses `f32`, `f16` or `bf16`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "f32" | "float32" => Some(DType::F32),
            "f16" | "float16" => Some(DType::F16),
            "bf16" | "bfloat16" => Some(DType::BF16),
            _ => None,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An element type the kernels and CPU references take: `f32`, `half::f16` or `half::bf16`.
pub trait Element:
    DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + fmt::Debug + 'static
{
    /// The matching [`DType`].
    const DTYPE: DType;
    /// Exact widening to f64.
    fn to_f64(self) -> f64;
    /// Narrowing from f64, round to nearest even.
    fn from_f64(v: f64) -> Self;
    /// Little-endian bytes to an element (safetensors' byte order).
    fn from_le_bytes(b: &[u8]) -> Self;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn from_le_bytes(b: &[u8]) -> Self {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;
    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }
    fn from_f64(v: f64) -> Self {
        f16::from_f64(v)
    }
    fn from_le_bytes(b: &[u8]) -> Self {
        f16::from_le_bytes([b[0], b[1]])
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    fn to_f64(self) -> f64 {
        bf16::to_f64(self)
    }
    fn from_f64(v: f64) -> Self {
        bf16::from_f64(v)
    }
    fn from_le_bytes(b: &[u8]) -> Self {
        bf16::from_le_bytes([b[0], b[1]])
    }
}
