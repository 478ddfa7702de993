//! The `Machine` API the driver calls: allocation (256-byte aligned, disjoint), host/device
//! copies, memset, device-range queries, frees, modules and functions, and launch validation
//! (the CUDA driver's rules: at most 1024 threads per block, a non-empty grid, one
//! parameter buffer per declared parameter of its declared size, shared memory within the
//! device's limit).
mod common;
use common::*;
use lora_kernels_emulator::exec::{CudaCode, DeviceConfig, Machine};

#[test]
fn alloc_write_read_copy_memset_free() {
    let mut m = Machine::new(DeviceConfig::default());
    let a = m.alloc(100).unwrap();
    let b = m.alloc(300).unwrap();
    assert_eq!(a % 256, 0, "{a:#x} not 256-aligned");
    assert_eq!(b % 256, 0, "{b:#x} not 256-aligned");
    assert!(a + 100 <= b || b + 300 <= a, "allocations overlap");
    assert!(m.is_device_range(a, 100));
    assert!(
        !m.is_device_range(a, 101),
        "one byte past the end is not device memory"
    );
    assert!(m.is_device_range(b + 299, 1));
    let data: Vec<u8> = (0..100).map(|i| (i * 7 + 3) as u8).collect();
    m.write(a, &data).unwrap();
    m.copy(b + 10, a, 100).unwrap();
    m.memset8(b + 110, 0xab, 20).unwrap();
    let mut back = vec![0u8; 120];
    m.read(b + 10, &mut back).unwrap();
    assert_eq!(&back[..100], &data[..]);
    assert_eq!(&back[100..], &[0xab; 20]);
    // a read running past the end of the allocation fails
    let mut big = vec![0u8; 101];
    assert!(m.read(a, &mut big).is_err(), "read past the end succeeded");
    m.free(a).unwrap();
    assert!(
        !m.is_device_range(a, 1),
        "freed memory is still device memory"
    );
    assert!(m.free(a).is_err(), "double free succeeded");
    assert!(
        m.free(b + 8).is_err(),
        "free of an interior pointer succeeded"
    );
    let mut one = [0u8; 1];
    assert!(
        m.read(a, &mut one).is_err(),
        "read of freed memory succeeded"
    );
}

#[test]
fn modules_functions_and_unload() {
    let mut gpu = Gpu::load("broken");
    assert!(gpu.m.get_function(gpu.module, "copy_f32").is_ok());
    let e = gpu
        .m
        .get_function(gpu.module, "no_such_kernel")
        .unwrap_err();
    assert_eq!(e.code, CudaCode::NotFound, "{e}");
    // a second module with the same kernel names is independent
    let text = std::fs::read_to_string(kernels_dir().join("broken.ptx")).unwrap();
    let m2 = gpu
        .m
        .load_module(lora_kernels_emulator::ptx::parse_ptx(&text).unwrap())
        .unwrap();
    assert_ne!(m2, gpu.module);
    let f1 = gpu.m.get_function(gpu.module, "copy_f32").unwrap();
    let f2 = gpu.m.get_function(m2, "copy_f32").unwrap();
    assert_ne!(f1, f2);
    gpu.m.unload_module(m2).unwrap();
    assert!(
        gpu.m.get_function(m2, "copy_f32").is_err(),
        "function of an unloaded module"
    );
    // the first module still runs
    let x = gpu.upload(&[1.5f32; 32]);
    let y = gpu.filled(32, 0f32);
    gpu.launch("copy_f32", [1, 1, 1], [32, 1, 1], &[ptr(x), ptr(y)]);
    assert_eq!(gpu.download::<f32>(y, 32), vec![1.5; 32]);
}

#[test]
fn launch_validation() {
    let mut gpu = Gpu::load("broken");
    let x = gpu.upload(&[0f32; 2048]);
    let y = gpu.filled(2048, 0f32);
    let ok = [ptr(x), ptr(y)];
    let mut failures = Vec::new();
    let mut bad = |grid: [u32; 3], block: [u32; 3], params: &[Vec<u8>], why: &str| match gpu
        .try_launch("copy_f32", grid, block, params)
    {
        Ok(()) => failures.push(format!("{why}: launch accepted")),
        Err(e) if e.code != CudaCode::InvalidValue => {
            failures.push(format!("{why}: {e} (want InvalidValue)"))
        }
        Err(_) => {}
    };
    bad([1, 1, 1], [1025, 1, 1], &ok, "1025 threads per block");
    bad([1, 1, 1], [32, 32, 2], &ok, "2048 threads per block");
    // (the per-axis limits, block z <= 64 and grid y, z <= 65535, are checked by the driver's
    // cuLaunchKernel, not by Machine::launch)
    bad([0, 1, 1], [32, 1, 1], &ok, "empty grid");
    bad([1, 1, 1], [0, 1, 1], &ok, "empty block");
    bad([1, 1, 1], [32, 1, 1], &[ptr(x)], "one parameter missing");
    bad(
        [1, 1, 1],
        [32, 1, 1],
        &[ptr(x), ptr(y), ptr(y)],
        "one parameter too many",
    );
    bad(
        [1, 1, 1],
        [32, 1, 1],
        &[ptr(x), vec![0u8; 4]],
        "a 4-byte buffer for a .u64",
    );
    // and too much dynamic shared memory (more than the opt-in limit of 163 KiB)
    let f = gpu.func("copy_f32");
    let r = gpu.m.launch(f, [1, 1, 1], [32, 1, 1], 200 * 1024, &ok);
    if r.is_ok() {
        failures.push("200 KiB of dynamic shared memory accepted".into());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // the same launch with a good shape runs
    gpu.launch("copy_f32", [2, 1, 1], [1024, 1, 1], &ok);
}
