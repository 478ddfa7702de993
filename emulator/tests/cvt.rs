//! cvt rounding and special values (`tests/kernels/cvt.cu`), every expected value worked out by
//! hand from the IEEE formats (f16: 1 sign, 5 exponent bits with bias 15, 10 fraction bits;
//! bf16: 1, 8 with bias 127, 7; f32: 1, 8, 23) and the PTX ISA's cvt rules:
//! `.rn` rounds to nearest, ties to even; without `.ftz`, subnormal inputs and results are kept;
//! a result too large for the format rounds to infinity; NaN stays NaN. Float-to-integer
//! conversions (`.rzi/.rni/.rmi/.rpi`) clamp to the destination range (the manual: "the result
//! is clamped to the destination range by default", so `.sat` is redundant there) and NaN
//! converts to 0.
mod common;
use common::*;

/// Marks an expected NaN (any NaN payload and sign is accepted: the manual leaves them open).
const NAN: u32 = u32::MAX;

fn is_nan16(h: u16, exp_mask: u16, frac_mask: u16) -> bool {
    h & exp_mask == exp_mask && h & frac_mask != 0
}

/// (f32 bits, f16 bits, bf16 bits, why)
const TO_HALF: &[(u32, u32, u32, &str)] = &[
    (0x3F80_0000, 0x3C00, 0x3F80, "1.0 exact"),
    // f16 ulp at 1 is 2^-10, so 1 + 2^-11 is a tie between 0x3C00 (even) and 0x3C01
    (
        0x3F80_1000,
        0x3C00,
        0x3F80,
        "f16 tie 1 + 2^-11 -> even 0x3C00",
    ),
    // 1 + 3*2^-11: tie between 0x3C01 and 0x3C02 (even)
    (
        0x3F80_3000,
        0x3C02,
        0x3F80,
        "f16 tie 1 + 3*2^-11 -> even 0x3C02",
    ),
    (0x3F80_1001, 0x3C01, 0x3F80, "just above the f16 tie -> up"),
    (
        0x3F80_0FFF,
        0x3C00,
        0x3F80,
        "just below the f16 tie -> down",
    ),
    (
        0xBF80_3000,
        0xBC02,
        0xBF80,
        "negative f16 tie -> even magnitude",
    ),
    // bf16 ulp at 1 is 2^-7: 1 + 2^-8 is a bf16 tie (0x3F80 even); exact in f16 (0x3C04)
    (
        0x3F80_8000,
        0x3C04,
        0x3F80,
        "bf16 tie 1 + 2^-8 -> even 0x3F80",
    ),
    (
        0x3F81_8000,
        0x3C0C,
        0x3F82,
        "bf16 tie 1 + 3*2^-8 -> even 0x3F82",
    ),
    (0x3F80_8001, 0x3C04, 0x3F81, "just above the bf16 tie -> up"),
    (
        0x3F80_7FFF,
        0x3C04,
        0x3F80,
        "just below the bf16 tie -> down",
    ),
    (0xBF81_8000, 0xBC0C, 0xBF82, "negative bf16 tie"),
    // 65504 = f16 max (0x7BFF); bf16 ulp at 2^15 is 2^8: 65504 rounds to 65536 (0x4780)
    (0x477F_E000, 0x7BFF, 0x4780, "65504 = f16 max"),
    (0x477F_EF00, 0x7BFF, 0x4780, "65519 rounds down to f16 max"),
    // 65520 is halfway from 65504 (odd fraction 0x3FF) to 65536 (would be 2^16): to even = Inf
    (0x477F_F000, 0x7C00, 0x4780, "65520 tie -> f16 Inf"),
    (0x5015_02F9, 0x7C00, 0x5015, "1e10: f16 overflow to Inf"),
    (0xD015_02F9, 0xFC00, 0xD015, "-1e10: f16 overflow to -Inf"),
    // f16 subnormals: k * 2^-24, k = 1..1023
    (
        0x3380_0000,
        0x0001,
        0x3380,
        "2^-24 = smallest f16 subnormal",
    ),
    (
        0x3300_0000,
        0x0000,
        0x3300,
        "2^-25: tie between 0 (even) and 2^-24",
    ),
    (
        0x33C0_0000,
        0x0002,
        0x33C0,
        "3*2^-25: tie between 1 and 2 (even) * 2^-24",
    ),
    (0x3300_0001, 0x0001, 0x3300, "just above 2^-25 -> 2^-24"),
    (0xB300_0000, 0x8000, 0xB300, "-2^-25 -> -0"),
    (
        0x387F_C000,
        0x03FF,
        0x3880,
        "1023*2^-24 = largest f16 subnormal; bf16 rounds up",
    ),
    (
        0x387F_E000,
        0x0400,
        0x3880,
        "1023.5*2^-24: tie -> even = smallest normal 0x0400",
    ),
    (0x3880_0000, 0x0400, 0x3880, "2^-14 = smallest f16 normal"),
    // bf16 overflow: upper half 0x7F7F, lower half above/below/at 0x8000
    (
        0x7F7F_FFFF,
        0x7C00,
        0x7F80,
        "f32 max -> bf16 Inf (rounds up)",
    ),
    (
        0x7F7F_7FFF,
        0x7C00,
        0x7F7F,
        "below the tie -> bf16 max 0x7F7F",
    ),
    (
        0x7F7F_8000,
        0x7C00,
        0x7F80,
        "tie at bf16 max (odd) -> even = Inf",
    ),
    // bf16 keeps f32 subnormals (no .ftz)
    (
        0x0000_8000,
        0x0000,
        0x0000,
        "f32 subnormal, bf16 tie 0 / 0x0001 -> 0",
    ),
    (
        0x0001_8000,
        0x0000,
        0x0002,
        "bf16 tie 0x0001 / 0x0002 -> 0x0002",
    ),
    (0x0001_0001, 0x0000, 0x0001, "just above 0x0001"),
    (
        0x007F_FFFF,
        0x0000,
        0x0080,
        "largest f32 subnormal rounds up to bf16 0x0080",
    ),
    (0x8000_8000, 0x8000, 0x8000, "negative subnormal tie -> -0"),
    (0x8000_0000, 0x8000, 0x8000, "-0 stays -0"),
    (0x0000_0000, 0x0000, 0x0000, "+0"),
    (0x7F80_0000, 0x7C00, 0x7F80, "+Inf"),
    (0xFF80_0000, 0xFC00, 0xFF80, "-Inf"),
    (0x7FC0_0000, NAN, NAN, "quiet NaN"),
    // a signalling NaN whose payload sits only in the low 16 bits: truncating would give Inf
    (0x7F80_0001, NAN, NAN, "signalling NaN stays NaN"),
    (0xFFC0_0000, NAN, NAN, "negative NaN"),
];

