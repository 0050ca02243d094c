//! Bakes libtorch's library directory into every binary (rpath), so `cargo run`, `cargo test`
//! and the installed `streetclip` find libtorch without LD_LIBRARY_PATH; compiles the C++ shim
//! (csrc/) against the same libtorch.
use std::path::PathBuf;

fn main() {
    // torch-sys publishes this to crates that depend on it directly (`links = "tch"`).
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys did not report libtorch's lib dir; run `make setup` first");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");

    let root = PathBuf::from(&lib).join("..");
    cc::Build::new()
        .cpp(true)
        .file("csrc/shim.cpp")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .compile("streetclip_shim");
    println!("cargo:rustc-link-search=native={lib}");
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    println!("cargo:rerun-if-changed=csrc/shim.cpp");
}
