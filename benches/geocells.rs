//! Geocells at MP-16 scale: `geo::geocells::build` over 1.1 M coordinates (the IM2GPS3K
//! sample's 300 places, each repeated with a seeded uniform jitter of up to 1°), min 50 / max 2000
//! samples per cell; then the retrieval index of 1.1 M random unit 768-d embeddings (ViT-L/14's
//! width) in those cells: built, written (float16) and read back, and searched as `geolocate`
//! does (64 photos a batch, the 16 nearest among each photo's 5 top cells), on this machine's
//! cores. There is no Python peer for this recipe; the figures are the times themselves (issue:
//! "seconds to minutes on 2 cores").
//!
//! `cargo bench --bench geocells`

use rand::{RngExt, SeedableRng};
use std::time::Instant;
use streetclip::eval::geocell_locate::RetrievalIndex;
use streetclip::geo::geocells::{build, CellSizes};
use streetclip::geo::Gazetteer;
use tch::{Device, Kind, Tensor};

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
    hard_cases(g);
    search(&cells.cell_of, &points, cells.cells.len());
}

/// The cases that took minutes before the bisecting split (issue 24, item 13): a million points
/// in one admin-1 region (Bavaria), a million identical points, and 40,000 identical points with
/// at most 40 per cell.
fn hard_cases(g: &Gazetteer) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let one_region: Vec<(f64, f64)> = (0..1_000_000)
        .map(|_| {
            (
                48.14 + rng.random_range(-0.5..0.5),
                11.58 + rng.random_range(-0.5..0.5),
            )
        })
        .collect();
    let cases = [
        ("1,000,000 points in one region", one_region, 2000),
        (
            "1,000,000 identical points",
            vec![(48.14, 11.58); 1_000_000],
            2000,
        ),
        ("40,000 identical points", vec![(48.14, 11.58); 40_000], 40),
    ];
    for (what, points, max) in cases {
        let sizes = CellSizes {
            min_samples: 1,
            max_samples: max,
            seed: 0,
        };
        let start = Instant::now();
        let cells = build(g, &points, sizes).unwrap();
        println!(
            "geocells of {what} (max {max}): {} cells in {:.2} s",
            cells.cells.len(),
            start.elapsed().as_secs_f64()
        );
    }
}

/// The index of random embeddings for `points` in cells `cell_of`: build, write, read, search.
fn search(cell_of: &[usize], points: &[(f64, f64)], cells: usize) {
    tch::manual_seed(0);
    let n = points.len() as i64;
    let start = Instant::now();
    let embeddings = Tensor::randn([n, 768], (Kind::Float, Device::Cpu));
    let embeddings = &embeddings / embeddings.norm_scalaropt_dim(2, [1], true);
    let index = RetrievalIndex::new(&embeddings, points.to_vec(), cell_of.to_vec(), Device::Cpu);
    drop(embeddings);
    let built = start.elapsed().as_secs_f64();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("index.safetensors");
    let start = Instant::now();
    index.write(&file).unwrap();
    let written = start.elapsed().as_secs_f64();
    drop(index);
    let start = Instant::now();
    let index = RetrievalIndex::read(&file, cells, 768, Device::Cpu).unwrap();
    let read = start.elapsed().as_secs_f64();
    let size = std::fs::metadata(&file).unwrap().len() as f64 / 1e9;
    println!(
        "retrieval index of {n} x 768: built {built:.1} s, written {written:.1} s ({size:.2} GB, float16), read {read:.1} s"
    );
    let batches = 4;
    let start = Instant::now();
    for _ in 0..batches {
        let images = Tensor::randn([64, 768], (Kind::Float, Device::Cpu));
        let images = &images / images.norm_scalaropt_dim(2, [1], true);
        let top = Tensor::randint(cells as i64, [64, 5], (Kind::Int64, Device::Cpu));
        let allowed =
            Tensor::zeros([64, cells as i64], (Kind::Bool, Device::Cpu)).scatter_value(1, &top, 1);
        let allowed = allowed.to_kind(Kind::Bool);
        let (sims, _) = index.nearest(&images, &allowed, 16);
        assert_eq!(sims.size(), [64, 16]);
    }
    let per_batch = start.elapsed().as_secs_f64() / batches as f64;
    println!(
        "nearest 16 of {n} among 5 top cells: {per_batch:.2} s per batch of 64 photos ({:.0} photos/s)",
        64.0 / per_batch
    );
}
