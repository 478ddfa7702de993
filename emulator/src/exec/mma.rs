//! Warp-level matrix instructions as pure functions over all 32 lanes' register values:
//! `mma.sync` (fragment layouts exactly as the PTX ISA manual's "Matrix Fragments for mma"
//! sections give them) and `wmma` (whose fragment layout NVIDIA leaves unspecified: here a
//! deliberately scrambled, self-consistent one).
//!
//! # Register arrays
//! Every function takes and returns the 32-bit register values of all lanes, lane-major:
//! `a[lane * na + i]` is register `i` of operand `a` in lane `lane`, where `na` is the operand's
//! register count ([`Mma::regs`], [`WmmaFrag::regs`]). Packed 16-bit elements sit low half
//! first (`a0` in bits 0..16, `a1` in bits 16..32), 8-bit elements low byte first, matching the
//! manual's "Elements (low to high)".
//!
//! # Accumulation model
//! The manual does not define the order or the intermediate precision of the tensor-core
//! accumulation, so no bit-exact model exists. Here each output element is
//! `d = c + sum_k a[m][k] * b[k][n]` evaluated in f64 with k ascending (each product of two
//! f16/bf16 values is exact in f64, and the sum of 16 of them with an f32 `c` is exact unless
//! their magnitudes span more than ~2^29), then rounded once to f32 (round to nearest even).
//! NaN results are the canonical NaN `0x7FFF_FFFF`. Integer `mma` is exact with 32-bit
//! wrap-around; `.satfinite` clamps to the s32 range instead.
//!
//! # The wmma layout
//! For a 16x16 fragment with E elements per lane (8 for bf16 a/b and f32 c/d, 16 for f16 a/b,
//! where each matrix element is held twice, as the manual's eight `.f16x2` registers per lane
//! imply), slot `s = lane * E + e` holds copy `s / 256` of matrix element
//! `scramble(matrix, copy, s % 256)`, a fixed bijection of 0..256 (see [`wmma_element`]).
//! `wmma.load` writes both copies; `wmma.mma` checks that the two copies of an f16 element
//! agree (code that edits fragments element-wise by assuming a layout breaks that) and fails
//! with an error otherwise.

// Matrix code reads best with explicit (row, col) indices.
#![allow(clippy::needless_range_loop)]

/// Lanes in a warp.
pub const WARP: usize = 32;

/// The `mma.sync` forms supported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmaKind {
    /// `mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32`
    F16F32,
    /// `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`
    Bf16F32,
    /// `mma.sync.aligned.m16n8k32.row.col{.satfinite}.s32.{s8,u8}.{s8,u8}.s32`
    I8S32 {
        a_signed: bool,
        b_signed: bool,
        satfinite: bool,
    },
}

/// A decoded `mma.sync` instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mma {
    pub kind: MmaKind,
}

/// Register counts per lane of the four operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmaRegs {
    pub d: usize,
    pub a: usize,
    pub b: usize,
    pub c: usize,
}

impl Mma {
    /// Decodes an `mma` opcode; `Ok(None)` when the opcode is not `mma.*`, an error naming the
    /// form when it is an unsupported `mma`.
    pub fn parse(opcode: &str) -> Result<Option<Mma>, String> {
        let mut t = opcode.split('.');
        if t.next() != Some("mma") {
            return Ok(None);
        }
        let rest: Vec<&str> = t.collect();
        let err = || Err(format!("unsupported instruction form `{opcode}`"));
        let kind = match rest.as_slice() {
            ["sync", "aligned", "m16n8k16", "row", "col", "f32", "f16", "f16", "f32"] => {
                MmaKind::F16F32
            }
            ["sync", "aligned", "m16n8k16", "row", "col", "f32", "bf16", "bf16", "f32"] => {
                MmaKind::Bf16F32
            }
            ["sync", "aligned", "m16n8k32", "row", "col", tail @ ..] => {
                let (satfinite, tail) = match tail {
                    ["satfinite", t @ ..] => (true, t),
                    t => (false, t),
                };
                let sign = |s: &str| match s {
                    "s8" => Some(true),
                    "u8" => Some(false),
                    _ => None,
                };
                match tail {
                    ["s32", a, b, "s32"] => match (sign(a), sign(b)) {
                        (Some(a_signed), Some(b_signed)) => MmaKind::I8S32 {
                            a_signed,
                            b_signed,
                            satfinite,
                        },
                        _ => return err(),
                    },
                    _ => return err(),
                }
            }
            _ => return err(),
        };
        Ok(Some(Mma { kind }))
    }

    /// Registers per lane of d, a, b, c.
    pub const fn regs(&self) -> MmaRegs {
        MmaRegs {
            d: 4,
            a: 4,
            b: 2,
            c: 4,
        }
    }

    /// K of the shape (16 or 32).
    pub const fn k(&self) -> usize {
        match self.kind {
            MmaKind::F16F32 | MmaKind::Bf16F32 => 16,
            MmaKind::I8S32 { .. } => 32,
        }
    }

    /// Element `i` of lane `lane`'s A fragment: (row, col) of the 16xK matrix A.
    pub fn a_elem(&self, lane: usize, i: usize) -> (usize, usize) {
        let g = lane >> 2;
        let t = lane % 4;
        match self.kind {
            MmaKind::F16F32 | MmaKind::Bf16F32 => {
                // row = groupID for 0 <= i < 2 || 4 <= i < 6, else groupID + 8;
                // col = t*2 + (i & 1) for i < 4, t*2 + (i & 1) + 8 for i >= 4.
                let row = if i < 2 || (4..6).contains(&i) {
                    g
                } else {
                    g + 8
                };
                let col = t * 2 + (i & 1) + if i >= 4 { 8 } else { 0 };
                (row, col)
            }
            MmaKind::I8S32 { .. } => {
                // row = groupID for 0 <= i < 4 || 8 <= i < 12, else groupID + 8;
                // col = t*4 + (i & 3) for i < 8, t*4 + (i & 3) + 16 for i >= 8.
                let row = if i < 4 || (8..12).contains(&i) {
                    g
                } else {
                    g + 8
                };
                let col = t * 4 + (i & 3) + if i >= 8 { 16 } else { 0 };
                (row, col)
            }
        }
    }

