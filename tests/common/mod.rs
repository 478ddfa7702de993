//! Helpers shared by the integration tests: a seeded RNG and the GPU gate.
#![allow(dead_code)]
use lora_kernels::{Element, Error, Gpu};

/// xorshift64*: reproducible random data without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
    /// Uniform integer in [lo, hi].
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
    /// `len` values uniform in [-amp, amp), rounded to `T`; never all zero.
    pub fn vec<T: Element>(&mut self, len: usize, amp: f64) -> Vec<T> {
        (0..len)
            .map(|_| T::from_f64(self.uniform() * amp))
            .collect()
    }
}

/// Whether GPU tests must run (`LORA_KERNELS_REQUIRE_GPU=1`): then a missing GPU fails the test.
pub fn gpu_required() -> bool {
    std::env::var("LORA_KERNELS_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// The GPU, or `None` after printing `SKIPPED: no CUDA device` (a failure when GPU tests are required).
pub fn gpu() -> Option<Gpu> {
    match Gpu::new(0) {
        Ok(gpu) => {
            if !lora_kernels::device::kernels_built() {
                assert!(
                    !gpu_required(),
                    "LORA_KERNELS_REQUIRE_GPU=1 but the kernels were not built"
                );
                println!("SKIPPED: the kernels were not built (no nvcc at build time)");
                return None;
            }
            Some(gpu)
        }
        Err(Error::NoDevice(why)) => {
            assert!(
                !gpu_required(),
                "LORA_KERNELS_REQUIRE_GPU=1 but there is no CUDA device: {why}"
            );
            println!("SKIPPED: no CUDA device ({why})");
            None
        }
        Err(e) => panic!("opening the GPU failed: {e}"),
    }
}

/// Widens to f64.
pub fn f64s<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}
