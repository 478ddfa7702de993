//! Kernel parameters and module-scope variables (`tests/kernels/params.cu`).
// Index loops read best here.
#![allow(clippy::needless_range_loop)]
mod common;
use common::*;

#[test]
fn struct_and_scalar_parameters() {
    let mut gpu = Gpu::load("params");
    let f = gpu.func("params_mixed");
    // (size, align) in declaration order, from the .param declarations
    let layout = gpu.m.function_params(f).unwrap();
    assert_eq!(
        layout,
        vec![
            (24, 8),
            (1, 1),
            (2, 2),
            (4, 4),
            (8, 8),
            (8, 8),
            (8, 8),
            (8, 8)
        ]
    );
    // struct Mixed { int a; float b; double c; short d; char e; }: offsets 0, 4, 8, 16, 18
    let mut m = Vec::new();
    m.extend_from_slice(&(-123456i32).to_le_bytes());
    m.extend_from_slice(&1.75f32.to_le_bytes());
    m.extend_from_slice(&(-0.1f64).to_le_bytes());
    m.extend_from_slice(&(-300i16).to_le_bytes());
    m.push(0x7f);
    m.extend_from_slice(&[0; 5]); // padding to 24
    let out = gpu.filled(9, 0x5555_5555i32);
    let dout = gpu.filled(2, f64::NAN);
    let params = vec![
        m,
        vec![0x80],                                 // signed char -128
        (-2i16).to_le_bytes().to_vec(),             // short -2
        0xdead_beefu32.to_le_bytes().to_vec(),      // unsigned
        (-5_000_000_000i64).to_le_bytes().to_vec(), // long long
        std::f64::consts::PI.to_le_bytes().to_vec(),
        ptr(out),
        ptr(dout),
    ];
    gpu.launch("params_mixed", [1, 1, 1], [1, 1, 1], &params);
    let o: Vec<i32> = gpu.download(out, 9);
    // -5e9 = 0xFFFFFFFED5FA0E00: high word -2, low word 0xD5FA0E00
    assert_eq!(
        o,
        vec![
            -123456,
            1.75f32.to_bits() as i32,
            -300,
            0x7f,
            -128,
            -2,
            0xdead_beefu32 as i32,
            -2,
            0xd5fa_0e00u32 as i32
        ]
    );
    assert_eq!(
        gpu.download::<f64>(dout, 2),
        vec![-0.1, std::f64::consts::PI]
    );
}

#[test]
fn constant_and_device_variables_with_initialisers_persist() {
    let mut gpu = Gpu::load("params");
    let idx: Vec<i32> = (0..32).collect();
    let pidx = gpu.upload(&idx);
    let ctable = [1, -2, 3, -4];
    for launch in 0..2 {
        let out = gpu.filled(32, i32::MIN);
        let fout = gpu.filled(3, f32::NAN);
        gpu.launch(
            "module_vars",
            [1, 1, 1],
            [32, 1, 1],
            &[ptr(pidx), ptr(out), ptr(fout)],
        );
        let o: Vec<i32> = gpu.download(out, 32);
        // gcounter starts at 5 and each launch's 32 threads add 1 after reading it
        let g = 5 + 32 * launch;
        for i in 0..32 {
            assert_eq!(o[i], ctable[i & 3] * 100 + g, "launch {launch}, out[{i}]");
        }
        assert_eq!(gpu.download::<f32>(fout, 3), vec![0.5, -1.5, 2.25]);
    }
}