    /// Element `i` of lane `lane`'s B fragment: (row, col) of the Kx8 matrix B.
    pub fn b_elem(&self, lane: usize, i: usize) -> (usize, usize) {
        let g = lane >> 2;
        let t = lane % 4;
        match self.kind {
            MmaKind::F16F32 | MmaKind::Bf16F32 => {
                // row = t*2 + (i & 1) for i < 2, t*2 + (i & 1) + 8 for i >= 2; col = groupID.
                (t * 2 + (i & 1) + if i >= 2 { 8 } else { 0 }, g)
            }
            MmaKind::I8S32 { .. } => {
                // row = t*4 + (i & 3) for i < 4, t*4 + (i & 3) + 16 for i >= 4; col = groupID.
                (t * 4 + (i & 3) + if i >= 4 { 16 } else { 0 }, g)
            }
        }
    }

    /// Element `i` (0..4) of lane `lane`'s C/D fragment: (row, col) of the 16x8 accumulator.
    pub fn c_elem(&self, lane: usize, i: usize) -> (usize, usize) {
        // row = groupID for i < 2, groupID + 8 for i >= 2; col = t*2 + (i & 1).
        let g = lane >> 2;
        let t = lane % 4;
        (if i < 2 { g } else { g + 8 }, t * 2 + (i & 1))
    }

