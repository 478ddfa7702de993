//! The committed `src/sys/params.rs` must equal what bindgen makes of `kernels/lora_params.h`.
//!
//! Needs libclang; without it the test says so and passes, unless `LORA_KERNELS_REQUIRE_BINDGEN=1`
//! (as in CI). Re-bless after changing the header: `LORA_KERNELS_BLESS=1 cargo test --test bindings`,
//! or, when the library does not compile until the bindings change,
//! `cargo run --manifest-path tools/bind-params/Cargo.toml`.
use std::path::Path;

include!("../tools/bind-params/generate.rs");

/// The fresh bindings, or `None` when libclang cannot be loaded (bindgen panics then).
fn generate() -> Option<String> {
    let header = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/lora_params.h");
    match std::panic::catch_unwind(|| generate_params(&header)) {
        Ok(Ok(text)) => Some(text),
        Ok(Err(e)) => panic!("bindgen failed on kernels/lora_params.h: {e}"),
        Err(_) => None,
    }
}

#[test]
fn committed_bindings_match_the_header() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let committed_path = root.join("src/sys/params.rs");
    let Some(fresh) = generate() else {
        if std::env::var("LORA_KERNELS_REQUIRE_BINDGEN").is_ok_and(|v| v == "1") {
            panic!("libclang is not available but LORA_KERNELS_REQUIRE_BINDGEN=1");
        }
        println!("SKIPPED: libclang not found, the bindings were not regenerated");
        return;
    };
    if std::env::var("LORA_KERNELS_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&committed_path, &fresh).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        committed == fresh,
        "src/sys/params.rs differs from what bindgen makes of kernels/lora_params.h; \
         re-bless with LORA_KERNELS_BLESS=1 cargo test --test bindings"
    );
}
