//! The emulator's driver through cudarc, used as the main crate uses it: the cdylib is loaded by
//! absolute path, then cudarc's `dlopen("libcuda.so.1")` binds to it.
mod driver_common;

use driver_common::{data, floats};

use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags, CUresult};
use cudarc::driver::{result, CudaContext, DevicePtr, DriverError, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use std::sync::Arc;

fn ctx() -> Arc<CudaContext> {
    driver_common::emulator();
    CudaContext::new(0).expect("CudaContext::new(0) on the emulator")
}

#[test]
fn the_device_is_an_sm80_emulator() {
    let ctx = ctx();
    assert_eq!(CudaContext::device_count().unwrap(), 1);
    let name = ctx.name().unwrap();
    assert!(name.contains("emulator"), "{name}");
    assert_eq!(ctx.compute_capability().unwrap(), (8, 0));
    let sms = ctx
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .unwrap();
    assert!((1..=16).contains(&sms), "{sms} SMs");
    assert_eq!(
        ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_WARP_SIZE)
            .unwrap(),
        32
    );
    assert_eq!(
        ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK)
            .unwrap(),
        1024
    );
    assert!(ctx.has_async_alloc(), "memory pools are reported");
    let total = ctx.total_mem().unwrap();
    assert!(total >= 1 << 30, "{total}");
    let (free, total2) = ctx.mem_get_info().unwrap();
    assert_eq!(total, total2);
    assert!(free <= total);
    assert_eq!(
        &ctx.uuid().unwrap().bytes.map(|b| b as u8),
        b"lora-kernels-emu"
    );
    let mut version = 0;
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) }
        .result()
        .unwrap();
    assert_eq!(version, 13000);
}

#[test]
fn memory_round_trips_through_streams() {
    let ctx = ctx();
    let stream = ctx.new_stream().unwrap();
    let zeros = stream.alloc_zeros::<u32>(1000).unwrap();
    assert_eq!(stream.clone_dtoh(&zeros).unwrap(), vec![0u32; 1000]);

    let host = data(1000, 7);
    let mut dev = stream.clone_htod(&host).unwrap();
    assert_eq!(stream.clone_dtoh(&dev).unwrap(), host);

    // Device to device (CudaSlice::clone is a dtod copy into a new allocation).
    let copy = dev.clone();
    assert_eq!(stream.clone_dtoh(&copy).unwrap(), host);

    // Into a sub-range, then a memset of another sub-range.
    let patch = data(100, 11);
    stream
        .memcpy_htod(&patch, &mut dev.slice_mut(300..400))
        .unwrap();
    stream.memset_zeros(&mut dev.slice_mut(900..)).unwrap();
    let mut expect = host.clone();
    expect[300..400].copy_from_slice(&patch);
    expect[900..].iter_mut().for_each(|v| *v = 0);
    let mut back = vec![0u32; 1000];
    stream.memcpy_dtoh(&dev, &mut back).unwrap();
    assert_eq!(back, expect);
    // The copy is untouched.
    assert_eq!(stream.clone_dtoh(&copy).unwrap(), host);

    // A second stream, ordered with the first through events.
    let other = ctx.new_stream().unwrap();
    other.join(&stream).unwrap();
    let mut moved = other.alloc_zeros::<u32>(1000).unwrap();
    other.memcpy_dtod(&dev, &mut moved).unwrap();
    stream.join(&other).unwrap();
    assert_eq!(stream.clone_dtoh(&moved).unwrap(), expect);
    stream.synchronize().unwrap();
    ctx.synchronize().unwrap();

    // The default stream and the legacy allocation path.
    let default = ctx.default_stream();
    let empty = default.null::<u32>().unwrap();
    assert_eq!(empty.len(), 0);
    let raw = unsafe { result::malloc_sync(64) }.unwrap();
    unsafe { result::memset_d8_sync(raw, 0xab, 64) }.unwrap();
    let mut bytes = [0u8; 64];
    unsafe { result::memcpy_dtoh_sync(&mut bytes, raw) }.unwrap();
    assert_eq!(bytes, [0xab; 64]);
    unsafe { result::free_sync(raw) }.unwrap();
}

