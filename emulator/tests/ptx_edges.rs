//! PTX-only edge cases, hand-written PTX (no nvcc): identifier syntax, sign- and zero-extending
//! loads into wider registers, wide/hi multiplies, shift clamping, fused multiply-add, directed
//! rounding, `.ftz`, NaN in min/max/setp, and int->float rounding. Every expected value is worked
//! by hand from the PTX ISA and IEEE 754; the working is in the comments.
mod common;
use common::*;

/// The PTX ISA's identifier syntax (section "Identifiers"):
/// `[a-zA-Z][a-zA-Z0-9_$]*` or `[_$%][a-zA-Z0-9_$]+`. So a register may be named `q` with no
/// `%`, as user inline asm often does (`{ .reg .pred p; ... }`).
#[test]
fn register_names_without_percent() {
    let ptx = r#"
.version 8.0
.target sm_80
.address_size 64

.visible .entry plain_names(
    .param .u64 out
)
{
    .reg .b32 q, r_1;
    .reg .b64 addr;
    .reg .pred p;
    ld.param.u64 addr, [out];
    cvta.to.global.u64 addr, addr;
    mov.u32 q, 41;
    add.u32 r_1, q, 1;
    setp.eq.u32 p, r_1, 42;
    @p st.global.u32 [addr], r_1;
    { .reg .pred p; setp.ne.u32 p, q, 41; @p st.global.u32 [addr+4], q; }
    ret;
}
"#;
    let mut gpu = Gpu::from_text(ptx);
    let out = gpu.upload(&[0u32, 7u32]);
    gpu.launch("plain_names", [1, 1, 1], [1, 1, 1], &[ptr(out)]);
    // 41 + 1 = 42 stored; the scoped p is false (q == 41), so out[1] keeps 7
    assert_eq!(gpu.download::<u32>(out, 2), vec![42, 7]);
}

const INT_PTX: &str = r#"
.version 8.0
.target sm_80
.address_size 64

// in: 8 bytes 0x80 0x7f 0xff 0x01 0x00 0x80 0xff 0xff
.visible .entry int_edges(
    .param .u64 out,
    .param .u64 in
)
{
    .reg .b32 %r<40>;
    .reg .b64 %rd<20>;
    ld.param.u64 %rd1, [out];
    ld.param.u64 %rd2, [in];
    cvta.to.global.u64 %rd1, %rd1;
    cvta.to.global.u64 %rd2, %rd2;

    ld.global.s8 %r1, [%rd2];          // 0x80 sign-extended: 0xffffff80
    ld.global.u8 %r2, [%rd2];          // 0x80 zero-extended: 0x00000080
    ld.global.s16 %r3, [%rd2+4];       // 0x8000 sign-extended: 0xffff8000
    ld.global.u16 %r4, [%rd2+4];       // 0x00008000
    ld.global.s8 %rd3, [%rd2+2];       // 0xff into 64 bits: 0xffffffffffffffff
    ld.global.u8 %rd4, [%rd2+2];       // 0x00000000000000ff
    st.global.u32 [%rd1], %r1;
    st.global.u32 [%rd1+4], %r2;
    st.global.u32 [%rd1+8], %r3;
    st.global.u32 [%rd1+12], %r4;
    st.global.u64 [%rd1+16], %rd3;
    st.global.u64 [%rd1+24], %rd4;

    mov.u32 %r5, -5;
    cvt.s64.s32 %rd5, %r5;             // 0xfffffffffffffffb
    cvt.u64.u32 %rd6, %r5;             // 0x00000000fffffffb
    st.global.u64 [%rd1+32], %rd5;
    st.global.u64 [%rd1+40], %rd6;

    mov.u32 %r6, -3;
    mov.u32 %r7, 100000;
    mul.wide.s32 %rd7, %r6, %r7;       // -300000
    mov.u32 %r8, 0xffffffff;
    mul.wide.u32 %rd8, %r8, %r8;       // (2^32 - 1)^2 = 0xfffffffe00000001
    st.global.u64 [%rd1+48], %rd7;
    st.global.u64 [%rd1+56], %rd8;

    mov.u32 %r9, 0x80000000;
    mov.u32 %r10, 2;
    mul.hi.s32 %r11, %r9, %r10;        // -2^31 * 2 = -2^32: high word 0xffffffff
    mul.hi.u32 %r12, %r9, %r10;        // 2^31 * 2 = 2^32: high word 1
    mov.u32 %r13, 0x10000;
    mul.lo.s32 %r14, %r13, %r13;       // 2^32: low word 0
    st.global.u32 [%rd1+64], %r11;
    st.global.u32 [%rd1+68], %r12;
    st.global.u32 [%rd1+72], %r14;

    // shifts: amounts above the width are clamped to the width
    mov.u32 %r15, 1;
    mov.u32 %r16, 33;
    shl.b32 %r17, %r15, %r16;          // 0
    mov.u32 %r18, -8;
    mov.u32 %r19, 40;
    shr.s32 %r20, %r18, %r19;          // sign fill: -1
    shr.u32 %r21, %r9, 32;             // 0
    shr.s32 %r22, %r18, 1;             // -4
    shr.u32 %r23, %r18, 1;             // 0x7ffffffc
    st.global.u32 [%rd1+76], %r17;
    st.global.u32 [%rd1+80], %r20;
    st.global.u32 [%rd1+84], %r21;
    st.global.u32 [%rd1+88], %r22;
    st.global.u32 [%rd1+92], %r23;

    mov.u32 %r24, -7;
    mov.u32 %r25, 3;
    rem.s32 %r26, %r24, %r25;          // -1 (sign of the dividend)
    div.s32 %r27, %r24, %r10;          // -3 (truncation)
    rem.u32 %r28, %r24, %r25;          // 0xfffffff9 = 4294967289 = 3 * 1431655763: 0
    st.global.u32 [%rd1+96], %r26;
    st.global.u32 [%rd1+100], %r27;
    st.global.u32 [%rd1+104], %r28;
    ret;
}
"#;

