//! Memory paths (`tests/kernels/memory.cu`): 16-byte `ld.global.nc.v4`, `ld.global.cg`, vector
//! stores, generic `ld`/`st` resolving to shared or global at run time, `.local` arrays, and
//! dynamic shared memory with its bounds checked.
// Index loops read best here.
#![allow(clippy::needless_range_loop)]
mod common;
use common::*;
use lora_kernels_emulator::exec::CudaCode;

#[test]
fn vector_and_cache_hinted_loads() {
    let x4: Vec<f32> = (0..256).map(|k| k as f32 * 0.5).collect();
    let x: Vec<f32> = (0..64).map(|k| k as f32 - 20.0).collect();
    let mut gpu = Gpu::load("memory");
    let px4 = gpu.upload(&x4);
    let py4 = gpu.filled(256, f32::NAN);
    let px = gpu.upload(&x);
    let pz = gpu.filled(64, f32::NAN);
    gpu.launch(
        "vec_loads",
        [2, 1, 1],
        [32, 1, 1],
        &[ptr(px4), ptr(py4), ptr(px), ptr(pz)],
    );
    let y4: Vec<f32> = gpu.download(py4, 256);
    for k in 0..256 {
        assert_eq!(y4[k], x4[k] * (1 + k % 4) as f32, "y4 element {k}");
    }
    let z: Vec<f32> = gpu.download(pz, 64);
    for k in 0..64 {
        assert_eq!(z[k], x[k] + 1.0, "z[{k}]");
    }
}

#[test]
fn generic_addressing_to_shared_and_global() {
    for sel in [1i32, 0] {
        let mut gpu = Gpu::load("memory");
        let psel = gpu.upload(&[sel]);
        let g = gpu.filled(64, 7i32);
        let out = gpu.filled(64, i32::MIN);
        gpu.launch(
            "generic_select",
            [1, 1, 1],
            [64, 1, 1],
            &[ptr(psel), ptr(g), ptr(out)],
        );
        let o: Vec<i32> = gpu.download(out, 64);
        let gv: Vec<i32> = gpu.download(g, 64);
        for i in 0..64 {
            // thread i reads what thread 63 - i wrote: (63 - i) * 10 + sel
            assert_eq!(o[i], (63 - i as i32) * 10 + sel, "sel {sel}, out[{i}]");
            // the global buffer is written only when the generic pointer is global
            let want_g = if sel == 0 { i as i32 * 10 } else { 7 };
            assert_eq!(gv[i], want_g, "sel {sel}, g[{i}]");
        }
    }
}

#[test]
fn local_array_dynamic_index() {
    let idx: Vec<i32> = (0..32).map(|t| t * 3 + 5).collect();
    let mut gpu = Gpu::load("memory");
    let pidx = gpu.upload(&idx);
    let out = gpu.filled(32, i32::MIN);
    gpu.launch("local_array", [1, 1, 1], [32, 1, 1], &[ptr(pidx), ptr(out)]);
    let o: Vec<i32> = gpu.download(out, 32);
    for t in 0..32 {
        // loc[k] = 100 t + k with k = (3t + 5) & 7; e.g. t = 1: k = 0, 100
        assert_eq!(
            o[t],
            100 * t as i32 + ((3 * t as i32 + 5) & 7),
            "thread {t}"
        );
    }
    assert_eq!(o[1], 100);
}

#[test]
fn dynamic_shared_in_bounds() {
    let idx: Vec<i32> = (0..64).map(|i| (i * 7) % 64).collect();
    let mut gpu = Gpu::load("memory");
    let pidx = gpu.upload(&idx);
    let out = gpu.filled(64, f32::NAN);
    gpu.try_launch_dyn(
        "dyn_shared",
        [1, 1, 1],
        [64, 1, 1],
        256,
        &[ptr(pidx), ptr(out)],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let o: Vec<f32> = gpu.download(out, 64);
    for i in 0..64 {
        assert_eq!(o[i], idx[i] as f32 + 0.25, "out[{i}]");
    }
}

#[test]
fn memcheck_catches_dynamic_shared_out_of_bounds() {
    // 256 dynamic bytes = 64 floats; thread 5 reads dyn[64], just past the end
    let mut idx: Vec<i32> = (0..64).map(|i| (i * 7) % 64).collect();
    idx[5] = 64;
    let mut gpu = Gpu::load("memory");
    let pidx = gpu.upload(&idx);
    let out = gpu.filled(64, f32::NAN);
    let res = gpu.try_launch_dyn(
        "dyn_shared",
        [1, 1, 1],
        [64, 1, 1],
        256,
        &[ptr(pidx), ptr(out)],
    );
    if let Err(e) = &res {
        assert!(
            e.message.contains("memcheck"),
            "the report should name memcheck: {}",
            e.message
        );
    }
    let line = marked_line("memory.cu", "dyn_oob");
    assert_report(
        res,
        &Expect {
            code: CudaCode::IllegalAddress,
            kernel: "dyn_shared",
            file: "memory.cu",
            lines: &[line],
            block: [0, 0, 0],
            threads: &|t| t == [5, 0, 0],
            addr: None,
        },
    );
}
