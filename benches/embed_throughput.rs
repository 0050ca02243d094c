//! `predict`/`embed` throughput: decode + preprocess + image tower, images/s on the CPU, for
//! streetclip and for transformers doing the same work (scripts/bench_embed.py) in one run.
//! Same model (the tiny 336 px fixture), same real photographs (../shared IM2GPS3K sample),
//! same batch size and thread count. Prints both rates and the ratio.
//!
//! `make bench` (or `cargo bench --bench embed_throughput`).

mod reference;

use std::path::PathBuf;
use std::time::Instant;
use streetclip::encode::Encoder;
use streetclip::formats::pretrained::Pretrained;

const BATCH: usize = 32;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let sample = root.join("../shared/data/im2gps3k-sample/images");
    assert!(
        sample.is_dir(),
        "{} is missing: the benchmark needs the shared real photographs",
        sample.display()
    );
    let mut images: Vec<PathBuf> = std::fs::read_dir(&sample)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    images.sort();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    tch::set_num_threads(threads as i32);
    let model_dir = root.join("tests/fixtures/tiny-p14-336");

    let clip = Pretrained::load(&model_dir, tch::Device::Cpu).unwrap();
    let run = |paths: &[PathBuf]| {
        let encoder = Encoder::new(&clip, BATCH);
        for chunk in paths.chunks(BATCH) {
            let _ = encoder.image_features(&encoder.pixel_values(chunk).unwrap());
        }
    };
    run(&images[..BATCH]);
    let start = Instant::now();
    run(&images);
    let ours = images.len() as f64 / start.elapsed().as_secs_f64();

    let mut args = vec![model_dir.clone().into_os_string()];
    args.extend([BATCH.to_string().into(), threads.to_string().into()]);
    args.extend(
        images
            .iter()
            .map(|p| std::ffi::OsString::from(p.as_os_str())),
    );
    let stdout = reference::run(&root, "bench_embed.py", &args, &[]);
    let theirs = reference::rate(&stdout, "images_per_s");

    println!(
        "embed throughput, {} real photos, tiny 336 px CLIP, batch {BATCH}, {threads} threads",
        images.len()
    );
    println!("  streetclip    {ours:8.1} images/s");
    println!("  transformers  {theirs:8.1} images/s");
    println!("  ratio         {:8.2}x", ours / theirs);
}
