//! `streetclip geocells`: the geocells (`geo::geocells`) of a manifest's coordinates, written as
//! JSON to inspect them: each cell's name, country, merged regions, centroid and sample count.

use super::args::at_least_one;
use crate::data::dataset::DataConfig;
use crate::data::Dataset;
use crate::geo::geocells::{build, CellSizes, Geocells};
use crate::geo::Gazetteer;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// Geocells of a manifest's coordinates: admin-1 regions, small ones merged into their
/// nearest neighbour, large ones bisected by spherical 2-means; written as JSON to inspect.
#[derive(clap::Args)]
#[command(
    after_help = "Example (synthetic scenes first, so it runs anywhere):\n  streetclip synth-data --out /tmp/scenes --countries 4 --per-city 5\n  streetclip geocells --manifest /tmp/scenes/manifest.csv --min-samples 5 --max-samples 10 --out /tmp/geocells.json"
)]
pub struct Args {
    /// A CSV/JSONL manifest with lat and lon columns (IM2GPS3K's IMG_ID,LAT,LON works).
    #[arg(long)]
    pub manifest: PathBuf,
    /// A region with fewer samples joins the nearest region of its country (else of any).
    #[arg(long, default_value_t = 50, value_parser = at_least_one::<usize>)]
    pub min_samples: usize,
    /// A region with more samples is split into ceil(n / max) clusters.
    #[arg(long, default_value_t = 2000, value_parser = at_least_one::<usize>)]
    pub max_samples: usize,
    /// Seeds the k-means initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The JSON file to write.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn exec(args: Args) -> Result<()> {
    let sizes = CellSizes {
        min_samples: args.min_samples,
        max_samples: args.max_samples,
        seed: args.seed,
    };
    let (cells, without) = from_manifest(&args.manifest, sizes)?;
    cells.write(&args.out, sizes)?;
    if without > 0 {
        eprintln!("{without} samples without coordinates left out");
    }
    print!("{}", cells.summary());
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

/// The cells of `manifest`'s samples with coordinates (the others are counted and left out).
pub fn from_manifest(manifest: &Path, sizes: CellSizes) -> Result<(Geocells, usize)> {
    let g = Gazetteer::bundled()?;
    let data = DataConfig {
        manifest: Some(manifest.to_path_buf()),
        ..DataConfig::default()
    };
    let (dataset, _) = Dataset::load(&data, g)?;
    let points: Vec<(f64, f64)> = dataset
        .samples
        .iter()
        .filter_map(|s| Some((s.place.lat?, s.place.lon?)))
        .collect();
    if points.is_empty() {
        bail!(
            "{} has no sample with coordinates (a lat and a lon column)",
            manifest.display()
        );
    }
    let without = dataset.samples.len() - points.len();
    Ok((build(g, &points, sizes)?, without))
}
