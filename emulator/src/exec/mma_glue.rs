//! The engine's side of the warp-level matrix instructions (`mma.sync`, `wmma.*`): operand
//! decoding into register lists; the math and the fragment layouts are in `mma.rs`, the
//! gathering of all lanes' registers and the per-element memory accesses (with the checkers) in
//! `run.rs`.
use super::lower::{Addr, MatrixCtxOwned, MemSpace, Src};
use super::mma;
use crate::ptx::ir::{self, Operand};

/// A lowered matrix instruction.
#[derive(Debug)]
pub enum MatrixOp {
    /// `mma.sync.aligned...`: register lists of d, a, b, c.
    Mma {
        m: mma::Mma,
        d: Vec<u32>,
        a: Vec<Src>,
        b: Vec<Src>,
        c: Vec<Src>,
    },
    /// `wmma.load.{a,b,c}`.
    Load {
        ls: mma::WmmaLoadStore,
        space: MemSpace,
        addr: Addr,
        stride: Option<Src>,
        dsts: Vec<u32>,
    },
    /// `wmma.store.d`.
    Store {
        ls: mma::WmmaLoadStore,
        space: MemSpace,
        addr: Addr,
        stride: Option<Src>,
        srcs: Vec<Src>,
    },
    /// `wmma.mma`.
    Wmma {
        w: mma::WmmaMma,
        d: Vec<u32>,
        a: Vec<Src>,
        b: Vec<Src>,
        c: Vec<Src>,
    },
}

fn regs(o: Option<&Operand>, n: usize, what: &str) -> Result<Vec<u32>, String> {
    match o {
        Some(Operand::Vector(v)) if v.len() == n => v
            .iter()
            .map(|x| match x {
                Operand::Reg(r) => Ok(r.0),
                _ => Err(format!("{what}: expected registers")),
            })
            .collect(),
        _ => Err(format!("{what}: expected a vector of {n} registers")),
    }
}

fn srcs(
    ctx: &MatrixCtxOwned,
    o: Option<&Operand>,
    n: usize,
    what: &str,
) -> Result<Vec<Src>, String> {
    match o {
        Some(Operand::Vector(v)) if v.len() == n => v
            .iter()
            .map(|x| ctx.src(x).ok_or_else(|| format!("{what}: bad element")))
            .collect(),
        _ => Err(format!("{what}: expected a vector of {n} registers")),
    }
}

fn space_of(s: Option<ir::Space>) -> MemSpace {
    match s {
        Some(ir::Space::Global) => MemSpace::Global,
        Some(ir::Space::Shared) => MemSpace::Shared,
        _ => MemSpace::Generic,
    }
}

/// Lowers a `mma` / `wmma` instruction.
pub fn lower(ctx: MatrixCtxOwned, inst: &ir::Instruction) -> Result<MatrixOp, String> {
    let ops = &inst.operands;
    if let Some(m) = mma::Mma::parse(&inst.opcode)? {
        let r = m.regs();
        if ops.len() != 4 {
            return Err("mma takes d, a, b, c".into());
        }
        return Ok(MatrixOp::Mma {
            m,
            d: regs(ops.first(), r.d, "d")?,
            a: srcs(&ctx, ops.get(1), r.a, "a")?,
            b: srcs(&ctx, ops.get(2), r.b, "b")?,
            c: srcs(&ctx, ops.get(3), r.c, "c")?,
        });
    }
    match mma::Wmma::parse(&inst.opcode)? {
        Some(mma::Wmma::Load(ls)) => {
            let space = space_of(ls.space);
            let stride = ops
                .get(2)
                .map(|o| ctx.src(o).ok_or("bad stride"))
                .transpose()?;
            Ok(MatrixOp::Load {
                ls,
                space,
                addr: ops
                    .get(1)
                    .and_then(|o| ctx.addr(o, space))
                    .ok_or("bad address")?,
                stride,
                dsts: regs(ops.first(), ls.frag.regs(), "fragment")?,
            })
        }
        Some(mma::Wmma::Store(ls)) => {
            let space = space_of(ls.space);
            let stride = ops
                .get(2)
                .map(|o| ctx.src(o).ok_or("bad stride"))
                .transpose()?;
            Ok(MatrixOp::Store {
                ls,
                space,
                addr: ops
                    .first()
                    .and_then(|o| ctx.addr(o, space))
                    .ok_or("bad address")?,
                stride,
                srcs: srcs(&ctx, ops.get(1), ls.frag.regs(), "fragment")?,
            })
        }
        Some(mma::Wmma::Mma(w)) => {
            if ops.len() != 4 {
                return Err("wmma.mma takes d, a, b, c".into());
            }
            Ok(MatrixOp::Wmma {
                w,
                d: regs(ops.first(), w.c().regs(), "d")?,
                a: srcs(&ctx, ops.get(1), w.a().regs(), "a")?,
                b: srcs(&ctx, ops.get(2), w.b().regs(), "b")?,
                c: srcs(&ctx, ops.get(3), w.c().regs(), "c")?,
            })
        }
        None => Err(format!("{} is not a matrix instruction", inst.opcode)),
    }
}
