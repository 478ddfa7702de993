//! The engine's side of the per-lane ALU (`alu.rs`): the lowered instruction with its operands
//! as the engine's register indices and immediates.
use super::alu;
use super::lower::Src;
use crate::ptx::ir::{Operand, RegId, Type};

/// At most this many sources / destinations of one ALU instruction.
pub const MAX_OPERANDS: usize = 8;

/// A lowered ALU instruction with its operands.
#[derive(Debug)]
pub struct AluOp {
    /// Destination registers (`None`: a sink).
    pub dsts: Vec<Option<u32>>,
    /// Sources (registers or immediates; `alu` applies predicate negation itself).
    pub srcs: Vec<Src>,
    inner: alu::AluInst,
}

impl AluOp {
    /// One lane: `src[i]` holds source `i`'s bits, `dst[i]` receives destination `i`'s bits.
    #[inline(always)]
    pub fn eval(&self, src: &[u64], dst: &mut [u64]) {
        self.inner.eval(src, dst)
    }

    /// All 32 lanes: `src[i][lane]`, `dst[i][lane]` (see `alu::AluInst::eval_warp`).
    #[inline(always)]
    pub fn eval_warp(&self, src: &mut [[u64; 32]], dst: &mut [[u64; 32]]) {
        self.inner.eval_warp(src, dst)
    }
}

/// Lowers an ALU instruction; `Ok(None)` when the opcode is not an ALU op.
pub fn lower(
    opcode: &str,
    operands: &[Operand],
    reg_type: impl Fn(RegId) -> Type,
) -> Result<Option<AluOp>, String> {
    let Some(inner) = alu::lower(opcode, operands, reg_type)? else {
        return Ok(None);
    };
    if inner.src.len() > MAX_OPERANDS || inner.dst.len() > MAX_OPERANDS {
        return Err(format!("`{}` has too many operands", opcode));
    }
    let srcs = inner
        .src
        .iter()
        .map(|s| match *s {
            alu::Src::Reg(r) => Src::Reg(r.0),
            alu::Src::Imm(v) => Src::Imm(v),
        })
        .collect();
    let dsts = inner.dst.iter().map(|d| d.map(|r| r.0)).collect();
    Ok(Some(AluOp { dsts, srcs, inner }))
}
