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
