//! Sticky launch failures through cudarc: after a launch that a checker stops with one of the
//! codes CUDA documents as leaving the context unusable, every later call in the context returns
//! that code until the primary context is reset; frees and destroys still succeed quietly.
//!
//! One test in this binary: the primary context is process-wide, so a test that makes it
//! unusable would fail every test running beside it.
mod driver_common;

use driver_common::floats;

use cudarc::driver::sys::{self, CUresult};
use cudarc::driver::{
    result, CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DriverError, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use std::sync::Arc;

const SCALE_PTX: &str = include_str!("driver_data/scale.ptx");
const N: u32 = 1000;
const A: f32 = 1.75;

/// A stream, `scale_add`, and its inputs on the device.
struct Setup {
    stream: Arc<CudaStream>,
    f: CudaFunction,
    x: Vec<f32>,
    b: Vec<f32>,
    dx: CudaSlice<f32>,
    db: CudaSlice<f32>,
}

fn setup(ctx: &Arc<CudaContext>) -> Setup {
    let stream = ctx.new_stream().unwrap();
    let module = ctx.load_module(Ptx::from_src(SCALE_PTX)).unwrap();
    let f = module.load_function("scale_add").unwrap();
    let x = floats(N as usize, 5);
    let b = floats(N as usize, 9);
    let dx = stream.clone_htod(&x).unwrap();
    let db = stream.clone_htod(&b).unwrap();
    Setup {
        stream,
        f,
        x,
        b,
        dx,
        db,
    }
}

/// Launches `scale_add(x_ptr, b, A, n)` over `n` elements.
fn launch(s: &mut Setup, x_ptr: Option<u64>, n: u32) -> Result<(), DriverError> {
    let mut l = s.stream.launch_builder(&s.f);
    let p = x_ptr.unwrap_or_default();
    match x_ptr {
        Some(_) => l.arg(&p),
        None => l.arg(&mut s.dx),
    };
    l.arg(&s.db).arg(&A).arg(&n);
    unsafe { l.launch(LaunchConfig::for_num_elems(n)) }.map(|_| ())
}

/// A good launch on fresh inputs, checked bit for bit.
fn scale_works(s: &mut Setup) {
    s.stream.memcpy_htod(&s.x, &mut s.dx).unwrap();
    launch(s, None, N).unwrap();
    let got = s.stream.clone_dtoh(&s.dx).unwrap();
    assert_eq!(got.len(), N as usize);
    for (i, (g, (x, b))) in got.iter().zip(s.x.iter().zip(&s.b)).enumerate() {
        let want = x.mul_add(A, *b);
        assert_eq!(g.to_bits(), want.to_bits(), "element {i}");
    }
}

/// Every kind of call in the unusable context returns `code`, and the last error names the
/// first failure, whose message contains `first`. `event` was created before the failure.
fn everything_is_refused(
    ctx: &Arc<CudaContext>,
    s: &mut Setup,
    event: sys::CUevent,
    code: CUresult,
    first: &str,
) {
    let check = |what: &str, got: CUresult| {
        assert_eq!(got, code, "{what}");
        let msg = driver_common::last_error();
        assert!(
            msg.contains(&format!(
                "context is unusable after {code:?} ({})",
                code as u32
            )),
            "{what}: {msg}"
        );
        assert!(
            msg.contains(first),
            "{what}: names the first failure: {msg}"
        );
    };
    // Through cudarc. Its context keeps the first error its destructors and guards met (event
    // waits and records, refused too); clear it first so that each call reaches the driver.
    let mut via_cudarc =
        |what: &str, call: &mut dyn FnMut(&mut Setup) -> Result<(), DriverError>| {
            let _ = ctx.check_err();
            let err = call(s).expect_err(what);
            check(what, err.0);
        };
    let host = floats(N as usize, 21);
    via_cudarc("memcpy_htod", &mut |s| {
        s.stream.memcpy_htod(&host, &mut s.dx)
    });
    via_cudarc("a good launch", &mut |s| launch(s, None, N));
    via_cudarc("clone_dtoh", &mut |s| {
        s.stream.clone_dtoh(&s.dx).map(|_| ())
    });
    via_cudarc("memset", &mut |s| s.stream.memset_zeros(&mut s.dx));
    via_cudarc("alloc", &mut |s| {
        s.stream.alloc_zeros::<f32>(16).map(|_| ())
    });
    via_cudarc("stream synchronize", &mut |s| s.stream.synchronize());
    via_cudarc("context synchronize", &mut |_| ctx.synchronize());
    via_cudarc("module load", &mut |_| {
        ctx.load_module(Ptx::from_src(SCALE_PTX)).map(|_| ())
    });
    via_cudarc("event record", &mut |s| {
        s.stream.record_event(None).map(|_| ())
    });
    via_cudarc("stream create", &mut |_| ctx.new_stream().map(|_| ()));

    // The raw driver calls.
    let stream = s.stream.cu_stream();
    let mut raw = 0u64;
    check("cuMemAlloc_v2", unsafe { sys::cuMemAlloc_v2(&mut raw, 64) });
    check("cuMemAllocAsync", unsafe {
        sys::cuMemAllocAsync(&mut raw, 64, stream)
    });
    let (dx, g) = s.dx.device_ptr(&s.stream);
    drop(g);
    check("cuMemcpyHtoD_v2", unsafe {
        sys::cuMemcpyHtoD_v2(dx, host.as_ptr() as *const _, 64)
    });
    let mut back = [0u8; 64];
    check("cuMemcpyDtoH_v2", unsafe {
        sys::cuMemcpyDtoH_v2(back.as_mut_ptr() as *mut _, dx, 64)
    });
    check("cuMemsetD32_v2", unsafe { sys::cuMemsetD32_v2(dx, 7, 16) });
    check("cuCtxSynchronize", unsafe { sys::cuCtxSynchronize() });
    check("cuStreamSynchronize", unsafe {
        sys::cuStreamSynchronize(stream)
    });
    check("cuEventRecord", unsafe {
        sys::cuEventRecord(event, stream)
    });
    check("cuEventSynchronize", unsafe {
        sys::cuEventSynchronize(event)
    });
    let image = std::ffi::CString::new(SCALE_PTX).unwrap();
    let mut module = std::ptr::null_mut();
    check("cuModuleLoadData", unsafe {
        sys::cuModuleLoadData(&mut module, image.as_ptr() as *const _)
    });
    // cuGetErrorString explains the code.
    let err = DriverError(code);
    let text = err.error_string().unwrap().to_str().unwrap();
    let want = match code {
        CUresult::CUDA_ERROR_ILLEGAL_ADDRESS => "an illegal memory access was encountered",
        _ => "misaligned address",
    };
    assert_eq!(text, want);
}

/// Drops everything while the context is unusable: the frees, the stream's and module's
/// destruction in cudarc's destructors succeed (or cudarc's context would hold another code).
fn teardown_succeeds(ctx: &Arc<CudaContext>, s: Setup, code: CUresult) {
    let _ = ctx.check_err();
    drop(s);
    if let Err(e) = ctx.check_err() {
        // Only the refused event waits and records of the destructors, never a failed free.
        assert_eq!(e.0, code, "{e}");
    }
}

#[test]
fn a_stopped_launch_makes_the_context_unusable_until_it_is_reset() {
    use CUresult::{CUDA_ERROR_ILLEGAL_ADDRESS, CUDA_ERROR_MISALIGNED_ADDRESS, CUDA_SUCCESS};
    driver_common::emulator();
    let ctx = CudaContext::new(0).unwrap();
    let mut s = setup(&ctx);
    scale_works(&mut s);
    let raw = unsafe { result::malloc_async(s.stream.cu_stream(), 256) }.unwrap();
    let event = result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT).unwrap();

    // A failure that is not sticky leaves the context usable.
    let mut l = s.stream.launch_builder(&s.f);
    l.arg(&mut s.dx).arg(&s.db).arg(&A).arg(&N);
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (2048, 1, 1),
        shared_mem_bytes: 0,
    };
    let err = unsafe { l.launch(cfg) }.unwrap_err();
    assert_eq!(err.0, CUresult::CUDA_ERROR_INVALID_VALUE);
    scale_works(&mut s);

    // Reading past the end of b: memcheck stops the launch with ILLEGAL_ADDRESS.
    let err = launch(&mut s, None, N + 24).unwrap_err();
    assert_eq!(err.0, CUDA_ERROR_ILLEGAL_ADDRESS, "{err}");
    let msg = driver_common::last_error();
    assert!(msg.contains("scale_add"), "{msg}");
    assert!(
        msg.contains("scale.cu"),
        "the report names the source line: {msg}"
    );

    // Now every call in the context returns 700, naming the first failure.
    everything_is_refused(&ctx, &mut s, event, CUDA_ERROR_ILLEGAL_ADDRESS, "scale_add");
    // A launch that would fail differently (misaligned x): the first failure's code wins.
    let (p, g) = s.dx.device_ptr(&s.stream);
    drop(g);
    let _ = ctx.check_err();
    let err = launch(&mut s, Some(p + 2), N).unwrap_err();
    assert_eq!(err.0, CUDA_ERROR_ILLEGAL_ADDRESS);

    // Frees and destroys succeed, raw and in cudarc's destructors.
    let stream = s.stream.cu_stream();
    assert_eq!(unsafe { sys::cuMemFreeAsync(raw, stream) }, CUDA_SUCCESS);
    assert_eq!(unsafe { sys::cuEventDestroy_v2(event) }, CUDA_SUCCESS);
    teardown_succeeds(&ctx, s, CUDA_ERROR_ILLEGAL_ADDRESS);

    // cuDevicePrimaryCtxReset_v2 makes the (still retained) context usable again.
    assert_eq!(unsafe { sys::cuDevicePrimaryCtxReset_v2(0) }, CUDA_SUCCESS);
    let mut s = setup(&ctx);
    scale_works(&mut s);
    let event = result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT).unwrap();

    // A misaligned x: MISALIGNED_ADDRESS, sticky with its own code.
    let (p, g) = s.dx.device_ptr(&s.stream);
    drop(g);
    let err = launch(&mut s, Some(p + 2), N).unwrap_err();
    assert_eq!(err.0, CUDA_ERROR_MISALIGNED_ADDRESS, "{err}");
    everything_is_refused(
        &ctx,
        &mut s,
        event,
        CUDA_ERROR_MISALIGNED_ADDRESS,
        "scale_add",
    );
    assert_eq!(unsafe { sys::cuEventDestroy_v2(event) }, CUDA_SUCCESS);
    teardown_succeeds(&ctx, s, CUDA_ERROR_MISALIGNED_ADDRESS);

    // The last release of the primary context resets it too: a new context works.
    drop(ctx);
    let ctx = CudaContext::new(0).unwrap();
    let mut s = setup(&ctx);
    scale_works(&mut s);
    s.stream.synchronize().unwrap();
    ctx.synchronize().unwrap();
    drop(s);
    ctx.check_err().unwrap();
}