    /// D = A * B + C over the whole warp. `a`, `b`, `c` lane-major with [`Mma::regs`] registers
    /// per lane; `d` receives 4 registers per lane. Panics if a slice has the wrong length.
    pub fn exec(&self, a: &[u32], b: &[u32], c: &[u32], d: &mut [u32]) {
        let r = self.regs();
        assert!(a.len() == WARP * r.a && b.len() == WARP * r.b);
        assert!(c.len() == WARP * r.c && d.len() == WARP * r.d);
        let k = self.k();
        match self.kind {
            MmaKind::F16F32 | MmaKind::Bf16F32 => {
                let conv = |h: u32| -> f64 {
                    if self.kind == MmaKind::F16F32 {
                        super::float::f16_to_f32(h as u16) as f64
                    } else {
                        super::float::bf16_to_f32(h as u16) as f64
                    }
                };
                let mut am = [[0f64; 16]; 16];
                let mut bm = [[0f64; 8]; 16];
                for lane in 0..WARP {
                    for i in 0..8 {
                        let (row, col) = self.a_elem(lane, i);
                        am[row][col] = conv(a[lane * r.a + i / 2] >> (16 * (i % 2)));
                    }
                    for i in 0..4 {
                        let (row, col) = self.b_elem(lane, i);
                        bm[row][col] = conv(b[lane * r.b + i / 2] >> (16 * (i % 2)));
                    }
                }
                for lane in 0..WARP {
                    for i in 0..4 {
                        let (m, n) = self.c_elem(lane, i);
                        let mut acc = f32::from_bits(c[lane * r.c + i]) as f64;
                        for kk in 0..k {
                            acc += am[m][kk] * bm[kk][n];
                        }
                        d[lane * r.d + i] = super::float::canon32(acc as f32).to_bits();
                    }
                }
            }
            MmaKind::I8S32 {
                a_signed,
                b_signed,
                satfinite,
            } => {
                let byte = |v: u32, j: usize, signed: bool| -> i64 {
                    let x = (v >> (8 * j)) & 0xFF;
                    if signed {
                        x as u8 as i8 as i64
                    } else {
                        x as i64
                    }
                };
                let mut am = [[0i64; 32]; 16];
                let mut bm = [[0i64; 8]; 32];
                for lane in 0..WARP {
                    for i in 0..16 {
                        let (row, col) = self.a_elem(lane, i);
                        am[row][col] = byte(a[lane * r.a + i / 4], i % 4, a_signed);
                    }
                    for i in 0..8 {
                        let (row, col) = self.b_elem(lane, i);
                        bm[row][col] = byte(b[lane * r.b + i / 4], i % 4, b_signed);
                    }
                }
                for lane in 0..WARP {
                    for i in 0..4 {
                        let (m, n) = self.c_elem(lane, i);
                        let mut acc = c[lane * r.c + i] as i32 as i64;
                        for kk in 0..k {
                            acc += am[m][kk] * bm[kk][n];
                        }
                        let v = if satfinite {
                            acc.clamp(i32::MIN as i64, i32::MAX as i64) as i32
                        } else {
                            acc as i32 // wraps modulo 2^32
                        };
                        d[lane * r.d + i] = v as u32;
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// wmma
// ---------------------------------------------------------------------------------------------

/// Which wmma matrix a fragment belongs to (`d` shares the accumulator layout of `c`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WmmaMatrix {
    A,
    B,
    /// The accumulator (C and D).
    C,
}

/// Memory layout of a wmma load/store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WmmaLayout {
    Row,
    Col,
}

/// Element type of a wmma fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WmmaType {
    F16,
    Bf16,
    F32,
}

impl WmmaType {
    /// Bytes of one element in memory.
    pub const fn bytes(self) -> usize {
        match self {
            WmmaType::F16 | WmmaType::Bf16 => 2,
            WmmaType::F32 => 4,
        }
    }
}

/// A fragment kind of the m16n16k16 shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WmmaFrag {
    pub matrix: WmmaMatrix,
    pub ty: WmmaType,
}

impl WmmaFrag {
    /// Elements per register (2 for 16-bit types, 1 for f32).
    pub const fn per_reg(&self) -> usize {
        4 / self.ty.bytes()
    }

    /// Registers per lane: 8 for f16 a/b (each element held twice), 4 for bf16 a/b, 8 for f32.
    pub const fn regs(&self) -> usize {
        match (self.matrix, self.ty) {
            (WmmaMatrix::A | WmmaMatrix::B, WmmaType::F16) => 8,
            (WmmaMatrix::A | WmmaMatrix::B, WmmaType::Bf16) => 4,
            _ => 8,
        }
    }

    /// Elements per lane.
    pub const fn elems(&self) -> usize {
        self.regs() * self.per_reg()
    }

    /// (row, col) of the 16x16 matrix held by element `e` (0..elems) of lane `lane`. Element
    /// `e` lives in register `e / per_reg`, bits `(e % per_reg) * 8 * bytes` upward.
    pub fn element(&self, lane: usize, e: usize) -> (usize, usize) {
        wmma_element(self.matrix, self.elems(), lane, e)
    }
}

/// The scrambled wmma layout: (row, col) of slot (lane, e) for a fragment with `elems`
/// elements per lane. See the module docs.
pub fn wmma_element(matrix: WmmaMatrix, elems: usize, lane: usize, e: usize) -> (usize, usize) {
    let s = lane * elems + e;
    let copy = (s / 256) as u32;
    let idx = scramble(matrix, copy, (s % 256) as u32);
    ((idx / 16) as usize, (idx % 16) as usize)
}

/// A fixed bijection of 0..256 per (matrix, copy): an odd multiplier, an offset and an
/// invertible xorshift, so that neighbouring slots land far apart.
fn scramble(matrix: WmmaMatrix, copy: u32, x: u32) -> u32 {
    let (mul, add, sh) = match (matrix, copy) {
        (WmmaMatrix::A, 0) => (167, 91, 3),
        (WmmaMatrix::A, _) => (73, 17, 5),
        (WmmaMatrix::B, 0) => (229, 45, 4),
        (WmmaMatrix::B, _) => (101, 203, 3),
        (WmmaMatrix::C, _) => (151, 130, 5),
    };
    let mut y = (x * mul + add) & 0xFF;
    y ^= y >> sh;
    (y * 13 + 7) & 0xFF
}

/// Offset in elements of matrix element (row, col) from the base address, for a layout and
/// stride (elements between the starts of consecutive rows for `.row`, columns for `.col`).
pub fn wmma_offset(layout: WmmaLayout, stride: u64, row: usize, col: usize) -> u64 {
    match layout {
        WmmaLayout::Row => row as u64 * stride + col as u64,
        WmmaLayout::Col => col as u64 * stride + row as u64,
    }
}

/// A decoded `wmma.load` / `wmma.store`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WmmaLoadStore {
    pub frag: WmmaFrag,
    pub layout: WmmaLayout,
    /// `Some(Global)`/`Some(Shared)`, or `None` for generic addressing.
    pub space: Option<crate::ptx::ir::Space>,
}

/// The default `stride` of m16n16k16 (the leading dimension, 16, for every matrix and layout).
pub const WMMA_DEFAULT_STRIDE: u64 = 16;

impl WmmaLoadStore {
    /// Address of element `e` of lane `lane`'s fragment for base address `base` and `stride`
    /// (in elements; [`WMMA_DEFAULT_STRIDE`] when the instruction has none).
    pub fn element_addr(&self, lane: usize, e: usize, base: u64, stride: u64) -> u64 {
        let (r, c) = self.frag.element(lane, e);
        base.wrapping_add(wmma_offset(self.layout, stride, r, c) * self.frag.ty.bytes() as u64)
    }

    /// The manual's alignment rule ("Matrix Storage for WMMA"): the start of every row (or
    /// column) must be aligned to the fragment's size in bytes, so the base address and
    /// `stride * element bytes` must both be multiples of it. An error names the violation.
    pub fn check_alignment(&self, base: u64, stride: u64) -> Result<(), String> {
        let frag_bytes = (self.frag.regs() * 4) as u64;
        if base % frag_bytes != 0 {
            return Err(format!(
                "wmma address {base:#x} is not aligned to the fragment size ({frag_bytes} bytes)"
            ));
        }
        let stride_bytes = stride * self.frag.ty.bytes() as u64;
        if stride_bytes % frag_bytes != 0 {
            return Err(format!(
                "wmma stride {stride} ({stride_bytes} bytes) is not a multiple of the fragment size \
                 ({frag_bytes} bytes)"
            ));
        }
        if stride < WMMA_DEFAULT_STRIDE {
            return Err(format!(
                "wmma stride {stride} is below the leading dimension {WMMA_DEFAULT_STRIDE}"
            ));
        }
        Ok(())
    }
}

/// A decoded `wmma.mma`: D(f32) = A * B + C(f32), A and B of `ab`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WmmaMma {
    pub ab: WmmaType,
}

/// A decoded wmma instruction (shape m16n16k16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wmma {
    /// `wmma.load.{a,b,c}`: operands `{regs}, [addr] {, stride}`.
    Load(WmmaLoadStore),
    /// `wmma.store.d`: operands `[addr], {regs} {, stride}`.
    Store(WmmaLoadStore),
    /// `wmma.mma`: operands `{d}, {a}, {b}, {c}`.
    Mma(WmmaMma),
}

