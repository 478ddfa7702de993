//! The driver's C functions called directly through the rlib: null handles, bad pointers and
//! wrong arguments are errors, never crashes. (This process does not load the cdylib: the rlib's
//! copy of the state is the one exercised.)
use lora_kernels_emulator::driver::{self, *};
use std::ffi::{c_char, c_void, CStr};
use std::ptr::{null, null_mut};

const OK: CUresult = CUDA_SUCCESS;

/// cuInit, retain the primary context and make it current on this thread.
fn setup() {
    unsafe {
        assert_eq!(cuInit(0), OK);
        let mut ctx: Handle = null_mut();
        assert_eq!(cuDevicePrimaryCtxRetain(&mut ctx, 0), OK);
        assert!(!ctx.is_null());
        assert_eq!(cuCtxSetCurrent(ctx), OK);
    }
}

#[test]
fn init_device_and_context_arguments_are_checked() {
    unsafe {
        assert_eq!(cuInit(1), CUDA_ERROR_INVALID_VALUE);
        setup();
        let mut dev = -1;
        assert_eq!(cuDeviceGet(&mut dev, 0), OK);
        assert_eq!(dev, 0);
        assert_eq!(cuDeviceGet(&mut dev, 1), CUDA_ERROR_INVALID_DEVICE);
        assert_eq!(cuDeviceGet(null_mut(), 0), CUDA_ERROR_INVALID_VALUE);
        let mut n = 0;
        assert_eq!(cuDeviceGetCount(&mut n), OK);
        assert_eq!(n, 1);
        let mut name = [0 as c_char; 8];
        assert_eq!(cuDeviceGetName(name.as_mut_ptr(), 8, 0), OK);
        assert_eq!(CStr::from_ptr(name.as_ptr()).to_bytes().len(), 7);
        assert_eq!(
            cuDeviceGetName(name.as_mut_ptr(), 0, 0),
            CUDA_ERROR_INVALID_VALUE
        );
        assert_eq!(cuDeviceGetName(null_mut(), 8, 0), CUDA_ERROR_INVALID_VALUE);
        let mut v = 0;
        assert_eq!(cuDeviceGetAttribute(&mut v, 75, 0), OK);
        assert_eq!(v, 8);
        assert_eq!(
            cuDeviceGetAttribute(&mut v, 9999, 0),
            CUDA_ERROR_INVALID_VALUE
        );
        assert_eq!(
            cuDeviceGetAttribute(&mut v, 75, 3),
            CUDA_ERROR_INVALID_DEVICE
        );
        assert_eq!(
            cuDeviceGetAttribute(null_mut(), 75, 0),
            CUDA_ERROR_INVALID_VALUE
        );
        assert_eq!(
            cuCtxSetCurrent(0x1234 as Handle),
            CUDA_ERROR_INVALID_CONTEXT
        );
        let mut cur: Handle = null_mut();
        assert_eq!(cuCtxGetCurrent(&mut cur), OK);
        assert!(!cur.is_null());
        assert_eq!(cuCtxGetCurrent(null_mut()), CUDA_ERROR_INVALID_VALUE);
        assert_eq!(cuCtxSynchronize(), OK);
        assert_eq!(cuDevicePrimaryCtxRelease_v2(5), CUDA_ERROR_INVALID_DEVICE);
    }
}

#[test]
fn calls_without_a_current_context_fail() {
    unsafe {
        assert_eq!(cuInit(0), OK);
        // A fresh thread has no current context.
        std::thread::spawn(|| {
            let mut p = 0u64;
            assert_eq!(cuMemAlloc_v2(&mut p, 64), CUDA_ERROR_INVALID_CONTEXT);
            assert!(last_error_message()
                .unwrap()
                .contains("no context is current"));
        })
        .join()
        .unwrap();
    }
}

