//! The environment settings read at `cuInit`. One test in this binary: it sets process-wide
//! environment variables before the first driver call.
use lora_kernels_emulator::driver::*;

#[test]
fn bad_settings_fail_cuinit_and_good_ones_pass() {
    // The only test of this binary: no other thread reads the environment meanwhile.
    std::env::set_var("LORA_KERNELS_EMULATOR_CHECKERS", "memcheck,racechek");
    assert_eq!(unsafe { cuInit(0) }, CUDA_ERROR_INVALID_VALUE);
    let msg = last_error_message().unwrap();
    assert!(
        msg.contains("racechek") && msg.contains("LORA_KERNELS_EMULATOR_CHECKERS"),
        "{msg}"
    );

    std::env::set_var("LORA_KERNELS_EMULATOR_CHECKERS", "memcheck,racecheck");
    std::env::set_var("LORA_KERNELS_EMULATOR_SEED", "seven");
    assert_eq!(unsafe { cuInit(0) }, CUDA_ERROR_INVALID_VALUE);
    assert!(last_error_message()
        .unwrap()
        .contains("LORA_KERNELS_EMULATOR_SEED"));

    std::env::set_var("LORA_KERNELS_EMULATOR_SEED", "0x2a");
    assert_eq!(unsafe { cuInit(0) }, CUDA_SUCCESS);
    let mut n = 0;
    assert_eq!(unsafe { cuDeviceGetCount(&mut n) }, CUDA_SUCCESS);
    assert_eq!(n, 1);
}