#[test]
fn integer_extension_wide_multiply_shift_clamp() {
    let mut gpu = Gpu::from_text(INT_PTX);
    let input = gpu.upload(&[0x80u8, 0x7f, 0xff, 0x01, 0x00, 0x80, 0xff, 0xff]);
    let out = gpu.filled(27, 0xaaaa_aaaau32);
    gpu.launch("int_edges", [1, 1, 1], [1, 1, 1], &[ptr(out), ptr(input)]);
    let w: Vec<u32> = gpu.download(out, 27);
    let q = |i: usize| (w[i] as u64) | ((w[i + 1] as u64) << 32);
    assert_eq!(w[0], 0xffff_ff80, "ld.s8 into .b32");
    assert_eq!(w[1], 0x0000_0080, "ld.u8 into .b32");
    assert_eq!(w[2], 0xffff_8000, "ld.s16 into .b32");
    assert_eq!(w[3], 0x0000_8000, "ld.u16 into .b32");
    assert_eq!(q(4), u64::MAX, "ld.s8 into .b64");
    assert_eq!(q(6), 0xff, "ld.u8 into .b64");
    assert_eq!(q(8), 0xffff_ffff_ffff_fffb, "cvt.s64.s32 -5");
    assert_eq!(q(10), 0x0000_0000_ffff_fffb, "cvt.u64.u32 of 0xfffffffb");
    assert_eq!(q(12) as i64, -300000, "mul.wide.s32");
    assert_eq!(q(14), 0xffff_fffe_0000_0001, "mul.wide.u32");
    assert_eq!(w[16], 0xffff_ffff, "mul.hi.s32");
    assert_eq!(w[17], 1, "mul.hi.u32");
    assert_eq!(w[18], 0, "mul.lo.s32");
    assert_eq!(w[19], 0, "shl.b32 by 33");
    assert_eq!(w[20] as i32, -1, "shr.s32 -8 by 40");
    assert_eq!(w[21], 0, "shr.u32 by 32");
    assert_eq!(w[22] as i32, -4, "shr.s32 -8 by 1");
    assert_eq!(w[23], 0x7fff_fffc, "shr.u32 -8 by 1");
    assert_eq!(w[24] as i32, -1, "rem.s32 -7 % 3");
    assert_eq!(w[25] as i32, -3, "div.s32 -7 / 2");
    assert_eq!(w[26], 0, "rem.u32 4294967289 % 3");
}

const FLOAT_PTX: &str = r#"
.version 8.0
.target sm_80
.address_size 64

