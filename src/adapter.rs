//! The shape of a product and the view of one LoRA adapter that every kernel family and CPU reference
//! takes (re-exported from [`crate::lora`] and the crate root).
/// Largest rank one adapter may have.
pub const MAX_RANK: usize = 256;

/// The dimensions of a LoRA forward: x is [m, k], y is [m, n].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoraShape {
    /// Rows of x and y (tokens).
    pub m: usize,
    /// Input features (columns of x and of A).
    pub k: usize,
    /// Output features (columns of y, rows of B).
    pub n: usize,
}

impl LoraShape {
    /// A shape with x [m, k] and y [m, n].
    pub fn new(m: usize, k: usize, n: usize) -> Self {
        LoraShape { m, k, n }
    }
}

/// One LoRA adapter: A [rank, k], B [n, rank] and its scale s.
///
/// `S` is the storage: `[T]` on the host, a `CudaSlice<T>` or `CudaView<T>` on the GPU.
#[derive(Debug)]
pub struct LoraAdapter<'a, S: ?Sized> {
    /// A, row-major [rank, k] (peft's `lora_A.weight`).
    pub lora_a: &'a S,
    /// B, row-major [n, rank] (peft's `lora_B.weight`).
    pub lora_b: &'a S,
    /// The adapter's rank r, 1 to [`MAX_RANK`].
    pub rank: usize,
    /// The scale s: `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub scale: f32,
}

impl<S: ?Sized> Clone for LoraAdapter<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<S: ?Sized> Copy for LoraAdapter<'_, S> {}

impl<'a, S: ?Sized> LoraAdapter<'a, S> {
    /// An adapter from A [rank, k], B [n, rank] and its scale.
    pub fn new(lora_a: &'a S, lora_b: &'a S, rank: usize, scale: f32) -> Self {
        LoraAdapter {
            lora_a,
            lora_b,
            rank,
            scale,
        }
    }
}