impl Wmma {
    /// Decodes a `wmma` opcode; `Ok(None)` when not `wmma.*`, an error naming an unsupported
    /// form.
    pub fn parse(opcode: &str) -> Result<Option<Wmma>, String> {
        use crate::ptx::ir::Space;
        let mut t = opcode.split('.');
        if t.next() != Some("wmma") {
            return Ok(None);
        }
        let rest: Vec<&str> = t.collect();
        let err = || Err(format!("unsupported instruction form `{opcode}`"));
        let layout = |s: &str| match s {
            "row" => Some(WmmaLayout::Row),
            "col" => Some(WmmaLayout::Col),
            _ => None,
        };
        let ty = |s: &str| match s {
            "f16" => Some(WmmaType::F16),
            "bf16" => Some(WmmaType::Bf16),
            "f32" => Some(WmmaType::F32),
            _ => None,
        };
        match rest.as_slice() {
            [op @ ("load" | "store"), m, "sync", "aligned", tail @ ..] => {
                let matrix = match (*op, *m) {
                    ("load", "a") => WmmaMatrix::A,
                    ("load", "b") => WmmaMatrix::B,
                    ("load", "c") | ("store", "d") => WmmaMatrix::C,
                    _ => return err(),
                };
                // layout.shape{.ss}.type, with layout and shape in either order.
                let (lay, tail) = match tail {
                    [l, "m16n16k16", t @ ..] | ["m16n16k16", l, t @ ..] => match layout(l) {
                        Some(l) => (l, t),
                        None => return err(),
                    },
                    _ => return err(),
                };
                let (space, tyname) = match tail {
                    [t] => (None, *t),
                    ["global", t] => (Some(Space::Global), *t),
                    ["shared", t] | ["shared::cta", t] => (Some(Space::Shared), *t),
                    _ => return err(),
                };
                let Some(ty) = ty(tyname) else {
                    return err();
                };
                let ok = match matrix {
                    WmmaMatrix::A | WmmaMatrix::B => ty != WmmaType::F32,
                    WmmaMatrix::C => ty == WmmaType::F32,
                };
                if !ok {
                    return err();
                }
                let ls = WmmaLoadStore {
                    frag: WmmaFrag { matrix, ty },
                    layout: lay,
                    space,
                };
                Ok(Some(if *op == "load" {
                    Wmma::Load(ls)
                } else {
                    Wmma::Store(ls)
                }))
            }
            ["mma", "sync", "aligned", "row", "col", "m16n16k16", types @ ..] => {
                let ab = match types {
                    ["f32", "f32"] => WmmaType::F16,
                    ["f32", "bf16", "bf16", "f32"] => WmmaType::Bf16,
                    _ => return err(),
                };
                Ok(Some(Wmma::Mma(WmmaMma { ab })))
            }
            _ => err(),
        }
    }
}

impl WmmaMma {
    /// The A and B fragment kinds.
    pub const fn a(&self) -> WmmaFrag {
        WmmaFrag {
            matrix: WmmaMatrix::A,
            ty: self.ab,
        }
    }

    /// The B fragment kind.
    pub const fn b(&self) -> WmmaFrag {
        WmmaFrag {
            matrix: WmmaMatrix::B,
            ty: self.ab,
        }
    }

    /// The C and D fragment kind.
    pub const fn c(&self) -> WmmaFrag {
        WmmaFrag {
            matrix: WmmaMatrix::C,
            ty: WmmaType::F32,
        }
    }

    /// D = A * B + C over the whole warp (lane-major register arrays, see the module docs).
    /// Fails when the two copies of an f16 element disagree.
    pub fn exec(&self, a: &[u32], b: &[u32], c: &[u32], d: &mut [u32]) -> Result<(), String> {
        let am = gather16(self.a(), a)?;
        let bm = gather16(self.b(), b)?;
        let cf = self.c();
        if c.len() != WARP * cf.regs() || d.len() != WARP * cf.regs() {
            return Err("wmma.mma: wrong accumulator register count".into());
        }
        let mut cm = [[0f64; 16]; 16];
        for lane in 0..WARP {
            for e in 0..cf.elems() {
                let (r, col) = cf.element(lane, e);
                cm[r][col] = f32::from_bits(c[lane * cf.regs() + e]) as f64;
            }
        }
        for lane in 0..WARP {
            for e in 0..cf.elems() {
                let (m, n) = cf.element(lane, e);
                let mut acc = cm[m][n];
                for k in 0..16 {
                    acc += am[m][k] * bm[k][n];
                }
                d[lane * cf.regs() + e] = super::float::canon32(acc as f32).to_bits();
            }
        }
        Ok(())
    }
}

