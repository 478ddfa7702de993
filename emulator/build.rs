//! Gives the cdylib the SONAME `libcuda.so.1`, so that once a process has loaded it by path,
//! cudarc's `dlopen("libcuda.so.1")` binds to it. The file itself is not named libcuda.so, so it
//! never shadows a real driver.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcuda.so.1");
    }
}
