//! The engine's own tests: small hand-written PTX kernels.
use super::*;
use crate::ptx::parse_ptx;

fn machine() -> Machine {
    Machine::new(DeviceConfig::default())
}

fn load(m: &mut Machine, ptx: &str) -> ModuleId {
    let module = parse_ptx(ptx).unwrap_or_else(|e| panic!("parse: {e}"));
    m.load_module(module)
        .unwrap_or_else(|e| panic!("load: {e}"))
}

fn u64p(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn u32p(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn put_f32(m: &mut Machine, v: &[f32]) -> u64 {
    let a = m.alloc(v.len() as u64 * 4).unwrap();
    let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    m.write(a, &b).unwrap();
    a
}

fn get_f32(m: &mut Machine, a: u64, n: usize) -> Vec<f32> {
    let mut b = vec![0u8; n * 4];
    m.read(a, &mut b).unwrap();
    b.chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn get_u32(m: &mut Machine, a: u64, n: usize) -> Vec<u32> {
    let mut b = vec![0u8; n * 4];
    m.read(a, &mut b).unwrap();
    b.chunks(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

const HEADER: &str =
    ".version 8.8\n.target sm_80\n.address_size 64\n.file 1 \"/src/kernels/test_kernels.cu\"\n";

/// c[i] = a[i] + b[i] for i < n (bounds check `i < n`, or `i <= n` when `off_by_one`).
fn vadd_ptx(off_by_one: bool) -> String {
    format!(
        "{HEADER}
.visible .entry vadd(
	.param .u64 vadd_param_0,
	.param .u64 vadd_param_1,
	.param .u64 vadd_param_2,
	.param .u32 vadd_param_3
)
{{
	.reg .pred 	%p<2>;
	.reg .b32 	%r<6>;
	.reg .f32 	%f<4>;
	.reg .b64 	%rd<11>;
	.loc	1 10 0
	ld.param.u64 	%rd1, [vadd_param_0];
	ld.param.u64 	%rd2, [vadd_param_1];
	ld.param.u64 	%rd3, [vadd_param_2];
	ld.param.u32 	%r2, [vadd_param_3];
	mov.u32 	%r3, %ctaid.x;
	mov.u32 	%r4, %ntid.x;
	mov.u32 	%r5, %tid.x;
	mad.lo.s32 	%r1, %r3, %r4, %r5;
	.loc	1 11 5
	setp.{} 	%p1, %r1, %r2;
	@%p1 bra 	$L__BB0_2;
	cvta.to.global.u64 	%rd4, %rd1;
	mul.wide.s32 	%rd5, %r1, 4;
	add.s64 	%rd6, %rd4, %rd5;
	cvta.to.global.u64 	%rd7, %rd2;
	add.s64 	%rd8, %rd7, %rd5;
	.loc	1 12 9
	ld.global.f32 	%f1, [%rd8];
	ld.global.f32 	%f2, [%rd6];
	add.f32 	%f3, %f2, %f1;
	cvta.to.global.u64 	%rd9, %rd3;
	add.s64 	%rd10, %rd9, %rd5;
	.loc	1 13 9
	st.global.f32 	[%rd10], %f3;
$L__BB0_2:
	ret;
}}
",
        if off_by_one { "gt.s32" } else { "ge.s32" }
    )
}

#[test]
fn vector_add_odd_size() {
    let mut m = machine();
    let md = load(&mut m, &vadd_ptx(false));
    let f = m.get_function(md, "vadd").unwrap();
    let n = 1001usize;
    let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 + 1.0).collect();
    let b: Vec<f32> = (0..n).map(|i| 3.0 - i as f32).collect();
    let da = put_f32(&mut m, &a);
    let db = put_f32(&mut m, &b);
    let dc = m.alloc(n as u64 * 4).unwrap();
    let stats = m
        .launch(
            f,
            [n.div_ceil(128) as u32, 1, 1],
            [128, 1, 1],
            0,
            &[u64p(da), u64p(db), u64p(dc), u32p(n as u32)],
        )
        .unwrap();
    let c = get_f32(&mut m, dc, n);
    for i in 0..n {
        assert_eq!(c[i], a[i] + b[i], "element {i}");
    }
    assert!(stats.warp_instructions > 0);
}

#[test]
fn out_by_one_is_caught() {
    let mut m = machine();
    let md = load(&mut m, &vadd_ptx(true));
    let f = m.get_function(md, "vadd").unwrap();
    let n = 100usize;
    let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let da = put_f32(&mut m, &a);
    let db = put_f32(&mut m, &a);
    let dc = m.alloc(n as u64 * 4).unwrap();
    let e = m
        .launch(
            f,
            [1, 1, 1],
            [128, 1, 1],
            0,
            &[u64p(da), u64p(db), u64p(dc), u32p(n as u32)],
        )
        .unwrap_err();
    assert_eq!(e.code, CudaCode::IllegalAddress, "{e}");
    let msg = &e.message;
    assert!(msg.starts_with("memcheck"), "{msg}");
    assert!(msg.contains("kernel vadd"), "{msg}");
    assert!(msg.contains("thread (100,0,0)"), "{msg}");
    assert!(msg.contains("block (0,0,0)"), "{msg}");
    assert!(msg.contains(&format!("{:#x}", db + 400)), "{msg}");
    assert!(msg.contains("of 4 bytes"), "{msg}");
    assert!(msg.contains("kernels/test_kernels.cu:12"), "{msg}");
    assert!(
        msg.contains("0 bytes after the end of the 400-byte allocation"),
        "{msg}"
    );
}

#[test]
fn load_real_modules() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../ptx");
    let mut failures = Vec::new();
    let mut kernels = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("ptx") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let module = parse_ptx(&text).unwrap();
        // Lower kernel by kernel to collect every failure.
        for (ki, k) in module.kernels.iter().enumerate() {
            let mut one = module.clone();
            one.kernels = vec![k.clone()];
            one.call_sites = module.call_sites.get(ki).cloned().into_iter().collect();
            one.inline_chains = module.inline_chains.get(ki).cloned().into_iter().collect();
            kernels += 1;
            let mut m = machine();
            if let Err(e) = m.load_module(one) {
                failures.push(format!("{}: {}", path.display(), e));
            }
        }
    }
    assert!(kernels > 60);
    assert!(
        failures.is_empty(),
        "{} kernels fail to lower:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `iters` iterations per thread of 4 fma + add + setp + bra; out[tid] = the accumulator.
fn loop_ptx() -> String {
    format!(
        "{HEADER}
.visible .entry spin_math(
	.param .u64 out,
	.param .u32 iters
)
{{
	.reg .pred 	%p<2>;
	.reg .b32 	%r<8>;
	.reg .f32 	%f<8>;
	.reg .b64 	%rd<4>;
	ld.param.u64 	%rd1, [out];
	ld.param.u32 	%r2, [iters];
	mov.u32 	%r3, %tid.x;
	mov.u32 	%r4, %ctaid.x;
	mov.u32 	%r5, %ntid.x;
	mad.lo.s32 	%r6, %r4, %r5, %r3;
	cvt.rn.f32.s32 	%f1, %r6;
	mov.f32 	%f2, 0f3F800000;
	mov.f32 	%f3, 0f3F000000;
	mov.u32 	%r1, 0;
$L__loop:
	fma.rn.f32 	%f2, %f2, %f3, %f1;
	fma.rn.f32 	%f2, %f2, %f3, %f1;
	fma.rn.f32 	%f2, %f2, %f3, %f1;
	fma.rn.f32 	%f2, %f2, %f3, %f1;
	add.s32 	%r1, %r1, 1;
	setp.lt.s32 	%p1, %r1, %r2;
	@%p1 bra 	$L__loop;
	cvta.to.global.u64 	%rd2, %rd1;
	mul.wide.s32 	%rd3, %r6, 4;
	add.s64 	%rd2, %rd2, %rd3;
	st.global.f32 	[%rd2], %f2;
	ret;
}}
"
    )
}

#[test]
fn speed_of_a_compute_loop() {
    let mut m = machine();
    let md = load(&mut m, &loop_ptx());
    let f = m.get_function(md, "spin_math").unwrap();
    let (blocks, threads, iters) = (32u32, 256u32, 400u32);
    let n = (blocks * threads) as usize;
    let out = m.alloc(n as u64 * 4).unwrap();
    let t = std::time::Instant::now();
    let stats = m
        .launch(
            f,
            [blocks, 1, 1],
            [threads, 1, 1],
            0,
            &[u64p(out), u32p(iters)],
        )
        .unwrap();
    let dt = t.elapsed().as_secs_f64();
    let lane_instr = stats.warp_instructions as f64 * 32.0;
    eprintln!(
        "compute loop: {} warp instructions in {:.3} s: {:.1} M lane-instructions/s, {:.2} M warp-instructions/s",
        stats.warp_instructions,
        dt,
        lane_instr / dt / 1e6,
        stats.warp_instructions as f64 / dt / 1e6
    );
    assert_eq!(
        stats.warp_instructions,
        u64::from(blocks * threads / 32) * (15 + 7 * u64::from(iters))
    );
    // The same recurrence on the CPU, f32 fma by f32 fma.
    let got = get_f32(&mut m, out, n);
    for i in [0usize, 1, 77, n - 1] {
        let x = i as f32;
        let mut acc = 1.0f32;
        for _ in 0..iters * 4 {
            acc = acc.mul_add(0.5, x);
        }
        assert_eq!(got[i], acc, "thread {i}");
    }
}

/// Block 0 waits for a flag nobody sets: the hang detector must end the launch.
#[test]
fn hang_is_detected() {
    let ptx = format!(
        "{HEADER}
.visible .entry wait_forever(
	.param .u64 flag
)
{{
	.reg .pred 	%p<2>;
	.reg .b32 	%r<4>;
	.reg .b64 	%rd<3>;
	ld.param.u64 	%rd1, [flag];
	cvta.to.global.u64 	%rd2, %rd1;
	.loc 1 40 3
$L__spin:
	ld.volatile.global.u32 	%r1, [%rd2];
	setp.eq.s32 	%p1, %r1, 0;
	mov.u32 	%r2, 100;
	nanosleep.u32 	%r2;
	@%p1 bra 	$L__spin;
	ret;
}}
"
    );
    let mut m = machine();
    m.hang_limit_steps = 200_000;
    let md = load(&mut m, &ptx);
    let f = m.get_function(md, "wait_forever").unwrap();
    let flag = m.alloc(4).unwrap();
    m.memset8(flag, 0, 4).unwrap();
    let e = m
        .launch(f, [3, 1, 1], [64, 1, 1], 0, &[u64p(flag)])
        .unwrap_err();
    assert_eq!(e.code, CudaCode::LaunchFailed, "{e}");
    assert!(e.message.starts_with("hang:"), "{e}");
    assert!(e.message.contains("kernels/test_kernels.cu:40"), "{e}");
}

/// Butterfly reduction with shfl.sync.bfly, a ballot, shfl.up with the valid predicate, and
/// shfl.idx within 8-lane segments (c = 0x181f: segmask 0x18, clamp 7).
#[test]
fn shfl_and_vote() {
    let ptx = format!(
        "{HEADER}
.visible .entry warp_ops(
	.param .u64 out
)
{{
	.reg .pred 	%p<4>;
	.reg .b32 	%r<20>;
	.reg .b64 	%rd<6>;
	ld.param.u64 	%rd1, [out];
	cvta.to.global.u64 	%rd2, %rd1;
	mov.u32 	%r1, %tid.x;
	mul.lo.s32 	%r2, %r1, 3;
	add.s32 	%r2, %r2, 1;
	shfl.sync.bfly.b32 	%r3|%p1, %r2, 16, 31, -1;
	add.s32 	%r2, %r2, %r3;
	shfl.sync.bfly.b32 	%r3|%p1, %r2, 8, 31, -1;
	add.s32 	%r2, %r2, %r3;
	shfl.sync.bfly.b32 	%r3|%p1, %r2, 4, 31, -1;
	add.s32 	%r2, %r2, %r3;
	shfl.sync.bfly.b32 	%r3|%p1, %r2, 2, 31, -1;
	add.s32 	%r2, %r2, %r3;
	shfl.sync.bfly.b32 	%r3|%p1, %r2, 1, 31, -1;
	add.s32 	%r2, %r2, %r3;
	and.b32 	%r4, %r1, 5;
	setp.eq.s32 	%p2, %r4, 1;
	vote.sync.ballot.b32 	%r5, %p2, -1;
	shfl.sync.up.b32 	%r6|%p3, %r1, 3, 0, -1;
	selp.u32 	%r7, 1, 0, %p3;
	shfl.sync.idx.b32 	%r8|%p1, %r1, 2, 6175, -1;
	mul.wide.u32 	%rd3, %r1, 20;
	add.s64 	%rd4, %rd2, %rd3;
	st.global.u32 	[%rd4], %r2;
	st.global.u32 	[%rd4+4], %r5;
	st.global.u32 	[%rd4+8], %r6;
	st.global.u32 	[%rd4+12], %r7;
	st.global.u32 	[%rd4+16], %r8;
	ret;
}}
"
    );
    let mut m = machine();
    let md = load(&mut m, &ptx);
    let f = m.get_function(md, "warp_ops").unwrap();
    let out = m.alloc(32 * 20).unwrap();
    m.launch(f, [1, 1, 1], [32, 1, 1], 0, &[u64p(out)]).unwrap();
    let v = get_u32(&mut m, out, 32 * 5);
    let sum: u32 = (0..32).map(|i| 3 * i + 1).sum();
    let ballot: u32 = (0..32).filter(|i| i & 5 == 1).fold(0, |a, i| a | 1 << i);
    for lane in 0..32u32 {
        let r = &v[lane as usize * 5..lane as usize * 5 + 5];
        assert_eq!(r[0], sum, "lane {lane}");
        assert_eq!(r[1], ballot, "lane {lane}");
        let up_valid = lane >= 3;
        assert_eq!(r[2], if up_valid { lane - 3 } else { lane }, "lane {lane}");
        assert_eq!(r[3], up_valid as u32, "lane {lane}");
        assert_eq!(r[4], (lane & 0x18) | 2, "lane {lane}");
    }
}

/// Two warps: warp 1 spins on a shared flag that warp 0 sets after a shfl, both then pass a
/// bar.sync; a racecheck-clean pattern would need a barrier, so racecheck is off here.
#[test]
fn missing_barrier_race_and_fixed() {
    let body = |sync: &str| {
        format!(
            "{HEADER}
.visible .entry race_{sync}(
	.param .u64 out
)
{{
	.reg .pred 	%p<2>;
	.reg .b32 	%r<10>;
	.reg .b64 	%rd<6>;
	.shared .align 4 .b8 buf[256];
	ld.param.u64 	%rd1, [out];
	cvta.to.global.u64 	%rd2, %rd1;
	mov.u32 	%r1, %tid.x;
	shl.b32 	%r2, %r1, 2;
	mov.u32 	%r3, buf;
	add.s32 	%r4, %r3, %r2;
	.loc 1 50 5
	st.shared.u32 	[%r4], %r1;
	{sync}
	xor.b32 	%r5, %r1, 63;
	shl.b32 	%r6, %r5, 2;
	add.s32 	%r7, %r3, %r6;
	.loc 1 52 5
	ld.shared.u32 	%r8, [%r7];
	mul.wide.u32 	%rd3, %r1, 4;
	add.s64 	%rd4, %rd2, %rd3;
	st.global.u32 	[%rd4], %r8;
	ret;
}}
"
        )
    };
    let mut m = machine();
    let md = load(
        &mut m,
        &body("bar.sync 0;").replace("race_bar.sync 0;", "race_fixed"),
    );
    let f = m.get_function(md, "race_fixed").unwrap();
    let out = m.alloc(64 * 4).unwrap();
    m.launch(f, [2, 1, 1], [64, 1, 1], 0, &[u64p(out)]).unwrap();
    let v = get_u32(&mut m, out, 64);
    for (i, x) in v.iter().enumerate() {
        assert_eq!(*x, (i as u32) ^ 63);
    }
    let md = load(&mut m, &body("").replace("race_(", "race_missing("));
    let f = m.get_function(md, "race_missing").unwrap();
    let e = m
        .launch(f, [1, 1, 1], [64, 1, 1], 0, &[u64p(out)])
        .unwrap_err();
    assert!(e.message.starts_with("racecheck:"), "{e}");
    assert!(e.message.contains("kernel race_missing"), "{e}");
    assert!(e.message.contains("test_kernels.cu:50"), "{e}");
    assert!(e.message.contains("test_kernels.cu:52"), "{e}");
}

#[test]
fn speed_of_a_memory_bound_kernel() {
    let mut m = machine();
    let md = load(&mut m, &vadd_ptx(false));
    let f = m.get_function(md, "vadd").unwrap();
    let n = 1usize << 18;
    let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let da = put_f32(&mut m, &a);
    let db = put_f32(&mut m, &a);
    let dc = m.alloc(n as u64 * 4).unwrap();
    let t = std::time::Instant::now();
    let stats = m
        .launch(
            f,
            [(n / 256) as u32, 1, 1],
            [256, 1, 1],
            0,
            &[u64p(da), u64p(db), u64p(dc), u32p(n as u32)],
        )
        .unwrap();
    let dt = t.elapsed().as_secs_f64();
    eprintln!(
        "vector add: {} warp instructions in {:.3} s: {:.1} M lane-instructions/s",
        stats.warp_instructions,
        dt,
        stats.warp_instructions as f64 * 32.0 / dt / 1e6
    );
    let c = get_f32(&mut m, dc, n);
    assert!(c.iter().enumerate().all(|(i, x)| *x == 2.0 * i as f32));
}
