//! The engine's side of the warp-level matrix instructions (`mma.sync`, `wmma.*`): operand
//! decoding and register gathering; the math and the fragment layouts are in `mma.rs`.
use super::lower::MatrixCtxOwned;
use crate::ptx::ir;

/// A lowered matrix instruction.
#[derive(Debug)]
pub enum MatrixOp {}

/// Lowers a `mma` / `wmma` instruction.
pub fn lower(ctx: MatrixCtxOwned, inst: &ir::Instruction) -> Result<MatrixOp, String> {
    let _ = ctx;
    Err(format!("{} is not supported yet", inst.opcode))
}
