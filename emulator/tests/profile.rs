//! The profile counters (`exec::profile`), on hand-written PTX with values worked out by hand:
//! coalescing (sectors per request), the cache-operator split, the L2 model, shared-memory
//! wavefronts (bank conflicts and broadcasts), instruction classes, and that counting changes
//! no result.
mod common;
use common::*;
use lora_kernels_emulator::exec::profile::{self, ProfileCounters};

/// `load_stride(src, dst, stride_bytes)`: thread t reads the f32 at `src + t*stride` (default
/// cache path) and at `src + t*stride` again with `.nc`, writes their sum to `dst[t]`.
/// `shared_stride(dst, stride_bytes, width)`: thread t stores a u32 (width 4), u64 (8) or
/// v4.u32 (16) at shared byte `t*stride`, `bar.sync`, loads it back, writes the first word to
/// `dst[t]`. `shared_broadcast(dst)`: thread 0 stores a word at shared 0, `bar.sync`, all 32
/// read it.
const PTX: &str = r#"
.version 7.0
.target sm_80
.address_size 64

.visible .entry load_stride(.param .u64 src, .param .u64 dst, .param .u32 stride)
{
    .reg .b32 %r<4>;
    .reg .b64 %rd<8>;
    .reg .f32 %f<4>;
    ld.param.u64 %rd1, [src];
    ld.param.u64 %rd2, [dst];
    ld.param.u32 %r1, [stride];
    mov.u32 %r2, %tid.x;
    mul.lo.u32 %r3, %r2, %r1;
    cvt.u64.u32 %rd3, %r3;
    add.s64 %rd4, %rd1, %rd3;
    ld.global.f32 %f1, [%rd4];
    ld.global.nc.f32 %f2, [%rd4];
    add.f32 %f3, %f1, %f2;
    mul.wide.u32 %rd5, %r2, 4;
    add.s64 %rd6, %rd2, %rd5;
    st.global.f32 [%rd6], %f3;
    ret;
}

.visible .entry shared_stride(.param .u64 dst, .param .u32 stride, .param .u32 width)
{
    .reg .pred %p<3>;
    .reg .b32 %r<12>;
    .reg .b64 %rd<8>;
    .shared .align 16 .b8 sh[4096];
    ld.param.u64 %rd1, [dst];
    ld.param.u32 %r1, [stride];
    ld.param.u32 %r9, [width];
    mov.u32 %r2, %tid.x;
    mul.lo.u32 %r3, %r2, %r1;
    mov.u32 %r4, sh;
    add.u32 %r5, %r4, %r3;
    add.u32 %r6, %r2, 100;
    mul.wide.u32 %rd5, %r2, 4;
    add.s64 %rd6, %rd1, %rd5;
    setp.eq.u32 %p1, %r9, 8;
    setp.eq.u32 %p2, %r9, 16;
    @%p1 bra W8;
    @%p2 bra W16;
    st.shared.u32 [%r5], %r6;
    bar.sync 0;
    ld.shared.u32 %r7, [%r5];
    bra DONE;
W8:
    cvt.u64.u32 %rd3, %r6;
    st.shared.u64 [%r5], %rd3;
    bar.sync 0;
    ld.shared.u64 %rd4, [%r5];
    cvt.u32.u64 %r7, %rd4;
    bra DONE;
W16:
    st.shared.v4.u32 [%r5], {%r6, %r6, %r6, %r6};
    bar.sync 0;
    ld.shared.v4.u32 {%r7, %r8, %r10, %r11}, [%r5];
DONE:
    st.global.u32 [%rd6], %r7;
    ret;
}

.visible .entry shared_broadcast(.param .u64 dst)
{
    .reg .pred %p<2>;
    .reg .b32 %r<8>;
    .reg .b64 %rd<8>;
    .shared .align 4 .b8 sb[4];
    ld.param.u64 %rd1, [dst];
    mov.u32 %r2, %tid.x;
    mov.u32 %r4, sb;
    setp.eq.u32 %p1, %r2, 0;
    @%p1 st.shared.u32 [%r4], 77;
    bar.sync 0;
    ld.shared.u32 %r7, [%r4];
    mul.wide.u32 %rd5, %r2, 4;
    add.s64 %rd6, %rd1, %rd5;
    st.global.u32 [%rd6], %r7;
    ret;
}
"#;