#[test]
fn null_and_unknown_handles_are_errors() {
    setup();
    unsafe {
        let bogus = 0xdead_beef as Handle;
        assert_eq!(cuStreamSynchronize(bogus), CUDA_ERROR_INVALID_HANDLE);
        assert_eq!(cuStreamDestroy_v2(bogus), CUDA_ERROR_INVALID_HANDLE);
        assert_eq!(cuStreamDestroy_v2(null_mut()), CUDA_ERROR_INVALID_HANDLE);
        assert_eq!(
            cuStreamSynchronize(null_mut()),
            OK,
            "the null stream is valid"
        );
        assert_eq!(cuStreamCreate(null_mut(), 0), CUDA_ERROR_INVALID_VALUE);
        let mut s: Handle = null_mut();
        assert_eq!(cuStreamCreate(&mut s, 7), CUDA_ERROR_INVALID_VALUE);
        assert_eq!(cuStreamCreate(&mut s, 1), OK);
        assert_eq!(cuStreamDestroy_v2(s), OK);
        assert_eq!(
            cuStreamDestroy_v2(s),
            CUDA_ERROR_INVALID_HANDLE,
            "destroyed twice"
        );

        assert_eq!(cuEventRecord(bogus, null_mut()), CUDA_ERROR_INVALID_HANDLE);
        assert_eq!(cuEventDestroy_v2(null_mut()), CUDA_ERROR_INVALID_HANDLE);
        assert_eq!(cuEventQuery(bogus), CUDA_ERROR_INVALID_HANDLE);
        let mut e: Handle = null_mut();
        assert_eq!(cuEventCreate(&mut e, 0), OK);
        assert_eq!(cuEventRecord(e, bogus), CUDA_ERROR_INVALID_HANDLE);
        assert_eq!(
            cuStreamWaitEvent(null_mut(), bogus, 0),
            CUDA_ERROR_INVALID_HANDLE
        );
        assert_eq!(cuStreamWaitEvent(null_mut(), e, 0), OK);
        let mut ms = 0f32;
        assert_eq!(
            cuEventElapsedTime_v2(null_mut(), e, e),
            CUDA_ERROR_INVALID_VALUE
        );
        assert_eq!(
            cuEventElapsedTime_v2(&mut ms, e, bogus),
            CUDA_ERROR_INVALID_HANDLE
        );
        assert_eq!(cuEventDestroy_v2(e), OK);

        let mut m: Handle = null_mut();
        assert_eq!(cuModuleLoadData(&mut m, null()), CUDA_ERROR_INVALID_VALUE);
        assert_eq!(
            cuModuleLoadData(null_mut(), c"x".as_ptr() as *const c_void),
            CUDA_ERROR_INVALID_VALUE
        );
        assert_eq!(cuModuleUnload(bogus), CUDA_ERROR_INVALID_HANDLE);
        let mut f: Handle = null_mut();
        assert_eq!(
            cuModuleGetFunction(&mut f, bogus, c"k".as_ptr()),
            CUDA_ERROR_INVALID_HANDLE
        );
        let mut v = 0;
        assert_eq!(
            cuFuncGetAttribute(&mut v, 0, bogus),
            CUDA_ERROR_INVALID_HANDLE
        );
        assert_eq!(cuFuncSetAttribute(bogus, 8, 0), CUDA_ERROR_INVALID_HANDLE);
        assert_eq!(
            cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(&mut v, bogus, 128, 0, 0),
            CUDA_ERROR_INVALID_HANDLE
        );
        assert_eq!(
            cuLaunchKernel(
                bogus,
                1,
                1,
                1,
                32,
                1,
                1,
                0,
                null_mut(),
                null_mut(),
                null_mut()
            ),
            CUDA_ERROR_INVALID_HANDLE
        );
        assert_eq!(
            cuLaunchKernel(
                null_mut(),
                1,
                1,
                1,
                32,
                1,
                1,
                0,
                null_mut(),
                null_mut(),
                null_mut()
            ),
            CUDA_ERROR_INVALID_HANDLE
        );
    }
}

