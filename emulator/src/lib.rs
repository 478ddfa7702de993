//! A CUDA driver emulator: executes the real PTX of CUDA kernels on the CPU, with memory, init,
//! race and sync checkers, behind the CUDA driver API (`cuInit`, `cuMemAlloc_v2`,
//! `cuLaunchKernel`, ...).
//!
//! - [`ptx`]: the fatbin container, PTX text, and the parsed form ([`ptx::ir`]).
//! - [`exec`]: device memory, modules, and the SIMT interpreter with its checkers.
//! - [`driver`]: the C ABI of the driver functions (this crate's cdylib has the SONAME
//!   `libcuda.so.1`).
pub mod driver;
pub mod exec;
pub mod ptx;