.visible .entry float_edges(
    .param .u64 out
)
{
    .reg .f32 %f<40>;
    .reg .b32 %r<20>;
    .reg .pred %p<10>;
    .reg .b64 %rd<4>;
    ld.param.u64 %rd1, [out];
    cvta.to.global.u64 %rd1, %rd1;

    // a = 1 + 2^-12; a*a = 1 + 2^-11 + 2^-24 exactly. c = -(1 + 2^-11).
    mov.f32 %f1, 0f3F800800;
    mov.f32 %f2, 0fBF801000;
    fma.rn.f32 %f3, %f1, %f1, %f2;     // fused, one rounding: 2^-24 = 0x33800000
    mul.rn.f32 %f4, %f1, %f1;          // 2^-24 is half an ulp (2^-23) and the lsb of
    add.rn.f32 %f5, %f4, %f2;          //   1 + 2^-11 is even: rounds to 1 + 2^-11; sum 0
    st.global.f32 [%rd1], %f3;
    st.global.f32 [%rd1+4], %f5;

    // 1 + 2^-24: exactly half an ulp above 1
    mov.f32 %f6, 0f3F800000;
    mov.f32 %f7, 0f33800000;
    add.rn.f32 %f8, %f6, %f7;          // tie, 1.0 is even: 0x3F800000
    add.rz.f32 %f9, %f6, %f7;          // 0x3F800000
    add.rm.f32 %f10, %f6, %f7;         // 0x3F800000
    add.rp.f32 %f11, %f6, %f7;         // 0x3F800001
    neg.f32 %f12, %f6;
    neg.f32 %f13, %f7;
    add.rm.f32 %f14, %f12, %f13;       // -(1 + 2^-24) toward -Inf: 0xBF800001
    add.rz.f32 %f15, %f12, %f13;       // toward zero: 0xBF800000
    st.global.f32 [%rd1+8], %f8;
    st.global.f32 [%rd1+12], %f9;
    st.global.f32 [%rd1+16], %f10;
    st.global.f32 [%rd1+20], %f11;
    st.global.f32 [%rd1+24], %f14;
    st.global.f32 [%rd1+28], %f15;

    // subnormals: 2^-126 * 0.5 = 2^-127 = 0x00400000; .ftz flushes it to +0
    mov.f32 %f16, 0f00800000;
    mov.f32 %f17, 0f3F000000;
    mul.rn.f32 %f18, %f16, %f17;       // 0x00400000
    mul.rn.ftz.f32 %f19, %f16, %f17;   // 0
    mov.f32 %f20, 0f00000001;
    mov.f32 %f21, 0f00000000;
    add.rn.f32 %f22, %f20, %f21;       // 0x00000001
    add.rn.ftz.f32 %f23, %f20, %f21;   // input flushed: 0
    st.global.f32 [%rd1+32], %f18;
    st.global.f32 [%rd1+36], %f19;
    st.global.f32 [%rd1+40], %f22;
    st.global.f32 [%rd1+44], %f23;

    // NaN: min/max return the other operand; ordered compares are false, unordered true
    mov.f32 %f24, 0f7FC00000;
    min.f32 %f25, %f24, %f6;           // 1.0
    max.f32 %f26, %f24, %f12;          // -1.0
    st.global.f32 [%rd1+48], %f25;
    st.global.f32 [%rd1+52], %f26;
    setp.lt.f32 %p1, %f24, %f6;        // false
    setp.ltu.f32 %p2, %f24, %f6;       // true
    setp.ne.f32 %p3, %f24, %f24;       // false
    setp.neu.f32 %p4, %f24, %f24;      // true
    setp.num.f32 %p5, %f6, %f24;       // false
    setp.nan.f32 %p6, %f6, %f24;       // true
    selp.u32 %r1, 1, 0, %p1;
    selp.u32 %r2, 1, 0, %p2;
    selp.u32 %r3, 1, 0, %p3;
    selp.u32 %r4, 1, 0, %p4;
    selp.u32 %r5, 1, 0, %p5;
    selp.u32 %r6, 1, 0, %p6;
    st.global.u32 [%rd1+56], %r1;
    st.global.u32 [%rd1+60], %r2;
    st.global.u32 [%rd1+64], %r3;
    st.global.u32 [%rd1+68], %r4;
    st.global.u32 [%rd1+72], %r5;
    st.global.u32 [%rd1+76], %r6;

    // int -> f32: 2^24 + 1 is a tie between 2^24 (even) and 2^24 + 2
    mov.u32 %r7, 16777217;
    cvt.rn.f32.s32 %f27, %r7;          // 0x4B800000
    mov.u32 %r8, 0xffffffff;
    cvt.rn.f32.u32 %f28, %r8;          // 2^32 - 1 rounds to 2^32: 0x4F800000
    cvt.rz.f32.u32 %f29, %r8;          // 4294967040: 0x4F7FFFFF
    cvt.rn.f32.s32 %f30, %r8;          // -1: 0xBF800000
    st.global.f32 [%rd1+80], %f27;
    st.global.f32 [%rd1+84], %f28;
    st.global.f32 [%rd1+88], %f29;
    st.global.f32 [%rd1+92], %f30;
    ret;
}
"#;