#[test]
fn bad_pointers_are_errors() {
    setup();
    unsafe {
        assert_eq!(cuMemAlloc_v2(null_mut(), 64), CUDA_ERROR_INVALID_VALUE);
        let mut p = 0u64;
        assert_eq!(cuMemAlloc_v2(&mut p, 0), CUDA_ERROR_INVALID_VALUE);
        assert_eq!(cuMemAlloc_v2(&mut p, 64), OK);
        assert_ne!(p, 0);
        let host = [7u8; 65];
        let mut out = [0u8; 65];
        assert_eq!(cuMemcpyHtoD_v2(p, host.as_ptr() as _, 64), OK);
        assert_eq!(
            cuMemcpyHtoD_v2(p, host.as_ptr() as _, 65),
            CUDA_ERROR_INVALID_VALUE
        );
        assert_eq!(cuMemcpyHtoD_v2(p, null(), 64), CUDA_ERROR_INVALID_VALUE);
        assert_eq!(
            cuMemcpyHtoD_v2(0, host.as_ptr() as _, 1),
            CUDA_ERROR_INVALID_VALUE
        );
        assert_eq!(
            cuMemcpyHtoD_v2(p - 1, host.as_ptr() as _, 1),
            CUDA_ERROR_INVALID_VALUE
        );
        assert_eq!(
            cuMemcpyHtoD_v2(u64::MAX, host.as_ptr() as _, 16),
            CUDA_ERROR_INVALID_VALUE
        );
        assert_eq!(cuMemcpyDtoH_v2(out.as_mut_ptr() as _, p, 64), OK);
        assert_eq!(&out[..64], &host[..64]);
        assert_eq!(cuMemcpyDtoH_v2(null_mut(), p, 64), CUDA_ERROR_INVALID_VALUE);
        // The host side may not be a device address.
        assert_eq!(
            cuMemcpyDtoH_v2(p as *mut c_void, p, 8),
            CUDA_ERROR_INVALID_VALUE
        );
        assert!(last_error_message().unwrap().contains("device address"));
        assert_eq!(cuMemcpyDtoD_v2(p, p + 32, 32), OK);
        assert_eq!(cuMemcpyDtoD_v2(p, p + 33, 32), CUDA_ERROR_INVALID_VALUE);
        // Zero bytes are fine anywhere.
        assert_eq!(cuMemcpyHtoD_v2(0, null(), 0), OK);
        // memsets: alignment and bounds.
        assert_eq!(cuMemsetD32_v2(p, 0x0102_0304, 16), OK);
        assert_eq!(cuMemcpyDtoH_v2(out.as_mut_ptr() as _, p, 8), OK);
        assert_eq!(&out[..8], &[4, 3, 2, 1, 4, 3, 2, 1]);
        assert_eq!(cuMemsetD32_v2(p + 2, 0, 1), CUDA_ERROR_INVALID_VALUE);
        assert_eq!(cuMemsetD32_v2(p, 0, 17), CUDA_ERROR_INVALID_VALUE);
        assert_eq!(cuMemsetD16_v2(p + 2, 0xabcd, 3), OK);
        assert_eq!(cuMemcpyDtoH_v2(out.as_mut_ptr() as _, p, 8), OK);
        assert_eq!(&out[..8], &[4, 3, 0xcd, 0xab, 0xcd, 0xab, 0xcd, 0xab]);
        assert_eq!(cuMemsetD8_v2(p, 9, 65), CUDA_ERROR_INVALID_VALUE);
        // Address range and pointer attributes.
        let (mut base, mut size) = (0u64, 0usize);
        assert_eq!(cuMemGetAddressRange_v2(&mut base, &mut size, p + 10), OK);
        assert_eq!((base, size), (p, 64));
        let mut ty = 0u32;
        assert_eq!(
            cuPointerGetAttribute(&mut ty as *mut u32 as _, 2, p + 1),
            OK
        );
        assert_eq!(ty, 2, "CU_MEMORYTYPE_DEVICE");
        assert_eq!(
            cuPointerGetAttribute(&mut ty as *mut u32 as _, 2, host.as_ptr() as u64),
            CUDA_ERROR_INVALID_VALUE
        );
        // Frees.
        assert_eq!(cuMemFree_v2(p + 8), CUDA_ERROR_INVALID_VALUE);
        assert_eq!(cuMemFree_v2(p), OK);
        assert_eq!(cuMemFree_v2(p), CUDA_ERROR_INVALID_VALUE);
        assert_eq!(
            cuMemcpyHtoD_v2(p, host.as_ptr() as _, 1),
            CUDA_ERROR_INVALID_VALUE
        );
        assert_eq!(cuMemFree_v2(0), OK);
        assert_eq!(
            cuMemGetInfo_v2(null_mut(), null_mut()),
            CUDA_ERROR_INVALID_VALUE
        );
    }
}

#[test]
fn module_images_are_checked() {
    setup();
    unsafe {
        let mut m: Handle = null_mut();
        // An ELF cubin: SASS cannot run here.
        let elf = *b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\0";
        assert_eq!(
            cuModuleLoadData(&mut m, elf.as_ptr() as _),
            CUDA_ERROR_NO_BINARY_FOR_GPU
        );
        // A fatbin header with a silly size.
        let mut bad = [0u8; 32];
        bad[..4].copy_from_slice(&0xBA55_ED50u32.to_le_bytes());
        bad[6] = 4;
        assert_eq!(
            cuModuleLoadData(&mut m, bad.as_ptr() as _),
            CUDA_ERROR_INVALID_IMAGE
        );
        // A fatbin with an empty payload.
        bad[6] = 16;
        assert_eq!(
            cuModuleLoadData(&mut m, bad.as_ptr() as _),
            CUDA_ERROR_INVALID_IMAGE
        );
        // Text that is not PTX.
        assert_eq!(
            cuModuleLoadData(&mut m, c"hello".as_ptr() as _),
            CUDA_ERROR_INVALID_PTX
        );
        assert!(last_error_message().unwrap().contains("cuModuleLoadData"));
    }
}

#[test]
fn error_names_and_strings() {
    unsafe {
        let mut s: *const c_char = null();
        assert_eq!(cuGetErrorName(700, &mut s), OK);
        assert_eq!(
            CStr::from_ptr(s).to_str().unwrap(),
            "CUDA_ERROR_ILLEGAL_ADDRESS"
        );
        assert_eq!(cuGetErrorString(801, &mut s), OK);
        assert_eq!(
            CStr::from_ptr(s).to_str().unwrap(),
            "operation not supported"
        );
        assert_eq!(cuGetErrorString(123_456, &mut s), CUDA_ERROR_INVALID_VALUE);
        assert!(s.is_null());
        assert_eq!(cuGetErrorName(0, null_mut()), CUDA_ERROR_INVALID_VALUE);
    }
}

#[test]
fn implemented_and_stubbed_names_are_disjoint_and_stubs_answer_801() {
    let mut all: Vec<&str> = driver::IMPLEMENTED.to_vec();
    all.extend_from_slice(driver::stubs::STUBBED);
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), n, "a name is both implemented and stubbed");
    assert!(n > 400, "{n} names");
    assert_eq!(driver::stubs::cuMemAllocManaged(), CUDA_ERROR_NOT_SUPPORTED);
    assert_eq!(
        driver::stubs::cuGraphAddKernelNode_v2(),
        CUDA_ERROR_NOT_SUPPORTED
    );
}
