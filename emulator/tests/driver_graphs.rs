//! Stream capture and CUDA graphs through cudarc, on hand-worked cases with the `scale_add`
//! kernel (`x[i] = x[i] * a + b[i]`, tests/driver_data/scale.cu): captured work does not run
//! until the graph is launched, each launch runs it again in order, and the capture rules of
//! the CUDA Programming Guide ("Prohibited and Unhandled Operations") return their codes and
//! invalidate the capture.
//!
//! Every test holds [`serial`]: a GLOBAL capture, or a context synchronise, involves every
//! thread of the process, and the tests of one binary share the driver.
mod driver_common;

use cudarc::driver::sys::{
    CUgraphInstantiate_flags as Flags, CUresult, CUstreamCaptureMode as Mode,
    CUstreamCaptureStatus as Status,
};
use cudarc::driver::{
    result, CudaContext, CudaFunction, CudaSlice, CudaStream, DriverError, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use std::sync::{Arc, Mutex, MutexGuard};

const SCALE_PTX: &str = include_str!("driver_data/scale.ptx");

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A context without cudarc's event tracking (its waits would cross the capture boundary) and
/// the kernel.
fn setup() -> (Arc<CudaContext>, CudaFunction) {
    driver_common::emulator();
    let ctx = CudaContext::new(0).expect("CudaContext::new(0) on the emulator");
    // SAFETY: every buffer of these tests is used on one stream, or ordered by a synchronize.
    unsafe { ctx.disable_event_tracking() };
    let f = ctx
        .load_module(Ptx::from_src(SCALE_PTX))
        .unwrap()
        .load_function("scale_add")
        .unwrap();
    (ctx, f)
}

/// Enqueues `x = x * a + b` over n elements.
fn scale(
    stream: &Arc<CudaStream>,
    f: &CudaFunction,
    x: &mut CudaSlice<f32>,
    b: &CudaSlice<f32>,
    a: f32,
) {
    let n = x.len() as u32;
    let mut launch = stream.launch_builder(f);
    launch.arg(x).arg(b).arg(&a).arg(&n);
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(64), 1, 1),
        block_dim: (64, 1, 1),
        shared_mem_bytes: 0,
    };
    unsafe { launch.launch(cfg) }.unwrap();
}

fn code(e: DriverError) -> CUresult {
    e.0
}

