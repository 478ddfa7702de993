//! The C ABI of the CUDA driver functions.