#[test]
fn float_fma_rounding_ftz_nan_compares() {
    let mut gpu = Gpu::from_text(FLOAT_PTX);
    let out = gpu.filled(24, 0xaaaa_aaaau32);
    gpu.launch("float_edges", [1, 1, 1], [1, 1, 1], &[ptr(out)]);
    let w: Vec<u32> = gpu.download(out, 24);
    let want: [(u32, &str); 24] = [
        (0x3380_0000, "fma.rn fused: 2^-24"),
        (0x0000_0000, "mul.rn then add.rn: 0"),
        (0x3F80_0000, "add.rn 1 + 2^-24 (tie to even)"),
        (0x3F80_0000, "add.rz 1 + 2^-24"),
        (0x3F80_0000, "add.rm 1 + 2^-24"),
        (0x3F80_0001, "add.rp 1 + 2^-24"),
        (0xBF80_0001, "add.rm -(1 + 2^-24)"),
        (0xBF80_0000, "add.rz -(1 + 2^-24)"),
        (0x0040_0000, "mul.rn subnormal result kept"),
        (0x0000_0000, "mul.rn.ftz subnormal result flushed"),
        (0x0000_0001, "add.rn subnormal input kept"),
        (0x0000_0000, "add.rn.ftz subnormal input flushed"),
        (0x3F80_0000, "min(NaN, 1) = 1"),
        (0xBF80_0000, "max(NaN, -1) = -1"),
        (0, "setp.lt NaN"),
        (1, "setp.ltu NaN"),
        (0, "setp.ne NaN NaN"),
        (1, "setp.neu NaN NaN"),
        (0, "setp.num 1 NaN"),
        (1, "setp.nan 1 NaN"),
        (0x4B80_0000, "cvt.rn.f32.s32 2^24 + 1"),
        (0x4F80_0000, "cvt.rn.f32.u32 2^32 - 1"),
        (0x4F7F_FFFF, "cvt.rz.f32.u32 2^32 - 1"),
        (0xBF80_0000, "cvt.rn.f32.s32 -1"),
    ];
    let bad: Vec<String> = want
        .iter()
        .enumerate()
        .filter(|(i, (v, _))| w[*i] != *v)
        .map(|(i, (v, why))| format!("word {i} ({why}): got {:#010x}, want {v:#010x}", w[i]))
        .collect();
    assert!(bad.is_empty(), "{} wrong:\n{}", bad.len(), bad.join("\n"));
}

const MISC_PTX: &str = r#"
.version 8.0
.target sm_80
.address_size 64