#[test]
fn events_are_ordered_and_have_no_clock() {
    let ctx = ctx();
    let stream = ctx.new_stream().unwrap();
    let start = stream
        .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .unwrap();
    let end = stream
        .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .unwrap();
    end.synchronize().unwrap();
    assert!(start.is_complete());
    assert!(end.try_is_complete().unwrap());
    stream.wait(&start).unwrap();
    let err = start.elapsed_ms(&end).unwrap_err();
    assert_eq!(err.0, CUresult::CUDA_ERROR_NOT_SUPPORTED);
    assert!(
        driver_common::last_error().contains("no device clock"),
        "{}",
        driver_common::last_error()
    );
    // Events without timing: INVALID_HANDLE, as the real driver answers.
    let a = stream.record_event(None).unwrap();
    let b = stream.record_event(None).unwrap();
    assert_eq!(
        a.elapsed_ms(&b).unwrap_err().0,
        CUresult::CUDA_ERROR_INVALID_HANDLE
    );
}

#[test]
fn bad_copies_and_frees_fail_with_a_message() {
    let ctx = ctx();
    let stream = ctx.new_stream().unwrap();
    let dev = stream.alloc_zeros::<u32>(16).unwrap();
    let (ptr, _sync) = dev.device_ptr(&stream);
    let host = data(17, 3);
    // One element past the end.
    let err: DriverError =
        unsafe { result::memcpy_htod_async(ptr, &host[..], stream.cu_stream()) }.unwrap_err();
    assert_eq!(err.0, CUresult::CUDA_ERROR_INVALID_VALUE);
    let msg = driver_common::last_error();
    assert!(
        msg.contains("not inside one live device allocation"),
        "{msg}"
    );
    // The error prints as cudarc prints it, with the driver's string.
    assert!(format!("{err}").contains("invalid argument"), "{err}");
    let mut out = [0u32; 17];
    let err =
        unsafe { result::memcpy_dtoh_async(&mut out[..], ptr, stream.cu_stream()) }.unwrap_err();
    assert_eq!(err.0, CUresult::CUDA_ERROR_INVALID_VALUE);
    // Within bounds from an offset: fine; one past: not.
    unsafe { result::memcpy_htod_async(ptr + 4, &host[..15], stream.cu_stream()) }.unwrap();
    assert!(
        unsafe { result::memcpy_htod_async(ptr + 4, &host[..16], stream.cu_stream()) }.is_err()
    );

    // Use after free and double free.
    let raw = unsafe { result::malloc_async(stream.cu_stream(), 256) }.unwrap();
    unsafe { result::free_async(raw, stream.cu_stream()) }.unwrap();
    let err =
        unsafe { result::memcpy_htod_async(raw, &host[..4], stream.cu_stream()) }.unwrap_err();
    assert_eq!(err.0, CUresult::CUDA_ERROR_INVALID_VALUE);
    let err = unsafe { result::free_async(raw, stream.cu_stream()) }.unwrap_err();
    assert_eq!(err.0, CUresult::CUDA_ERROR_INVALID_VALUE);
    assert!(driver_common::last_error().contains("not the base of a live allocation"));
    // An address inside an allocation is not its base.
    let err = unsafe { result::free_async(ptr + 4, stream.cu_stream()) }.unwrap_err();
    assert_eq!(err.0, CUresult::CUDA_ERROR_INVALID_VALUE);
    // A host pointer is not a device address.
    let err = unsafe { result::memset_d8_async(host.as_ptr() as u64, 0, 4, stream.cu_stream()) }
        .unwrap_err();
    assert_eq!(err.0, CUresult::CUDA_ERROR_INVALID_VALUE);
    // Far too much memory.
    let err = unsafe { result::malloc_async(stream.cu_stream(), 1 << 50) }.unwrap_err();
    assert_eq!(err.0, CUresult::CUDA_ERROR_OUT_OF_MEMORY);
    // A module that is not PTX.
    let err = ctx
        .load_module(Ptx::from_src("this is not PTX"))
        .unwrap_err();
    assert_eq!(err.0, CUresult::CUDA_ERROR_INVALID_PTX);
}

