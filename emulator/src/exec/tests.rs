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
        for k in &module.kernels {
            let mut one = module.clone();
            one.kernels = vec![k.clone()];
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
