//! Rewrites `src/sys/params.rs` from `kernels/lora_params.h` (see `generate.rs`).
include!("../generate.rs");

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = generate_params(&root.join("kernels/lora_params.h")).expect("bindgen failed");
    std::fs::write(root.join("src/sys/params.rs"), text).expect("cannot write src/sys/params.rs");
    println!("wrote src/sys/params.rs");
}
