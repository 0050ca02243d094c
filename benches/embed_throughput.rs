//! `predict`/`embed` throughput: decode + preprocess + image tower, images/s on the CPU, for
//! streetclip and for transformers doing the same work (scripts/bench_embed.py) in one run.
//! Same model (the tiny 336 px fixture), same real photographs (../shared IM2GPS3K sample),
//! same batch size and thread count. Prints both rates and the ratio.
//!
//! `make bench` (or `cargo bench --bench embed_throughput`).

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

    let out = std::process::Command::new(root.join(".venv/bin/python"))
        .arg(root.join("scripts/bench_embed.py"))
        .arg(&model_dir)
        .arg(BATCH.to_string())
        .arg(threads.to_string())
        .args(&images)
        .output()
        .expect("run make setup first");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let theirs: f64 = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("images_per_s line");

    println!(
        "embed throughput, {} real photos, tiny 336 px CLIP, batch {BATCH}, {threads} threads",
        images.len()
    );
    println!("  streetclip    {ours:8.1} images/s");
    println!("  transformers  {theirs:8.1} images/s");
    println!("  ratio         {:8.2}x", ours / theirs);
}