.visible .entry misc_edges(
    .param .u64 out
)
{
    .reg .f32 %f<30>;
    .reg .f64 %fd<20>;
    .reg .b16 %rs<10>;
    .reg .b32 %r<20>;
    .reg .b64 %rd<20>;
    .reg .pred %p<4>;
    ld.param.u64 %rd1, [out];
    cvta.to.global.u64 %rd1, %rd1;

    // cvt.rni.f32.f32: round to an integral value, ties to even, in floating point
    mov.f32 %f1, 0f40200000;           // 2.5
    cvt.rni.f32.f32 %f2, %f1;          // 2.0 = 0x40000000
    mov.f32 %f3, 0fC0200000;           // -2.5
    cvt.rni.f32.f32 %f4, %f3;          // -2.0 = 0xC0000000
    mov.f32 %f5, 0f40600000;           // 3.5
    cvt.rni.f32.f32 %f6, %f5;          // 4.0 = 0x40800000
    mov.f32 %f7, 0fBECCCCCD;           // -0.4
    cvt.rni.f32.f32 %f8, %f7;          // -0.0 = 0x80000000
    mov.f32 %f9, 0f7149F2CA;           // 1e30 (already integral)
    cvt.rni.f32.f32 %f10, %f9;         // 0x7149F2CA
    st.global.f32 [%rd1], %f2;
    st.global.f32 [%rd1+4], %f4;
    st.global.f32 [%rd1+8], %f6;
    st.global.f32 [%rd1+12], %f8;
    st.global.f32 [%rd1+16], %f10;

    // 16-bit: cvt.rn.f32.s16, cvt.s16.s8 (sign-extends the low byte), shr.s16, mul.wide.u16
    mov.b16 %rs1, 0x8000;
    cvt.rn.f32.s16 %f11, %rs1;         // -32768.0 = 0xC7000000
    mov.b16 %rs2, 0x1280;
    cvt.s16.s8 %rs3, %rs2;             // low byte 0x80 -> 0xFF80
    shr.s16 %rs4, %rs1, 3;             // 0x8000 >> 3 arithmetic = 0xF000
    mov.b16 %rs5, 0xFFFF;
    mul.wide.u16 %r1, %rs5, %rs5;      // 65535^2 = 0xFFFE0001
    cvt.u32.u16 %r2, %rs3;
    cvt.u32.u16 %r3, %rs4;
    st.global.f32 [%rd1+20], %f11;
    st.global.u32 [%rd1+24], %r2;
    st.global.u32 [%rd1+28], %r3;
    st.global.u32 [%rd1+32], %r1;

    // f64 -> f32 rounding; f32 -> f64 exact; div.rn.f64
    mov.f64 %fd1, 0d3FF0000010000000;  // 1 + 2^-24: tie -> 1.0
    cvt.rn.f32.f64 %f12, %fd1;
    mov.f64 %fd2, 0d3FF0000010000001;  // just above: 1 + 2^-23 = 0x3F800001
    cvt.rn.f32.f64 %f13, %fd2;
    mov.f64 %fd3, 0d7E37E43C8800759C;  // 1e300 -> +Inf
    cvt.rn.f32.f64 %f14, %fd3;
    mov.f64 %fd4, 0d3690000000000000;  // 2^-150: tie between 0 (even) and 2^-149 -> 0
    cvt.rn.f32.f64 %f15, %fd4;
    mov.f64 %fd5, 0d3698000000000000;  // 1.5 * 2^-150 = 0.75 * 2^-149 -> 2^-149 = 0x00000001
    cvt.rn.f32.f64 %f16, %fd5;
    st.global.f32 [%rd1+36], %f12;
    st.global.f32 [%rd1+40], %f13;
    st.global.f32 [%rd1+44], %f14;
    st.global.f32 [%rd1+48], %f15;
    st.global.f32 [%rd1+52], %f16;
    mov.f32 %f17, 0f00000001;
    cvt.f64.f32 %fd6, %f17;            // 2^-149 = 0x36A0000000000000
    mov.f64 %fd7, 0d3FF0000000000000;
    mov.f64 %fd8, 0d4008000000000000;  // 3.0
    div.rn.f64 %fd9, %fd7, %fd8;       // 1/3 = 0x3FD5555555555555
    add.f64 %fd10, %fd9, %fd9;         // 2/3 = 0x3FE5555555555555
    st.global.f64 [%rd1+56], %fd6;
    st.global.f64 [%rd1+64], %fd9;
    st.global.f64 [%rd1+72], %fd10;

    // rcp.rn.f32 and abs.f32
    mov.f32 %f18, 0f40400000;          // 3.0
    rcp.rn.f32 %f19, %f18;             // 0x3EAAAAAB
    mov.f32 %f20, 0f80000000;          // -0
    rcp.rn.f32 %f21, %f20;             // -Inf = 0xFF800000
    abs.f32 %f22, %f20;                // +0
    mov.f32 %f23, 0fC0400000;          // -3
    abs.f32 %f24, %f23;                // 3 = 0x40400000
    st.global.f32 [%rd1+80], %f19;
    st.global.f32 [%rd1+84], %f21;
    st.global.f32 [%rd1+88], %f22;
    st.global.f32 [%rd1+92], %f24;

    // 64-bit division
    mov.u64 %rd2, -7;
    mov.u64 %rd3, 2;
    div.s64 %rd4, %rd2, %rd3;          // -3
    div.u64 %rd5, %rd2, %rd3;          // (2^64 - 7) / 2 = 0x7FFFFFFFFFFFFFFC
    st.global.u64 [%rd1+96], %rd4;
    st.global.u64 [%rd1+104], %rd5;
    ret;
}
"#;