#[test]
fn stubs_return_not_supported() {
    let _ctx = ctx();
    let mut ptr = 0u64;
    let r = unsafe { cudarc::driver::sys::cuMemAllocManaged(&mut ptr, 64, 1) };
    assert_eq!(r, CUresult::CUDA_ERROR_NOT_SUPPORTED);
    let r = unsafe { cudarc::driver::sys::cuMemHostAlloc(std::ptr::null_mut(), 64, 0) };
    assert_eq!(r, CUresult::CUDA_ERROR_NOT_SUPPORTED);
}

const SCALE_PTX: &str = include_str!("driver_data/scale.ptx");
const SCALE_FATBIN: &[u8] = include_bytes!("driver_data/scale.fatbin");

/// Runs `scale_add` from `ptx` on odd-sized data and checks every element bit for bit.
fn run_scale(ptx: Ptx) {
    let ctx = ctx();
    let stream = ctx.new_stream().unwrap();
    let module = ctx.load_module(ptx).unwrap();
    let f = module.load_function("scale_add").unwrap();
    assert!(module.load_function("no_such_kernel").is_err());

    let n = 1000u32;
    let x = floats(n as usize, 5);
    let b = floats(n as usize, 9);
    let a = 1.75f32;
    // Extra elements past n that the kernel must not touch.
    let mut x_pad = x.clone();
    x_pad.extend_from_slice(&[123.0; 24]);
    let mut dx = stream.clone_htod(&x_pad).unwrap();
    let db = stream.clone_htod(&b).unwrap();

    let blocks = f
        .occupancy_max_active_blocks_per_multiprocessor(128, 0, None)
        .unwrap();
    assert!((1..=32).contains(&blocks), "{blocks} blocks per SM");
    assert!(f.num_regs().unwrap() > 0);
    assert_eq!(f.shared_size_bytes().unwrap(), 0);

    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(128), 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut launch = stream.launch_builder(&f);
    launch.arg(&mut dx).arg(&db).arg(&a).arg(&n);
    unsafe { launch.launch(cfg) }.unwrap();
    let got = stream.clone_dtoh(&dx).unwrap();
    for i in 0..n as usize {
        let want = x[i].mul_add(a, b[i]);
        assert_eq!(got[i].to_bits(), want.to_bits(), "element {i}");
    }
    assert!(got[n as usize..].iter().all(|&v| v == 123.0));

    // (A launch that memcheck stops is sticky: it would make the context, which every test of
    // this binary shares, unusable for the others. driver_sticky.rs tests it on its own.)

    // Too many threads per block: an error that leaves the context usable.
    let mut launch = stream.launch_builder(&f);
    launch.arg(&mut dx).arg(&db).arg(&a).arg(&n);
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (2048, 1, 1),
        shared_mem_bytes: 0,
    };
    let err = unsafe { launch.launch(cfg) }.unwrap_err();
    assert_eq!(err.0, CUresult::CUDA_ERROR_INVALID_VALUE, "{err}");
    assert_eq!(stream.clone_dtoh(&dx).unwrap(), got);
}

#[test]
fn a_ptx_kernel_runs_through_cudarc() {
    run_scale(Ptx::from_src(SCALE_PTX));
}

#[test]
fn a_fatbin_kernel_runs_through_cudarc() {
    assert_eq!(&SCALE_FATBIN[..4], &0xBA55_ED50u32.to_le_bytes());
    run_scale(Ptx::from_binary(SCALE_FATBIN.to_vec()));
}

#[test]
fn every_driver_name_resolves_in_the_cdylib() {
    let lib = driver_common::emulator();
    let names = lora_kernels_emulator::driver::IMPLEMENTED
        .iter()
        .chain(lora_kernels_emulator::driver::stubs::STUBBED);
    for name in names {
        let sym = format!("{name}\0");
        // SAFETY: only the symbol's address is looked up.
        let found = unsafe { lib.get::<unsafe extern "C" fn() -> u32>(sym.as_bytes()) };
        assert!(found.is_ok(), "{name} is not exported");
    }
}