#[test]
fn captured_work_runs_only_when_the_graph_is_launched_and_each_launch_repeats_it() {
    let _s = serial();
    let (ctx, f) = setup();
    let stream = ctx.new_stream().unwrap();
    let other = ctx.new_stream().unwrap();
    let mut x = stream.clone_htod(&[1.0f32, 2.0, 3.0, -1.0, 0.0]).unwrap();
    let b = stream.clone_htod(&[0.5f32; 5]).unwrap();
    let mut y = stream.alloc_zeros::<f32>(5).unwrap();
    let mut z = stream.clone_htod(&[9.0f32; 3]).unwrap();
    stream.synchronize().unwrap();

    assert_eq!(
        stream.capture_status().unwrap(),
        Status::CU_STREAM_CAPTURE_STATUS_NONE
    );
    stream
        .begin_capture(Mode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    assert_eq!(
        stream.capture_status().unwrap(),
        Status::CU_STREAM_CAPTURE_STATUS_ACTIVE
    );
    scale(&stream, &f, &mut x, &b, 2.0); // x = 2x + 0.5
    stream.memcpy_dtod(&x, &mut y).unwrap(); // y = x
    scale(&stream, &f, &mut x, &b, 2.0); // x = 2x + 0.5 again
    stream.memset_zeros(&mut z).unwrap();
    // Nothing ran: another (non-capturing) stream reads the inputs unchanged.
    assert_eq!(other.clone_dtoh(&x).unwrap(), [1.0, 2.0, 3.0, -1.0, 0.0]);
    assert_eq!(other.clone_dtoh(&y).unwrap(), [0.0; 5]);
    assert_eq!(other.clone_dtoh(&z).unwrap(), [9.0; 3]);
    let graph = stream.end_capture(Flags(0)).unwrap().expect("a graph");
    assert_eq!(
        stream.capture_status().unwrap(),
        Status::CU_STREAM_CAPTURE_STATUS_NONE
    );
    assert_eq!(stream.clone_dtoh(&x).unwrap(), [1.0, 2.0, 3.0, -1.0, 0.0]);

    graph.upload().unwrap();
    graph.launch().unwrap();
    // 1 -> 2.5 -> 5.5; 2 -> 4.5 -> 9.5; 3 -> 6.5 -> 13.5; -1 -> -1.5 -> -2.5; 0 -> 0.5 -> 1.5.
    assert_eq!(stream.clone_dtoh(&y).unwrap(), [2.5, 4.5, 6.5, -1.5, 0.5]);
    assert_eq!(stream.clone_dtoh(&x).unwrap(), [5.5, 9.5, 13.5, -2.5, 1.5]);
    assert_eq!(stream.clone_dtoh(&z).unwrap(), [0.0; 3]);
    // The graph reads its buffers when it runs: new contents, new results.
    stream.memcpy_htod(&[0.0f32; 5], &mut x).unwrap();
    stream.memcpy_htod(&[7.0f32; 3], &mut z).unwrap();
    graph.launch().unwrap();
    assert_eq!(stream.clone_dtoh(&y).unwrap(), [0.5; 5]);
    assert_eq!(stream.clone_dtoh(&x).unwrap(), [1.5; 5]);
    assert_eq!(stream.clone_dtoh(&z).unwrap(), [0.0; 3]);
}

#[test]
fn a_graph_launched_into_a_capture_is_a_child_graph_and_replays_on_any_stream() {
    let _s = serial();
    let (ctx, f) = setup();
    let stream = ctx.new_stream().unwrap();
    let mut x = stream.clone_htod(&[1.0f32, -2.0]).unwrap();
    let b = stream.clone_htod(&[1.0f32, 1.0]).unwrap();
    stream
        .begin_capture(Mode::CU_STREAM_CAPTURE_MODE_RELAXED)
        .unwrap();
    scale(&stream, &f, &mut x, &b, 3.0); // x = 3x + 1
    let inner = stream.end_capture(Flags(0)).unwrap().unwrap();
    stream
        .begin_capture(Mode::CU_STREAM_CAPTURE_MODE_RELAXED)
        .unwrap();
    unsafe { result::graph::launch(inner.cu_graph_exec(), stream.cu_stream()) }.unwrap();
    unsafe { result::graph::launch(inner.cu_graph_exec(), stream.cu_stream()) }.unwrap();
    let outer = stream.end_capture(Flags(0)).unwrap().unwrap();
    assert_eq!(stream.clone_dtoh(&x).unwrap(), [1.0, -2.0]);
    outer.launch().unwrap();
    // 1 -> 4 -> 13; -2 -> -5 -> -14.
    assert_eq!(stream.clone_dtoh(&x).unwrap(), [13.0, -14.0]);
    // The exec launched on a second stream runs there.
    let second = ctx.new_stream().unwrap();
    unsafe { result::graph::launch(inner.cu_graph_exec(), second.cu_stream()) }.unwrap();
    assert_eq!(second.clone_dtoh(&x).unwrap(), [40.0, -41.0]);
}

#[test]
fn capture_state_errors() {
    let _s = serial();
    let (ctx, _f) = setup();
    let stream = ctx.new_stream().unwrap();
    // Not capturing: ending is an illegal state.
    let err = unsafe { result::stream::end_capture(stream.cu_stream()) }.unwrap_err();
    assert_eq!(code(err), CUresult::CUDA_ERROR_ILLEGAL_STATE);
    // The legacy stream cannot capture.
    let err = unsafe {
        result::stream::begin_capture(std::ptr::null_mut(), Mode::CU_STREAM_CAPTURE_MODE_RELAXED)
    }
    .unwrap_err();
    assert_eq!(code(err), CUresult::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    // Twice: an illegal state; the first capture goes on.
    stream
        .begin_capture(Mode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    let err = stream
        .begin_capture(Mode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap_err();
    assert_eq!(code(err), CUresult::CUDA_ERROR_ILLEGAL_STATE);
    assert_eq!(
        stream.capture_status().unwrap(),
        Status::CU_STREAM_CAPTURE_STATUS_ACTIVE
    );
    // DEVICE_LAUNCH with AUTO_FREE_ON_LAUNCH: invalid (and the empty graph is destroyed).
    let flags = Flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH
        | Flags::CUDA_GRAPH_INSTANTIATE_FLAG_DEVICE_LAUNCH;
    assert_eq!(
        code(stream.end_capture(flags).err().unwrap()),
        CUresult::CUDA_ERROR_INVALID_VALUE
    );
    // An empty capture is an empty graph.
    stream
        .begin_capture(Mode::CU_STREAM_CAPTURE_MODE_GLOBAL)
        .unwrap();
    let graph = stream.end_capture(Flags(0)).unwrap().unwrap();
    graph.launch().unwrap();
    stream.synchronize().unwrap();
    // A GLOBAL capture ends on the thread that began it.
    stream
        .begin_capture(Mode::CU_STREAM_CAPTURE_MODE_GLOBAL)
        .unwrap();
    let cu = stream.cu_stream() as usize;
    let c2 = ctx.clone();
    let err = std::thread::spawn(move || {
        c2.bind_to_thread().unwrap();
        unsafe { result::stream::end_capture(cu as cudarc::driver::sys::CUstream) }.unwrap_err()
    })
    .join()
    .unwrap();
    assert_eq!(code(err), CUresult::CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD);
    assert!(stream.end_capture(Flags(0)).unwrap().is_some());
}

#[test]
fn synchronising_or_querying_a_capturing_stream_invalidates_its_capture() {
    let _s = serial();
    let (ctx, f) = setup();
    let stream = ctx.new_stream().unwrap();
    let mut x = stream.clone_htod(&[1.0f32]).unwrap();
    let b = stream.clone_htod(&[1.0f32]).unwrap();
    for query in [false, true] {
        stream
            .begin_capture(Mode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .unwrap();
        scale(&stream, &f, &mut x, &b, 2.0);
        let err = if query {
            unsafe { cudarc::driver::sys::cuStreamQuery(stream.cu_stream()) }
                .result()
                .unwrap_err()
        } else {
            stream.synchronize().unwrap_err()
        };
        assert_eq!(code(err), CUresult::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
        assert!(driver_common::last_error().contains("the stream is capturing"));
        assert_eq!(
            stream.capture_status().unwrap(),
            Status::CU_STREAM_CAPTURE_STATUS_INVALIDATED
        );
        // Work on an invalidated capture: 901.
        let err = stream.memset_zeros(&mut x).unwrap_err();
        assert_eq!(code(err), CUresult::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
        // Ending it: 901 and no graph; the stream leaves capture.
        let err = stream.end_capture(Flags(0)).err().unwrap();
        assert_eq!(code(err), CUresult::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
        assert_eq!(
            stream.capture_status().unwrap(),
            Status::CU_STREAM_CAPTURE_STATUS_NONE
        );
        assert_eq!(
            stream.clone_dtoh(&x).unwrap(),
            [1.0],
            "nothing captured ran"
        );
    }
    // Synchronising the context invalidates every capture, whichever stream.
    let other = ctx.new_stream().unwrap();
    stream
        .begin_capture(Mode::CU_STREAM_CAPTURE_MODE_RELAXED)
        .unwrap();
    other
        .begin_capture(Mode::CU_STREAM_CAPTURE_MODE_RELAXED)
        .unwrap();
    let err = unsafe { cudarc::driver::sys::cuCtxSynchronize() }
        .result()
        .unwrap_err();
    assert_eq!(code(err), CUresult::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    for s in [&stream, &other] {
        assert_eq!(
            s.capture_status().unwrap(),
            Status::CU_STREAM_CAPTURE_STATUS_INVALIDATED
        );
        assert!(s.end_capture(Flags(0)).is_err());
    }
    ctx.synchronize().unwrap();
}

#[test]
fn waits_on_events_follow_the_capture_boundary() {
    let _s = serial();
    let (ctx, _f) = setup();
    let stream = ctx.new_stream().unwrap();
    let other = ctx.new_stream().unwrap();
    // Recorded outside capture, waited on inside: a dependency on uncaptured work (905).
    let before = stream.record_event(None).unwrap();
    stream
        .begin_capture(Mode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    let err = stream.wait(&before).unwrap_err();
    assert_eq!(code(err), CUresult::CUDA_ERROR_STREAM_CAPTURE_ISOLATION);
    assert_eq!(
        stream.capture_status().unwrap(),
        Status::CU_STREAM_CAPTURE_STATUS_INVALIDATED
    );
    assert!(stream.end_capture(Flags(0)).is_err());
    // ... unless the wait is external (an event wait node).
    stream
        .begin_capture(Mode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    unsafe {
        result::stream::wait_event(
            stream.cu_stream(),
            before.cu_event(),
            cudarc::driver::sys::CUevent_wait_flags::CU_EVENT_WAIT_EXTERNAL,
        )
    }
    .unwrap();
    // An event never recorded stands for no work; one recorded in this capture is a dependency.
    let fresh = ctx.new_event(None).unwrap();
    stream.wait(&fresh).unwrap();
    let inside = stream.record_event(None).unwrap();
    stream.wait(&inside).unwrap();
    // Querying or synchronising an event of an active capture: 900, the capture invalidated.
    let err = inside.synchronize().unwrap_err();
    assert_eq!(code(err), CUresult::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    assert!(stream.end_capture(Flags(0)).is_err());

    // An event of an active capture waited on by a stream outside it (a fork): not modelled.
    stream
        .begin_capture(Mode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    let fork = stream.record_event(None).unwrap();
    let err = other.wait(&fork).unwrap_err();
    assert_eq!(code(err), CUresult::CUDA_ERROR_NOT_SUPPORTED);
    assert!(driver_common::last_error().contains("not modelled"));
    assert!(stream.end_capture(Flags(0)).is_err());

    // After the capture ends, its events stand for no work: waiting, querying and synchronising
    // them are invalid until they are recorded again outside capture.
    stream
        .begin_capture(Mode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    let captured = stream.record_event(None).unwrap();
    let _graph = stream.end_capture(Flags(0)).unwrap().unwrap();
    assert_eq!(
        code(other.wait(&captured).unwrap_err()),
        CUresult::CUDA_ERROR_INVALID_VALUE
    );
    assert_eq!(
        code(captured.synchronize().unwrap_err()),
        CUresult::CUDA_ERROR_INVALID_VALUE
    );
    assert!(captured.try_is_complete().is_err());
    captured.record(&stream).unwrap();
    other.wait(&captured).unwrap();
    captured.synchronize().unwrap();
}

#[test]
fn unsafe_calls_are_refused_as_the_capture_mode_says() {
    let _s = serial();
    let (ctx, _f) = setup();
    let stream = ctx.new_stream().unwrap();
    let from_other_thread = |ctx: &Arc<CudaContext>| {
        let c = ctx.clone();
        std::thread::spawn(move || {
            c.bind_to_thread().unwrap();
            let p = unsafe { result::malloc_sync(64) }?;
            unsafe { result::free_sync(p) }
        })
        .join()
        .unwrap()
    };
    // THREAD_LOCAL: the capturing thread may not allocate synchronously; another thread may.
    stream
        .begin_capture(Mode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    from_other_thread(&ctx).unwrap();
    assert_eq!(
        stream.capture_status().unwrap(),
        Status::CU_STREAM_CAPTURE_STATUS_ACTIVE
    );
    let err = unsafe { result::malloc_sync(64) }.unwrap_err();
    assert_eq!(code(err), CUresult::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    assert!(stream.end_capture(Flags(0)).is_err());
    // GLOBAL: no thread may.
    stream
        .begin_capture(Mode::CU_STREAM_CAPTURE_MODE_GLOBAL)
        .unwrap();
    let err = from_other_thread(&ctx).unwrap_err();
    assert_eq!(code(err), CUresult::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    assert!(stream.end_capture(Flags(0)).is_err());
    // RELAXED: every thread may; a synchronous copy too.
    stream
        .begin_capture(Mode::CU_STREAM_CAPTURE_MODE_RELAXED)
        .unwrap();
    let p = unsafe { result::malloc_sync(16) }.unwrap();
    unsafe { result::memcpy_htod_sync(p, &[3u32; 4]) }.unwrap();
    let mut back = [0u32; 4];
    unsafe { result::memcpy_dtoh_sync(&mut back, p) }.unwrap();
    assert_eq!(back, [3; 4]);
    unsafe { result::free_sync(p) }.unwrap();
    from_other_thread(&ctx).unwrap();
    assert!(stream.end_capture(Flags(0)).unwrap().is_some());
    // A stream-ordered allocation on the capturing stream would be a graph memory node: not
    // modelled (801), and the capture is invalidated.
    stream
        .begin_capture(Mode::CU_STREAM_CAPTURE_MODE_RELAXED)
        .unwrap();
    let err = unsafe { result::malloc_async(stream.cu_stream(), 64) }.unwrap_err();
    assert_eq!(code(err), CUresult::CUDA_ERROR_NOT_SUPPORTED);
    assert!(driver_common::last_error().contains("graph memory node"));
    assert!(stream.end_capture(Flags(0)).is_err());
}
