//! Bakes libtorch's library directory into every binary (rpath), so `cargo run`, `cargo test`
//! and the installed `streetclip` find libtorch without LD_LIBRARY_PATH.
fn main() {
    // torch-sys publishes this to crates that depend on it directly (`links = "tch"`).
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .expect("torch-sys did not report libtorch's lib dir; run `make setup` first");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
}
