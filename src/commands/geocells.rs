//! `streetclip geocells`: the geocells (`geo::geocells`) of a manifest's coordinates, written as
//! JSON to inspect them: each cell's name, country, merged regions, centroid and sample count.

use crate::data::dataset::DataConfig;
use crate::data::Dataset;
use crate::geo::geocells::{build, CellSizes, Geocells};
use crate::geo::Gazetteer;
use anyhow::{bail, Result};
use std::path::Path;

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