fn u32p(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn profiled(gpu: &mut Gpu, name: &str, params: &[Vec<u8>]) -> ProfileCounters {
    gpu.m.profile = true;
    gpu.launch(name, [1, 1, 1], [32, 1, 1], params);
    gpu.m.last_profile.clone().expect("profiled launch")
}

const DEFAULT: usize = 0;
const NC: usize = 1;

#[test]
fn coalesced_load_is_four_sectors() {
    let mut gpu = Gpu::from_text(PTX);
    let src: Vec<f32> = (0..32).map(|i| i as f32).collect();
    let ps = gpu.upload(&src);
    let pd = gpu.filled(32, f32::NAN);
    let c = profiled(&mut gpu, "load_stride", &[ptr(ps), ptr(pd), u32p(4)]);
    let out: Vec<f32> = gpu.download(pd, 32);
    for (i, v) in out.iter().enumerate() {
        assert_eq!(*v, 2.0 * i as f32);
    }
    // 32 lanes x 4 bytes, 128-byte aligned: one request, 4 sectors, 128 bytes, on each path.
    for path in [DEFAULT, NC] {
        let g = c.global_load[path];
        assert_eq!((g.requests, g.sectors, g.bytes), (1, 4, 128), "path {path}");
    }
    let s = c.stores();
    assert_eq!((s.requests, s.sectors, s.bytes), (1, 4, 128));
    // 128 bytes read (the second load hits the model's L2), 128 written; 256 unique.
    assert_eq!(c.unique_bytes, 256);
    assert_eq!(c.unique_sector_bytes, 256);
    assert_eq!(c.dram_read_bytes, 128);
    assert_eq!(c.dram_write_bytes, 128);
    assert_eq!(c.shared_load.requests + c.shared_store.requests, 0);
    assert_eq!(c.mma + c.wmma + c.barriers, 0);
    // 14 instructions, ret included: 3 param loads + 2 global loads + 1 store = 6 memory;
    // add.f32 float; mul.lo, add.s64, mul.wide, add.s64 integer; cvt conversion;
    // mov %tid, ret other (4).
    let class = |n: &str| {
        let i = profile::CLASSES.iter().position(|(x, _)| *x == n).unwrap();
        c.by_class[i]
    };
    assert_eq!(c.warp_instructions, 14);
    assert_eq!(class("memory"), 6);
    assert_eq!(class("float"), 1);
    assert_eq!(class("integer"), 4);
    assert_eq!(class("conversion"), 1);
    assert_eq!(class("other"), 2);
}

#[test]
fn strided_load_is_one_sector_per_lane() {
    let mut gpu = Gpu::from_text(PTX);
    let src: Vec<f32> = (0..32 * 32).map(|i| i as f32).collect();
    let ps = gpu.upload(&src);
    let pd = gpu.filled(32, f32::NAN);
    let c = profiled(&mut gpu, "load_stride", &[ptr(ps), ptr(pd), u32p(128)]);
    let out: Vec<f32> = gpu.download(pd, 32);
    for (i, v) in out.iter().enumerate() {
        assert_eq!(*v, 2.0 * (32 * i) as f32);
    }
    for path in [DEFAULT, NC] {
        let g = c.global_load[path];
        assert_eq!(
            (g.requests, g.sectors, g.bytes),
            (1, 32, 128),
            "path {path}"
        );
    }
    // 32 sectors read from DRAM (1024 bytes for 128 used), the 4 output sectors written.
    assert_eq!(c.dram_read_bytes, 32 * 32);
    assert_eq!(c.dram_write_bytes, 128);
    assert_eq!(c.unique_bytes, 128 + 128);
    assert_eq!(c.unique_sector_bytes, 32 * 32 + 128);
}

/// (wavefronts, ideal) of the shared store and the shared load of `shared_stride`.
fn shared(stride: u32, width: u32) -> ((u64, u64), (u64, u64)) {
    let mut gpu = Gpu::from_text(PTX);
    let pd = gpu.filled(32, 0u32);
    let c = profiled(
        &mut gpu,
        "shared_stride",
        &[ptr(pd), u32p(stride), u32p(width)],
    );
    let out: Vec<u32> = gpu.download(pd, 32);
    for (i, v) in out.iter().enumerate() {
        assert_eq!(*v, i as u32 + 100, "stride {stride} width {width}");
    }
    assert_eq!(c.shared_store.requests, 1);
    assert_eq!(c.shared_load.requests, 1);
    assert_eq!(c.shared_load.bytes, 32 * u64::from(width));
    assert_eq!(c.barriers, 1);
    (
        (c.shared_store.wavefronts, c.shared_store.ideal_wavefronts),
        (c.shared_load.wavefronts, c.shared_load.ideal_wavefronts),
    )
}

#[test]
fn shared_bank_conflicts() {
    // 32-bit, consecutive words: every bank once.
    assert_eq!(shared(4, 4), ((1, 1), (1, 1)));
    // 32-bit at stride 8 bytes: words 0, 2, .., 62, two in each even bank: 2-way.
    assert_eq!(shared(8, 4), ((2, 1), (2, 1)));
    // 32-bit at stride 128 bytes: all 32 words in bank 0: 32-way.
    assert_eq!(shared(128, 4), ((32, 1), (32, 1)));
    // 64-bit, consecutive: two half-warps of 128 bytes each, conflict-free.
    assert_eq!(shared(8, 8), ((2, 2), (2, 2)));
    // 64-bit at stride 16: each half-warp spans 256 bytes, two words per bank: 2 each.
    assert_eq!(shared(16, 8), ((4, 2), (4, 2)));
    // 128-bit, consecutive: four quarter-warps of 128 bytes, conflict-free.
    assert_eq!(shared(16, 16), ((4, 4), (4, 4)));
    // 128-bit at stride 32: each quarter-warp spans 256 bytes: 2-way in each.
    assert_eq!(shared(32, 16), ((8, 4), (8, 4)));
}

#[test]
fn shared_broadcast_is_one_wavefront() {
    let mut gpu = Gpu::from_text(PTX);
    let pd = gpu.filled(32, 0u32);
    let c = profiled(&mut gpu, "shared_broadcast", &[ptr(pd)]);
    let out: Vec<u32> = gpu.download(pd, 32);
    assert!(out.iter().all(|&v| v == 77));
    assert_eq!(c.shared_store.requests, 1);
    assert_eq!(c.shared_store.bytes, 4);
    assert_eq!(
        (
            c.shared_load.requests,
            c.shared_load.wavefronts,
            c.shared_load.ideal_wavefronts
        ),
        (1, 1, 1)
    );
    assert_eq!(c.shared_load.bytes, 128);
}

#[test]
fn profile_off_by_default_and_json_line() {
    let mut gpu = Gpu::from_text(PTX);
    let ps = gpu.upload(&[1.0f32; 32]);
    let pd = gpu.filled(32, f32::NAN);
    gpu.launch(
        "load_stride",
        [1, 1, 1],
        [32, 1, 1],
        &[ptr(ps), ptr(pd), u32p(4)],
    );
    if std::env::var_os("LORA_KERNELS_EMULATOR_PROFILE").is_none() {
        assert!(gpu.m.last_profile.is_none());
    }
    let c = profiled(&mut gpu, "load_stride", &[ptr(ps), ptr(pd), u32p(4)]);
    let line = c.to_json("load_stride", [1, 1, 1], [32, 1, 1], 0);
    assert!(!line.contains('\n'));
    assert!(line.starts_with("{\"kernel\":\"load_stride\",\"grid\":[1,1,1],\"block\":[32,1,1]"));
    assert!(line.contains("\"global_load\":{\"requests\":2,\"sectors\":8,\"bytes\":256}"));
    assert!(line.contains("\"nc\":{\"requests\":1,\"sectors\":4,\"bytes\":128}"));
    assert!(line.contains("\"dram_bytes\":256"));
}

#[test]
fn l2_model_write_back_and_reuse() {
    // A second launch starts the model cold again: the same counts.
    let mut gpu = Gpu::from_text(PTX);
    let ps = gpu.upload(&[1.0f32; 32]);
    let pd = gpu.filled(32, f32::NAN);
    let a = profiled(&mut gpu, "load_stride", &[ptr(ps), ptr(pd), u32p(4)]);
    let b = profiled(&mut gpu, "load_stride", &[ptr(ps), ptr(pd), u32p(4)]);
    assert_eq!(a.dram_bytes(), b.dram_bytes());
    assert_eq!(a.dram_bytes(), 256);
}
