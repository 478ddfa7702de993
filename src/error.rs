//! The crate's error type: every public function returns [`Result`].
use std::fmt::Display;

/// Everything that can go wrong in this crate, checked before anything is launched.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable CUDA driver or device: `libcuda` is missing, or it reports no device.
    #[error("no CUDA device: {0}")]
    NoDevice(String),

    /// The crate was built without nvcc and without the committed PTX, so it lacks a GPU kernel.
    #[error(
        "the GPU kernels are not in this build (no nvcc and no committed ptx/*.ptx when it was \
         built); install the compiler with scripts/install-cuda-toolchain.sh and rebuild"
    )]
    KernelsNotBuilt,

    /// A kernel family's module loaded, but the kernel the call needs is not in it (the driver
    /// reports `CUDA_ERROR_NOT_FOUND`): the module and the library disagree on a kernel's name.
    #[error("kernel `{name}` is not in the module of {module}")]
    MissingKernel {
        /// The kernel file whose module was searched, e.g. `kernels/lora.cu`.
        module: String,
        /// The kernel's name, `<family>_<op>_<dtype>`.
        name: String,
    },

    /// An argument has the wrong shape, length, rank or value.
    #[error("invalid argument `{arg}`: expected {expected}, got {actual}")]
    InvalidArgument {
        /// The argument's name, as in the function's signature (`lora_a[1]`, `shape.k`, ...).
        arg: String,
        /// What was expected.
        expected: String,
        /// What came.
        actual: String,
    },

    /// The device cannot run this element type or kernel.
    #[error(
        "{what} cannot run on {device} (compute capability {major}.{minor}): it needs {needed}"
    )]
    Unsupported {
        /// What was asked for (a dtype, a kernel).
        what: String,
        /// The device's name.
        device: String,
        /// Compute capability major version.
        major: i32,
        /// Compute capability minor version.
        minor: i32,
        /// What it needs.
        needed: String,
    },

    /// A file (golden case, adapter, state dict) is missing or malformed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },

    /// An error reported by the CUDA driver.
    #[error("CUDA driver error: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Builds an [`Error::InvalidArgument`].
pub(crate) fn invalid(arg: impl Display, expected: impl Display, actual: impl Display) -> Error {
    Error::InvalidArgument {
        arg: arg.to_string(),
        expected: expected.to_string(),
        actual: actual.to_string(),
    }
}

/// Builds an [`Error::File`].
pub(crate) fn file_error(path: impl Display, message: impl Display) -> Error {
    Error::File {
        path: path.to_string(),
        message: message.to_string(),
    }
}

/// A JSON value as a file holds it, for error messages: compact JSON (numbers as serde_json writes
/// them, `1e-320` not 330 digits; strings quoted), cut to 80 characters.
pub(crate) fn json_value(value: &serde_json::Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(80) {
        Some((end, _)) => format!("{}... ({} characters)", &text[..end], text.len()),
        None => text,
    }
}

/// Parses safetensors `bytes` read from `origin`. A header whose shapes, dtypes and offsets disagree
/// is an error naming the first such tensor in offset order (the safetensors crate names none, or
/// one of several at random), with its dtype, shape, the bytes it needs and the bytes it has.
pub(crate) fn read_safetensors<'a>(
    bytes: &'a [u8],
    origin: impl Display,
) -> Result<safetensors::SafeTensors<'a>> {
    use safetensors::SafeTensorError as E;
    safetensors::SafeTensors::deserialize(bytes).map_err(|e| {
        let message = match e {
            E::TensorInvalidInfo
            | E::InvalidOffset(_)
            | E::ValidationOverflow
            | E::MisalignedSlice => bad_tensor_info(bytes).unwrap_or_else(|| e.to_string()),
            other => other.to_string(),
        };
        file_error(origin, message)
    })
}

/// The first tensor (by data offsets, then name) whose header entry is inconsistent.
fn bad_tensor_info(bytes: &[u8]) -> Option<String> {
    use safetensors::tensor::TensorInfo;
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let header = bytes.get(8..8usize.checked_add(usize::try_from(n).ok()?)?)?;
    let entries: std::collections::BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(header).ok()?;
    let mut tensors: Vec<(String, TensorInfo)> = entries
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| Some((k, serde_json::from_value::<TensorInfo>(v).ok()?)))
        .collect::<Option<_>>()?;
    tensors.sort_by(|a, b| (a.1.data_offsets, &a.0).cmp(&(b.1.data_offsets, &b.0)));
    let mut start = 0usize;
    for (name, info) in &tensors {
        let (s, e) = info.data_offsets;
        let what = format!("tensor `{name}` ({:?} {:?})", info.dtype, info.shape);
        if s != start || e < s {
            return Some(format!(
                "{what}: data_offsets [{s}, {e}], expected to start at {start} (tensors must be \
                 contiguous, in order, without overlap)"
            ));
        }
        start = e;
        let bits = info
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(info.dtype.bitsize()));
        match bits {
            None => return Some(format!("{what}: the size overflows")),
            Some(b) if b % 8 != 0 => {
                return Some(format!("{what}: {b} bits is not a whole number of bytes"))
            }
            Some(b) if b / 8 != e - s => {
                return Some(format!(
                    "{what}: expected {} bytes, got {} (data_offsets [{s}, {e}])",
                    b / 8,
                    e - s
                ))
            }
            Some(_) => {}
        }
    }
    None
}
