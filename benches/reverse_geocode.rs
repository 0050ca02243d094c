//! Reverse geocoding: lookups/s on one core (goal >= 100k), against a vectorised numpy brute
//! force over the same gazetteer (scripts/bench_reverse_geocode.py), in one run.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
mod reference;

use std::path::PathBuf;
use std::time::Instant;
use streetclip::geo::Gazetteer;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let g = Gazetteer::bundled().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let n = 1_000_000;
    let points: Vec<(f64, f64)> = (0..n)
        .map(|_| {
            (
                rng.random_range(-1.0f64..1.0).asin().to_degrees(),
                rng.random_range(-180.0..180.0),
            )
        })
        .collect();
    let start = Instant::now();
    let mut checksum = 0usize;
    for &(lat, lon) in &points {
        checksum = checksum.wrapping_add(g.nearest_city(lat, lon));
    }
    let ours = n as f64 / start.elapsed().as_secs_f64();
    let cities = root.join("data/gazetteer/cities.tsv").into_os_string();
    let args = [cities, "2000".into(), "1".into()];
    let stdout = reference::run(&root, "bench_reverse_geocode.py", &args, &[]);
    let theirs = reference::rate(&stdout, "lookups_per_s");
    println!(
        "reverse geocoding, {} cities, one core (checksum {checksum})",
        g.cities.len()
    );
    println!("  streetclip (k-d tree)      {ours:12.0} lookups/s");
    println!("  numpy brute force          {theirs:12.0} lookups/s");
    println!("  ratio                      {:12.1}x", ours / theirs);
}
