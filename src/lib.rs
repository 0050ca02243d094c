//! streetclip: CLIP for street-level geolocalization, on tch (libtorch).

pub mod commands;
pub mod config;
pub mod data;
pub mod dist;
pub mod encode;
pub mod eval;
pub mod finetune;
pub mod formats;
pub mod geo;
pub mod interrupt;
pub mod model;
pub mod seed;
pub mod serve;
pub mod shim;
pub mod synth;
pub mod text;
pub mod train;
pub mod user_dirs;

// Decoding and preprocessing allocate several megabytes per image; glibc serves such blocks
// with mmap/munmap and page faults every time, which mimalloc reuses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
