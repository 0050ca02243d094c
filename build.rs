//! Bakes libtorch's library directory into every binary (rpath), so `cargo run`, `cargo test`
//! and the installed `streetclip` find libtorch without LD_LIBRARY_PATH; compiles the C++ shim
//! (csrc/) against the same libtorch.
use std::path::PathBuf;

fn main() {
    // torch-sys publishes this to crates that depend on it directly (`links = "tch"`).
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .expect("torch-sys did not report libtorch's lib dir; run `make setup` first");
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
    compile_dist(&root);
    println!("cargo:rustc-link-search=native={lib}");
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    println!("cargo:rerun-if-changed=csrc/shim.cpp");
}

/// csrc/dist.cpp: c10d's TCPStore and ProcessGroupGloo (Gloo's headers from Debian's
/// libgloo-dev, which `make setup` installs); ProcessGroupNCCL too when the CUDA toolkit and
/// NCCL headers of the torch wheel's CUDA are in the environment (`nvidia/` in site-packages),
/// and then csrc/cuda.cpp's CUDA queries as well.
fn compile_dist(libtorch: &std::path::Path) {
    if !std::path::Path::new("/usr/include/gloo/algorithm.h").is_file() {
        panic!("Gloo's headers are missing (/usr/include/gloo): run `make setup`, which installs Debian's libgloo-dev");
    }
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("csrc/dist.cpp")
        .include(libtorch.join("include"))
        .include(libtorch.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("USE_C10D_GLOO", None)
        .warnings(false);
    let nvidia = libtorch.join("../nvidia");
    let cuda_headers = [nvidia.join("cu13/include"), nvidia.join("nccl/include")];
    let nccl = [
        "cu13/include/cuda_runtime_api.h",
        "cu13/include/crt/host_defines.h",
        "cu13/include/nv/target",
        "nccl/include/nccl.h",
    ]
    .iter()
    .all(|h| nvidia.join(h).exists());
    // csrc/cuda.cpp: device name and peak memory (CUDA facts `bench train` reports).
    build.file("csrc/cuda.cpp");
    if nccl {
        build.define("USE_C10D_NCCL", None);
        build.define("STREETCLIP_CUDA", None);
        for dir in &cuda_headers {
            build.include(dir);
        }
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    if !nccl {
        println!("cargo:warning=building without ProcessGroupNCCL: the CUDA/NCCL headers of the torch wheel are not in {} (make setup installs them)", nvidia.display());
    }
    build.compile("streetclip_dist");
    println!("cargo:rerun-if-changed=csrc/dist.cpp");
    println!("cargo:rerun-if-changed=csrc/cuda.cpp");
}