#[test]
fn rounding_to_integral_16_bit_f64_rcp_abs_div64() {
    let mut gpu = Gpu::from_text(MISC_PTX);
    let out = gpu.filled(28, 0xaaaa_aaaau32);
    gpu.launch("misc_edges", [1, 1, 1], [1, 1, 1], &[ptr(out)]);
    let w: Vec<u32> = gpu.download(out, 28);
    let q = |i: usize| (w[i] as u64) | ((w[i + 1] as u64) << 32);
    let words: [(usize, u32, &str); 22] = [
        (0, 0x4000_0000, "cvt.rni.f32.f32 2.5"),
        (1, 0xC000_0000, "cvt.rni.f32.f32 -2.5"),
        (2, 0x4080_0000, "cvt.rni.f32.f32 3.5"),
        (3, 0x8000_0000, "cvt.rni.f32.f32 -0.4 -> -0"),
        (4, 0x7149_F2CA, "cvt.rni.f32.f32 1e30"),
        (5, 0xC700_0000, "cvt.rn.f32.s16 -32768"),
        (6, 0xFF80, "cvt.s16.s8 of 0x1280"),
        (7, 0xF000, "shr.s16 0x8000 by 3"),
        (8, 0xFFFE_0001, "mul.wide.u16 65535^2"),
        (9, 0x3F80_0000, "cvt.rn.f32.f64 tie at 1 + 2^-24"),
        (10, 0x3F80_0001, "cvt.rn.f32.f64 just above the tie"),
        (11, 0x7F80_0000, "cvt.rn.f32.f64 1e300 -> Inf"),
        (12, 0x0000_0000, "cvt.rn.f32.f64 2^-150 tie -> 0"),
        (13, 0x0000_0001, "cvt.rn.f32.f64 0.75 * 2^-149 -> 2^-149"),
        (20, 0x3EAA_AAAB, "rcp.rn.f32 3"),
        (21, 0xFF80_0000, "rcp.rn.f32 -0 = -Inf"),
        (22, 0x0000_0000, "abs.f32 -0"),
        (23, 0x4040_0000, "abs.f32 -3"),
        (14, 0x0000_0000, "cvt.f64.f32 2^-149: low word"),
        (15, 0x36A0_0000, "cvt.f64.f32 2^-149: high word"),
        (16, 0x5555_5555, "div.rn.f64 1/3: low word"),
        (17, 0x3FD5_5555, "div.rn.f64 1/3: high word"),
    ];
    let mut bad: Vec<String> = words
        .iter()
        .filter(|(i, v, _)| w[*i] != *v)
        .map(|(i, v, why)| format!("word {i} ({why}): got {:#010x}, want {v:#010x}", w[*i]))
        .collect();
    if q(18) != 0x3FE5_5555_5555_5555 {
        bad.push(format!("add.f64 1/3 + 1/3: got {:#018x}", q(18)));
    }
    if q(24) as i64 != -3 {
        bad.push(format!("div.s64 -7 / 2: got {:#018x}", q(24)));
    }
    if q(26) != 0x7FFF_FFFF_FFFF_FFFC {
        bad.push(format!("div.u64 (2^64 - 7) / 2: got {:#018x}", q(26)));
    }
    assert!(bad.is_empty(), "{} wrong:\n{}", bad.len(), bad.join("\n"));
}

/// Issue 10: "An instruction or directive it does not implement fails `cuModuleLoadData` with
/// an error that names the form and the kernel. Nothing is ever skipped silently." ldmatrix and
/// cp.async are valid sm_80 PTX that the crate does not use.
#[test]
fn unsupported_instruction_fails_load_naming_form_and_kernel() {
    for (form, operands) in [
        (
            "ldmatrix.sync.aligned.m8n8.x4.shared.b16",
            "{%r1, %r2, %r3, %r4}, [%rd2]",
        ),
        ("cp.async.ca.shared.global", "[%rd2], [%rd1], 16"),
    ] {
        let ptx = format!(
            r#"
.version 8.0
.target sm_80
.address_size 64

.visible .entry uses_unsupported(
    .param .u64 out
)
{{
    .reg .b32 %r<5>;
    .reg .b64 %rd<3>;
    ld.param.u64 %rd1, [out];
    mov.u64 %rd2, 0;
    {form} {operands};
    ret;
}}
"#
        );
        let module = lora_kernels_emulator::ptx::parse_ptx(&ptx)
            .unwrap_or_else(|e| panic!("{form}: the parser should accept it: {e}"));
        let mut m = lora_kernels_emulator::exec::Machine::new(Default::default());
        match m.load_module(module) {
            Ok(_) => panic!("{form}: load_module accepted an unsupported instruction"),
            Err(e) => {
                assert!(e.message.contains(form), "{form} not named: {}", e.message);
                assert!(
                    e.message.contains("uses_unsupported"),
                    "kernel not named: {}",
                    e.message
                );
            }
        }
    }
}
