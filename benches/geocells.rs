//! Geocells at MP-16 scale: `geo::geocells::build` over 1.1 M coordinates (the IM2GPS3K
//! sample's 300 places, each repeated with a seeded uniform jitter of up to 1°), min 50 / max 2000
//! samples per cell, on this machine's cores. There is no Python peer for this recipe; the
//! figure is the time itself (issue: "seconds to minutes on 2 cores").
//!
//! `cargo bench --bench geocells`

use rand::{RngExt, SeedableRng};
use std::time::Instant;
use streetclip::geo::geocells::{build, CellSizes};
use streetclip::geo::Gazetteer;

fn main() {
    let meta = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/im2gps3k-sample/meta.csv");
    let text = std::fs::read_to_string(&meta).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the shared IM2GPS3K sample is needed)",
            meta.display()
        )
    });
    let places: Vec<(f64, f64)> = text
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[1].parse().unwrap(), f[2].parse().unwrap())
        })
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let points: Vec<(f64, f64)> = (0..1_100_000)
        .map(|i| {
            let (lat, lon) = places[i % places.len()];
            let lat = (lat + rng.random_range(-1.0..1.0)).clamp(-89.0, 89.0);
            let lon = (lon + rng.random_range(-1.0..1.0) + 540.0) % 360.0 - 180.0;
            (lat, lon)
        })
        .collect();
    let g = Gazetteer::bundled().unwrap();
    let sizes = CellSizes {
        min_samples: 50,
        max_samples: 2000,
        seed: 0,
    };
    let start = Instant::now();
    let cells = build(g, &points, sizes).unwrap();
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "geocells of {} points (min 50, max 2000): {} cells in {seconds:.2} s",
        points.len(),
        cells.cells.len()
    );
}