#[test]
fn cvt_f32_to_f16_and_bf16_rounding() {
    let n = TO_HALF.len();
    let input: Vec<f32> = TO_HALF.iter().map(|r| f32::from_bits(r.0)).collect();
    let mut gpu = Gpu::load("cvt");
    let pin = gpu.upload(&input);
    let ph = gpu.filled(n, 0xAAAAu16);
    let pb = gpu.filled(n, 0xAAAAu16);
    gpu.launch(
        "cvt_to_half",
        [1, 1, 1],
        [64, 1, 1],
        &[ptr(pin), ptr(ph), ptr(pb), int(n as i32)],
    );
    let h: Vec<u16> = gpu.download(ph, n);
    let b: Vec<u16> = gpu.download(pb, n);
    let mut bad = Vec::new();
    for (i, &(x, eh, eb, why)) in TO_HALF.iter().enumerate() {
        let ok_h = if eh == NAN {
            is_nan16(h[i], 0x7C00, 0x03FF)
        } else {
            h[i] as u32 == eh
        };
        let ok_b = if eb == NAN {
            is_nan16(b[i], 0x7F80, 0x007F)
        } else {
            b[i] as u32 == eb
        };
        if !ok_h {
            bad.push(format!(
                "f16 of {x:#010x} ({why}): got {:#06x}, want {eh:#06x}",
                h[i]
            ));
        }
        if !ok_b {
            bad.push(format!(
                "bf16 of {x:#010x} ({why}): got {:#06x}, want {eb:#06x}",
                b[i]
            ));
        }
    }
    assert!(bad.is_empty(), "{} wrong:\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn cvt_f16_and_bf16_to_f32_exact() {
    // (f16 bits, f32 bits)
    let h: [(u16, u32); 10] = [
        (0x0001, 0x3380_0000), // 2^-24
        (0x03FF, 0x387F_C000), // 1023 * 2^-24
        (0x0400, 0x3880_0000), // 2^-14
        (0x7BFF, 0x477F_E000), // 65504
        (0x3C01, 0x3F80_2000), // 1 + 2^-10
        (0xFC00, 0xFF80_0000), // -Inf
        (0x8000, 0x8000_0000), // -0
        (0x3555, 0x3EAA_A000), // exponent 13 -> 2^-2, fraction 0x155 << 13
        (0x8001, 0xB380_0000), // -2^-24
        (0x7E00, NAN),
    ];
    // (bf16 bits, f32 bits): the bf16 bits are the upper half of the f32
    let b: [(u16, u32); 10] = [
        (0x0001, 0x0001_0000), // a subnormal, kept
        (0xFF80, 0xFF80_0000),
        (0x3F81, 0x3F81_0000),
        (0x8000, 0x8000_0000),
        (0x7F7F, 0x7F7F_0000),
        (0x0080, 0x0080_0000),
        (0xC2F7, 0xC2F7_0000), // -123.5
        (0x4049, 0x4049_0000), // 3.140625
        (0x0000, 0x0000_0000),
        (0x7FC1, NAN),
    ];
    let mut gpu = Gpu::load("cvt");
    let ph = gpu.upload(&h.iter().map(|x| x.0).collect::<Vec<u16>>());
    let pb = gpu.upload(&b.iter().map(|x| x.0).collect::<Vec<u16>>());
    let phf = gpu.filled(10, 0xAAAA_AAAAu32);
    let pbf = gpu.filled(10, 0xAAAA_AAAAu32);
    gpu.launch(
        "cvt_from_half",
        [1, 1, 1],
        [32, 1, 1],
        &[ptr(ph), ptr(pb), ptr(phf), ptr(pbf), int(10)],
    );
    let hf: Vec<u32> = gpu.download(phf, 10);
    let bf: Vec<u32> = gpu.download(pbf, 10);
    for i in 0..10 {
        if h[i].1 == NAN {
            assert!(
                f32::from_bits(hf[i]).is_nan(),
                "f16 {:#06x} -> {:#010x}",
                h[i].0,
                hf[i]
            );
        } else {
            assert_eq!(hf[i], h[i].1, "f16 {:#06x} -> f32", h[i].0);
        }
        if b[i].1 == NAN {
            assert!(
                f32::from_bits(bf[i]).is_nan(),
                "bf16 {:#06x} -> {:#010x}",
                b[i].0,
                bf[i]
            );
        } else {
            assert_eq!(bf[i], b[i].1, "bf16 {:#06x} -> f32", b[i].0);
        }
    }
}

#[test]
fn cvt_f32_to_int_rounding_and_saturation() {
    const MAX: i32 = i32::MAX;
    const MIN: i32 = i32::MIN;
    // (f32 bits, [rzi.s32, rni.s32, rmi.s32, rpi.s32, rzi.u32 (as i32 bits)])
    let rows: &[(u32, [i32; 5], &str)] = &[
        (0x4020_0000, [2, 2, 2, 3, 2], "2.5: rni ties to even 2"),
        (0xC020_0000, [-2, -2, -3, -2, 0], "-2.5; u32 clamps to 0"),
        (0x4060_0000, [3, 4, 3, 4, 3], "3.5: rni ties to even 4"),
        (0xBF00_0000, [0, 0, -1, 0, 0], "-0.5: -0 is integer 0"),
        (0x3EFF_FFFF, [0, 0, 0, 1, 0], "0.49999997"),
        (0xBFC0_0000, [-1, -2, -2, -1, 0], "-1.5"),
        (0x40E0_0000, [7, 7, 7, 7, 7], "7.0"),
        (
            0x4B00_0001,
            [8388609, 8388609, 8388609, 8388609, 8388609],
            "2^23 + 1",
        ),
        (0x0DA2_4260, [0, 0, 0, 1, 0], "1e-30"),
        (0x8DA2_4260, [0, 0, -1, 0, 0], "-1e-30"),
        (
            0x4EFF_FFFF,
            [2147483520; 5],
            "2147483520 = largest f32 below 2^31",
        ),
        (
            0x4F00_0000,
            [MAX, MAX, MAX, MAX, MIN],
            "2^31 clamps to INT_MAX; u32 2^31 = 0x80000000",
        ),
        (0xCF00_0000, [MIN, MIN, MIN, MIN, 0], "-2^31 exact"),
        (
            0x4F7F_FFFF,
            [MAX, MAX, MAX, MAX, 0xFFFF_FF00u32 as i32],
            "4294967040 = largest f32 below 2^32",
        ),
        (
            0x5015_02F9,
            [MAX, MAX, MAX, MAX, -1],
            "1e10 clamps; u32 to 0xFFFFFFFF",
        ),
        (0xD015_02F9, [MIN, MIN, MIN, MIN, 0], "-1e10 clamps"),
        (0x7F80_0000, [MAX, MAX, MAX, MAX, -1], "+Inf clamps"),
        (0xFF80_0000, [MIN, MIN, MIN, MIN, 0], "-Inf clamps"),
        (0x7FC0_0000, [0, 0, 0, 0, 0], "NaN -> 0"),
        (0xFFC0_0001, [0, 0, 0, 0, 0], "negative NaN -> 0"),
    ];
    let n = rows.len();
    let input: Vec<f32> = rows.iter().map(|r| f32::from_bits(r.0)).collect();
    let mut gpu = Gpu::load("cvt");
    let pin = gpu.upload(&input);
    let pout = gpu.filled(n * 5, 0x5555_5555i32);
    gpu.launch(
        "cvt_to_int",
        [1, 1, 1],
        [32, 1, 1],
        &[ptr(pin), ptr(pout), int(n as i32)],
    );
    let out: Vec<i32> = gpu.download(pout, n * 5);
    let names = [
        "cvt.rzi.s32",
        "cvt.rni.s32",
        "cvt.rmi.s32",
        "cvt.rpi.s32",
        "cvt.rzi.u32",
    ];
    let mut bad = Vec::new();
    for (i, (x, want, why)) in rows.iter().enumerate() {
        for k in 0..5 {
            if out[i * 5 + k] != want[k] {
                bad.push(format!(
                    "{} of {x:#010x} ({why}): got {} ({:#x}), want {} ({:#x})",
                    names[k],
                    out[i * 5 + k],
                    out[i * 5 + k],
                    want[k],
                    want[k]
                ));
            }
        }
    }
    assert!(bad.is_empty(), "{} wrong:\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn div_rn_and_sqrt_rn() {
    // (a bits, b bits, a/b bits, sqrt(a) bits)
    let rows: &[(u32, u32, u32, u32, &str)] = &[
        // 1/3 = 0.0101...b: 24 significant bits 1.01010101010101010101010|1... rounds up
        (
            0x3F80_0000,
            0x4040_0000,
            0x3EAA_AAAB,
            0x3F80_0000,
            "1/3, sqrt 1",
        ),
        (
            0x4000_0000,
            0x4040_0000,
            0x3F2A_AAAB,
            0x3FB5_04F3,
            "2/3, sqrt 2 = 1.41421354",
        ),
        (
            0x40E0_0000,
            0x4120_0000,
            0x3F33_3333,
            0x4029_53FD,
            "7/10 = 0.699999988, sqrt 7",
        ),
        (
            0x4120_0000,
            0x4080_0000,
            0x4020_0000,
            0x404A_62C2,
            "10/4 = 2.5 exact, sqrt 10",
        ),
        (
            0x4080_0000,
            0x4000_0000,
            0x4000_0000,
            0x4000_0000,
            "4/2, sqrt 4 exact",
        ),
        (
            0x3F80_0000,
            0x0000_0000,
            0x7F80_0000,
            0x3F80_0000,
            "1/0 = +Inf",
        ),
        (
            0xBF80_0000,
            0x0000_0000,
            0xFF80_0000,
            NAN,
            "-1/0 = -Inf, sqrt(-1) = NaN",
        ),
        (
            0x0000_0000,
            0x0000_0000,
            NAN,
            0x0000_0000,
            "0/0 = NaN, sqrt 0 = 0",
        ),
        (
            0x8000_0000,
            0x3F80_0000,
            0x8000_0000,
            0x8000_0000,
            "-0/1 = -0, sqrt(-0) = -0",
        ),
        (
            0x7F80_0000,
            0x7F80_0000,
            NAN,
            0x7F80_0000,
            "Inf/Inf = NaN, sqrt Inf = Inf",
        ),
        // 2^-149 / 2 = 2^-150: tie between 0 (even) and 2^-149; sqrt(2^-149) = 2^-75 sqrt 2
        (
            0x0000_0001,
            0x4000_0000,
            0x0000_0000,
            0x1A35_04F3,
            "subnormal tie -> 0",
        ),
        // 3*2^-149 / 2 = 1.5*2^-149: tie between 1 and 2 (even) * 2^-149
        (
            0x0000_0003,
            0x4000_0000,
            0x0000_0002,
            0x1A9C_C471,
            "subnormal tie -> even",
        ),
    ];
    let n = rows.len();
    let a: Vec<f32> = rows.iter().map(|r| f32::from_bits(r.0)).collect();
    let b: Vec<f32> = rows.iter().map(|r| f32::from_bits(r.1)).collect();
    let mut gpu = Gpu::load("cvt");
    let pa = gpu.upload(&a);
    let pb = gpu.upload(&b);
    let pq = gpu.filled(n, 0x5555_5555u32);
    let ps = gpu.filled(n, 0x5555_5555u32);
    gpu.launch(
        "div_sqrt",
        [1, 1, 1],
        [32, 1, 1],
        &[ptr(pa), ptr(pb), ptr(pq), ptr(ps), int(n as i32)],
    );
    let q: Vec<u32> = gpu.download(pq, n);
    let s: Vec<u32> = gpu.download(ps, n);
    let mut bad = Vec::new();
    for (i, &(x, y, wq, ws, why)) in rows.iter().enumerate() {
        let okq = if wq == NAN {
            f32::from_bits(q[i]).is_nan()
        } else {
            q[i] == wq
        };
        let oks = if ws == NAN {
            f32::from_bits(s[i]).is_nan()
        } else {
            s[i] == ws
        };
        if !okq {
            bad.push(format!(
                "div.rn {x:#x}/{y:#x} ({why}): got {:#010x}, want {wq:#010x}",
                q[i]
            ));
        }
        if !oks {
            bad.push(format!(
                "sqrt.rn {x:#x} ({why}): got {:#010x}, want {ws:#010x}",
                s[i]
            ));
        }
    }
    assert!(bad.is_empty(), "{} wrong:\n{}", bad.len(), bad.join("\n"));
}