/// Gathers a 16-bit-element fragment into a 16x16 matrix of values, checking duplicate copies.
fn gather16(f: WmmaFrag, regs: &[u32]) -> Result<[[f64; 16]; 16], String> {
    if regs.len() != WARP * f.regs() {
        return Err(format!(
            "wmma.mma: {:?} fragment needs {} registers per lane",
            f.matrix,
            f.regs()
        ));
    }
    let mut bits = [[None::<u16>; 16]; 16];
    for lane in 0..WARP {
        for e in 0..f.elems() {
            let (r, c) = f.element(lane, e);
            let v = (regs[lane * f.regs() + e / 2] >> (16 * (e % 2))) as u16;
            match bits[r][c] {
                Some(prev) if prev != v => {
                    return Err(format!(
                        "wmma.mma: the two copies of {:?}[{r}][{c}] in the fragment differ \
                         ({prev:#06x} vs {v:#06x}); the code depends on a wmma fragment layout, \
                         which NVIDIA leaves unspecified",
                        f.matrix
                    ));
                }
                _ => bits[r][c] = Some(v),
            }
        }
    }
    let fmt = match f.ty {
        WmmaType::F16 => super::float::Fmt::F16,
        _ => super::float::Fmt::Bf16,
    };
    let mut m = [[0f64; 16]; 16];
    for r in 0..16 {
        for c in 0..16 {
            m[r][c] = fmt.to_f64(bits[r][c].unwrap_or(0) as u32);
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::float::{f32_to_bf16, f32_to_f16, Rnd};

    // Independent inverse layouts, written from the manual's formulas solved for the owner:
    // A (16x16, f16/bf16): lane = (row % 8) * 4 + (col % 8) / 2,
    //                      index = col % 2 + 2 * (row / 8) + 4 * (col / 8).
    fn a_owner(row: usize, col: usize) -> (usize, usize) {
        (
            (row % 8) * 4 + (col % 8) / 2,
            col % 2 + 2 * (row / 8) + 4 * (col / 8),
        )
    }
    // B (16x8): lane = col * 4 + (row % 8) / 2, index = row % 2 + 2 * (row / 8).
    fn b_owner(row: usize, col: usize) -> (usize, usize) {
        (col * 4 + (row % 8) / 2, row % 2 + 2 * (row / 8))
    }
    // C/D (16x8): lane = (row % 8) * 4 + col / 2, index = col % 2 + 2 * (row / 8).
    fn c_owner(row: usize, col: usize) -> (usize, usize) {
        ((row % 8) * 4 + col / 2, col % 2 + 2 * (row / 8))
    }
    // s8 A (16x32): lane = (row % 8) * 4 + (col % 16) / 4,
    //               index = col % 4 + 4 * (row / 8) + 8 * (col / 16).
    fn a8_owner(row: usize, col: usize) -> (usize, usize) {
        (
            (row % 8) * 4 + (col % 16) / 4,
            col % 4 + 4 * (row / 8) + 8 * (col / 16),
        )
    }
    // s8 B (32x8): lane = col * 4 + (row % 16) / 4, index = row % 4 + 4 * (row / 16).
    fn b8_owner(row: usize, col: usize) -> (usize, usize) {
        (col * 4 + (row % 16) / 4, row % 4 + 4 * (row / 16))
    }

    fn put16(regs: &mut [u32], nregs: usize, (lane, idx): (usize, usize), h: u16) {
        let r = &mut regs[lane * nregs + idx / 2];
        let sh = 16 * (idx % 2);
        *r = (*r & !(0xFFFF << sh)) | ((h as u32) << sh);
    }

    fn put8(regs: &mut [u32], nregs: usize, (lane, idx): (usize, usize), v: i8) {
        let r = &mut regs[lane * nregs + idx / 4];
        let sh = 8 * (idx % 4);
        *r = (*r & !(0xFF << sh)) | ((v as u8 as u32) << sh);
    }

    /// Builds fragments for float matrices, runs the mma, returns D as a 16x8 matrix read via
    /// the independent owner formulas.
    fn run_f(
        kind: MmaKind,
        a: &[[f32; 16]; 16],
        b: &[[f32; 8]; 16],
        c: &[[f32; 8]; 16],
    ) -> [[f32; 8]; 16] {
        let mma = Mma { kind };
        let enc = |x: f32| match kind {
            MmaKind::F16F32 => f32_to_f16(x, Rnd::Rn),
            _ => f32_to_bf16(x, Rnd::Rn),
        };
        let (mut ar, mut br, mut cr, mut dr) =
            (vec![0; 128], vec![0; 64], vec![0; 128], vec![0; 128]);
        for r in 0..16 {
            for k in 0..16 {
                put16(&mut ar, 4, a_owner(r, k), enc(a[r][k]));
            }
        }
        for k in 0..16 {
            for n in 0..8 {
                put16(&mut br, 2, b_owner(k, n), enc(b[k][n]));
            }
        }
        for r in 0..16 {
            for n in 0..8 {
                let (l, i) = c_owner(r, n);
                cr[l * 4 + i] = c[r][n].to_bits();
            }
        }
        mma.exec(&ar, &br, &cr, &mut dr);
        let mut d = [[0f32; 8]; 16];
        for r in 0..16 {
            for n in 0..8 {
                let (l, i) = c_owner(r, n);
                d[r][n] = f32::from_bits(dr[l * 4 + i]);
            }
        }
        d
    }

    #[test]
    fn layouts_match_the_independent_formulas() {
        for kind in [MmaKind::F16F32, MmaKind::Bf16F32] {
            let m = Mma { kind };
            for lane in 0..32 {
                for i in 0..8 {
                    let (r, c) = m.a_elem(lane, i);
                    assert_eq!(a_owner(r, c), (lane, i));
                }
                for i in 0..4 {
                    let (r, c) = m.b_elem(lane, i);
                    assert_eq!(b_owner(r, c), (lane, i));
                    let (r, c) = m.c_elem(lane, i);
                    assert_eq!(c_owner(r, c), (lane, i));
                }
            }
        }
        let m = Mma::parse("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32")
            .unwrap()
            .unwrap();
        for lane in 0..32 {
            for i in 0..16 {
                let (r, c) = m.a_elem(lane, i);
                assert_eq!(a8_owner(r, c), (lane, i));
            }
            for i in 0..8 {
                let (r, c) = m.b_elem(lane, i);
                assert_eq!(b8_owner(r, c), (lane, i));
            }
        }
        // Hand-checked points of the manual's figures: lane 0 holds A[0][0], A[0][1], A[8][0],
        // A[8][1], A[0][8], A[0][9], A[8][8], A[8][9]; lane 5 (group 1, thread 1) holds C[1][2].
        let m = Mma {
            kind: MmaKind::F16F32,
        };
        let got: Vec<_> = (0..8).map(|i| m.a_elem(0, i)).collect();
        assert_eq!(
            got,
            [
                (0, 0),
                (0, 1),
                (8, 0),
                (8, 1),
                (0, 8),
                (0, 9),
                (8, 8),
                (8, 9)
            ]
        );
        assert_eq!(m.c_elem(5, 0), (1, 2));
        assert_eq!(m.b_elem(5, 3), (11, 1));
    }

    #[test]
    fn one_hot_f16_and_bf16() {
        for kind in [MmaKind::F16F32, MmaKind::Bf16F32] {
            for &(m0, k0, n0) in &[(0, 0, 0), (9, 13, 6), (15, 15, 7), (4, 8, 3), (12, 1, 0)] {
                let mut a = [[0f32; 16]; 16];
                let mut b = [[0f32; 8]; 16];
                let mut c = [[0f32; 8]; 16];
                a[m0][k0] = 2.0;
                b[k0][n0] = 3.0;
                for (r, row) in c.iter_mut().enumerate() {
                    for (n, x) in row.iter_mut().enumerate() {
                        *x = (r * 8 + n) as f32 * 0.25;
                    }
                }
                let d = run_f(kind, &a, &b, &c);
                for r in 0..16 {
                    for n in 0..8 {
                        let want = c[r][n] + if (r, n) == (m0, n0) { 6.0 } else { 0.0 };
                        assert_eq!(d[r][n], want, "{kind:?} ({m0},{k0},{n0}) at ({r},{n})");
                    }
                }
            }
        }
    }

    #[test]
    fn coded_matrices_f16_bf16() {
        // Small integers: every product and sum exact, so D equals the reference exactly.
        let mut a = [[0f32; 16]; 16];
        let mut b = [[0f32; 8]; 16];
        let mut c = [[0f32; 8]; 16];
        for r in 0..16 {
            for k in 0..16 {
                a[r][k] = ((r * 3 + k * 5) % 7) as f32 - 3.0;
            }
        }
        for k in 0..16 {
            for n in 0..8 {
                b[k][n] = ((k * 2 + n * 7) % 5) as f32 - 2.0;
            }
        }
        for r in 0..16 {
            for n in 0..8 {
                c[r][n] = (r as f32) * 100.0 + n as f32;
            }
        }
        for kind in [MmaKind::F16F32, MmaKind::Bf16F32] {
            let d = run_f(kind, &a, &b, &c);
            for r in 0..16 {
                for n in 0..8 {
                    let want: f32 = c[r][n] + (0..16).map(|k| a[r][k] * b[k][n]).sum::<f32>();
                    assert_eq!(d[r][n], want, "{kind:?} ({r},{n})");
                }
            }
        }
        // Products of values that round differently in f16 and bf16: 1 + 2^-9 is exact in f16,
        // rounds to 1 in bf16 (8 significant bits).
        let mut a1 = [[0f32; 16]; 16];
        let mut b1 = [[0f32; 8]; 16];
        a1[0][0] = 1.0 + 2f32.powi(-9);
        b1[0][0] = 1.0;
        let z = [[0f32; 8]; 16];
        assert_eq!(
            run_f(MmaKind::F16F32, &a1, &b1, &z)[0][0],
            1.0 + 2f32.powi(-9)
        );
        assert_eq!(run_f(MmaKind::Bf16F32, &a1, &b1, &z)[0][0], 1.0);
    }

    #[test]
    fn s8_mma_with_negatives_and_wrap() {
        for (name, satfinite) in [
            ("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32", false),
            (
                "mma.sync.aligned.m16n8k32.row.col.satfinite.s32.s8.s8.s32",
                true,
            ),
        ] {
            let m = Mma::parse(name).unwrap().unwrap();
            let mut a = [[0i8; 32]; 16];
            let mut b = [[0i8; 8]; 32];
            for r in 0..16 {
                for k in 0..32 {
                    a[r][k] = ((r * 37 + k * 11) % 256) as u8 as i8; // covers -128..127
                }
            }
            for k in 0..32 {
                for n in 0..8 {
                    b[k][n] = ((k * 53 + n * 29 + 7) % 256) as u8 as i8;
                }
            }
            let (mut ar, mut br, mut cr, mut dr) =
                (vec![0; 128], vec![0; 64], vec![0; 128], vec![0; 128]);
            for r in 0..16 {
                for k in 0..32 {
                    put8(&mut ar, 4, a8_owner(r, k), a[r][k]);
                }
            }
            for k in 0..32 {
                for n in 0..8 {
                    put8(&mut br, 2, b8_owner(k, n), b[k][n]);
                }
            }
            let cval = |r: usize, n: usize| -> i32 {
                if r == 0 && n == 0 {
                    i32::MAX // forces overflow
                } else {
                    (r as i32 - 8) * 1000 + n as i32
                }
            };
            for r in 0..16 {
                for n in 0..8 {
                    let (l, i) = c_owner(r, n);
                    cr[l * 4 + i] = cval(r, n) as u32;
                }
            }
            m.exec(&ar, &br, &cr, &mut dr);
            for r in 0..16 {
                for n in 0..8 {
                    let exact: i64 = cval(r, n) as i64
                        + (0..32)
                            .map(|k| a[r][k] as i64 * b[k][n] as i64)
                            .sum::<i64>();
                    let want = if satfinite {
                        exact.clamp(i32::MIN as i64, i32::MAX as i64) as i32
                    } else {
                        exact as i32
                    };
                    let (l, i) = c_owner(r, n);
                    assert_eq!(dr[l * 4 + i] as i32, want, "{name} ({r},{n})");
                }
            }
            let (l, i) = c_owner(0, 0);
            let exact00 = i32::MAX as i64
                + (0..32)
                    .map(|k| a[0][k] as i64 * b[k][0] as i64)
                    .sum::<i64>();
            assert!(exact00 > i32::MAX as i64, "the test must overflow");
            assert_eq!(dr[l * 4 + i] == i32::MAX as u32, satfinite);
        }
        // u8 x s8.
        let m = Mma::parse("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32")
            .unwrap()
            .unwrap();
        let (mut ar, mut br, cr, mut dr) = (vec![0; 128], vec![0; 64], vec![0; 128], vec![0; 128]);
        put8(&mut ar, 4, a8_owner(3, 20), -1); // 0xFF = 255 as u8
        put8(&mut br, 2, b8_owner(20, 5), -2);
        m.exec(&ar, &br, &cr, &mut dr);
        let (l, i) = c_owner(3, 5);
        assert_eq!(dr[l * 4 + i] as i32, -510);
    }

    #[test]
    fn parse_forms() {
        assert!(Mma::parse("mov.b32").unwrap().is_none());
        assert!(Mma::parse("mma.sync.aligned.m16n8k16.row.col.f16.f16.f16.f16").is_err());
        assert_eq!(
            Wmma::parse("wmma.load.a.sync.aligned.row.m16n16k16.shared.f16").unwrap(),
            Some(Wmma::Load(WmmaLoadStore {
                frag: WmmaFrag {
                    matrix: WmmaMatrix::A,
                    ty: WmmaType::F16
                },
                layout: WmmaLayout::Row,
                space: Some(crate::ptx::ir::Space::Shared),
            }))
        );
        let Some(Wmma::Load(b)) =
            Wmma::parse("wmma.load.b.sync.aligned.col.m16n16k16.bf16").unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (b.frag.regs(), b.layout, b.space),
            (4, WmmaLayout::Col, None)
        );
        let Some(Wmma::Store(s)) =
            Wmma::parse("wmma.store.d.sync.aligned.row.m16n16k16.global.f32").unwrap()
        else {
            panic!()
        };
        assert_eq!((s.frag.matrix, s.frag.regs()), (WmmaMatrix::C, 8));
        assert_eq!(
            Wmma::parse("wmma.mma.sync.aligned.row.col.m16n16k16.f32.f32").unwrap(),
            Some(Wmma::Mma(WmmaMma { ab: WmmaType::F16 }))
        );
        assert_eq!(
            Wmma::parse("wmma.mma.sync.aligned.row.col.m16n16k16.f32.bf16.bf16.f32").unwrap(),
            Some(Wmma::Mma(WmmaMma { ab: WmmaType::Bf16 }))
        );
        assert!(Wmma::parse("wmma.load.a.sync.aligned.row.m8n32k16.f16").is_err());
        assert!(Wmma::parse("ld.global.u32").unwrap().is_none());
    }

    #[test]
    fn wmma_layout_is_a_scrambled_cover() {
        for (frag, copies) in [
            (
                WmmaFrag {
                    matrix: WmmaMatrix::A,
                    ty: WmmaType::F16,
                },
                2,
            ),
            (
                WmmaFrag {
                    matrix: WmmaMatrix::B,
                    ty: WmmaType::F16,
                },
                2,
            ),
            (
                WmmaFrag {
                    matrix: WmmaMatrix::A,
                    ty: WmmaType::Bf16,
                },
                1,
            ),
            (
                WmmaFrag {
                    matrix: WmmaMatrix::B,
                    ty: WmmaType::Bf16,
                },
                1,
            ),
            (
                WmmaFrag {
                    matrix: WmmaMatrix::C,
                    ty: WmmaType::F32,
                },
                1,
            ),
        ] {
            let mut count = [[0; 16]; 16];
            let mut same_as_row_major = 0;
            for lane in 0..32 {
                for e in 0..frag.elems() {
                    let (r, c) = frag.element(lane, e);
                    count[r][c] += 1;
                    // A naive layout would put lane*elems+e at row-major position.
                    if r * 16 + c == (lane * frag.elems() + e) % 256 {
                        same_as_row_major += 1;
                    }
                }
            }
            assert!(count.iter().flatten().all(|&n| n == copies), "{frag:?}");
            assert!(same_as_row_major < 8, "{frag:?}: {same_as_row_major}");
        }
        // Not the mma.sync C layout either: lane 0's first two accumulators are not (0,0),(0,1).
        let c = WmmaFrag {
            matrix: WmmaMatrix::C,
            ty: WmmaType::F32,
        };
        assert_ne!((c.element(0, 0), c.element(0, 1)), ((0, 0), (0, 1)));
    }

    /// Emulates what the engine does for wmma.load/store with a memory image.
    fn load(ls: &WmmaLoadStore, mem: &[u16], stride: u64) -> Vec<u32> {
        let f = ls.frag;
        let mut regs = vec![0u32; 32 * f.regs()];
        for lane in 0..32 {
            for e in 0..f.elems() {
                let (r, c) = f.element(lane, e);
                let v = mem[wmma_offset(ls.layout, stride, r, c) as usize] as u32;
                regs[lane * f.regs() + e / 2] |= v << (16 * (e % 2));
            }
        }
        regs
    }

    #[test]
    fn wmma_addresses_and_alignment() {
        let Some(Wmma::Load(a)) =
            Wmma::parse("wmma.load.a.sync.aligned.row.m16n16k16.shared.f16").unwrap()
        else {
            panic!()
        };
        let Some(Wmma::Load(b)) =
            Wmma::parse("wmma.load.b.sync.aligned.col.m16n16k16.bf16").unwrap()
        else {
            panic!()
        };
        // f16 fragments are 32 bytes: p and 2*stride must be multiples of 32.
        assert!(a.check_alignment(0x1000, 16).is_ok());
        assert!(a.check_alignment(0x1010, 16).is_err());
        assert!(a.check_alignment(0x1000, 24).is_err());
        assert!(a.check_alignment(0x1000, 32).is_ok());
        assert!(a.check_alignment(0x1000, 8).is_err());
        // The manual's example, worked for the strides kernels/lora.cu used: 72 halves are
        // 144 bytes, not a multiple of 32 (rows would start 16 bytes off the fragment size), so it
        // is rejected although CUDA C++'s ldm rule (a multiple of 16 bytes) allows it; 80 halves
        // (160 bytes = 5 * 32) are accepted.
        assert!(a.check_alignment(0x1000, 72).is_err());
        assert!(a.check_alignment(0x1000, 80).is_ok());
        // bf16 fragments are 16 bytes (4 .b32 registers): 72 bf16 are 144 = 9 * 16 bytes.
        assert!(b.check_alignment(0x1010, 24).is_ok());
        assert!(b.check_alignment(0x1000, 72).is_ok());
        // Element addresses: row-major A at (r, c) is base + 2*(r*stride + c).
        for lane in [0, 7, 31] {
            for e in 0..16 {
                let (r, c) = a.frag.element(lane, e);
                assert_eq!(
                    a.element_addr(lane, e, 0x100, 40),
                    0x100 + 2 * (r as u64 * 40 + c as u64)
                );
                let (r, c) = b.frag.element(lane, e % 8);
                assert_eq!(
                    b.element_addr(lane, e % 8, 0x200, 24),
                    0x200 + 2 * (c as u64 * 24 + r as u64)
                );
            }
        }
    }

    #[test]
    fn wmma_round_trip_gives_a_times_b_plus_c() {
        for (ab, mma_name, aname, bname) in [
            (
                WmmaType::F16,
                "wmma.mma.sync.aligned.row.col.m16n16k16.f32.f32",
                "wmma.load.a.sync.aligned.row.m16n16k16.shared.f16",
                "wmma.load.b.sync.aligned.col.m16n16k16.shared.f16",
            ),
            (
                WmmaType::Bf16,
                "wmma.mma.sync.aligned.row.col.m16n16k16.f32.bf16.bf16.f32",
                "wmma.load.a.sync.aligned.row.m16n16k16.bf16",
                "wmma.load.b.sync.aligned.col.m16n16k16.bf16",
            ),
        ] {
            let Some(Wmma::Mma(mma)) = Wmma::parse(mma_name).unwrap() else {
                panic!()
            };
            let Some(Wmma::Load(la)) = Wmma::parse(aname).unwrap() else {
                panic!()
            };
            let Some(Wmma::Load(lb)) = Wmma::parse(bname).unwrap() else {
                panic!()
            };
            let Some(Wmma::Store(sd)) =
                Wmma::parse("wmma.store.d.sync.aligned.row.m16n16k16.global.f32").unwrap()
            else {
                panic!()
            };
            assert_eq!(mma.ab, ab);
            let enc = |x: f32| match ab {
                WmmaType::F16 => f32_to_f16(x, Rnd::Rn),
                _ => f32_to_bf16(x, Rnd::Rn),
            };
            let av = |m: usize, k: usize| ((m * 5 + k * 3) % 9) as f32 - 4.0;
            let bv = |k: usize, n: usize| ((k * 7 + n) % 5) as f32 - 2.0;
            let cv = |m: usize, n: usize| (m * 16 + n) as f32 * 0.5;
            // A row-major with stride 24, B column-major with stride 20 (padded storage).
            let (sa, sb, sdd) = (24u64, 20u64, 18u64);
            let mut amem = vec![0u16; 16 * sa as usize];
            let mut bmem = vec![0u16; 16 * sb as usize];
            for m in 0..16 {
                for k in 0..16 {
                    amem[m * sa as usize + k] = enc(av(m, k));
                    bmem[m * sb as usize + k] = enc(bv(k, m)); // column m of B = B[k][m]
                }
            }
            let a = load(&la, &amem, sa);
            let b = load(&lb, &bmem, sb);
            // C in the accumulator layout.
            let cf = mma.c();
            let mut c = vec![0u32; 32 * 8];
            for lane in 0..32 {
                for e in 0..8 {
                    let (m, n) = cf.element(lane, e);
                    c[lane * 8 + e] = cv(m, n).to_bits();
                }
            }
            let mut d = vec![0u32; 32 * 8];
            mma.exec(&a, &b, &c, &mut d).unwrap();
            // Store D row-major with stride 18 and check every element.
            let mut out = vec![f32::NAN; 16 * sdd as usize];
            for lane in 0..32 {
                for e in 0..sd.frag.elems() {
                    let (m, n) = sd.frag.element(lane, e);
                    out[wmma_offset(sd.layout, sdd, m, n) as usize] =
                        f32::from_bits(d[lane * 8 + e]);
                }
            }
            for m in 0..16 {
                for n in 0..16 {
                    let want = cv(m, n) + (0..16).map(|k| av(m, k) * bv(k, n)).sum::<f32>();
                    assert_eq!(out[m * sdd as usize + n], want, "{ab:?} ({m},{n})");
                }
            }
            // Editing one register of A breaks the f16 duplicate check (layout dependence).
            if ab == WmmaType::F16 {
                let mut a2 = a.clone();
                a2[3] ^= 0x0001;
                let e = mma.exec(&a2, &b, &c, &mut d).unwrap_err();
                assert!(e.contains("layout"), "{e}");
            }
        }
    }
}
