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

/// `{"sizes": ..., "cells": [...]}`, written atomically.
pub fn write(path: &Path, cells: &Geocells, sizes: CellSizes) -> Result<()> {
    let json = serde_json::json!({"sizes": sizes, "cells": cells.cells});
    crate::tensor_io::write_atomic(path, &serde_json::to_vec_pretty(&json)?)
}

/// A few lines for the terminal: how many cells, their sizes, the largest.
pub fn summary(cells: &Geocells) -> String {
    let mut sizes: Vec<usize> = cells.cells.iter().map(|c| c.samples).collect();
    sizes.sort_unstable();
    let countries: std::collections::BTreeSet<&str> =
        cells.cells.iter().map(|c| c.country.as_str()).collect();
    let mut out = format!(
        "{} cells in {} countries from {} samples; samples per cell: min {}, median {}, max {}\n",
        cells.cells.len(),
        countries.len(),
        cells.cell_of.len(),
        sizes[0],
        sizes[sizes.len() / 2],
        sizes[sizes.len() - 1]
    );
    let mut largest: Vec<_> = cells.cells.iter().collect();
    largest.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.name.cmp(&b.name)));
    for c in largest.iter().take(5) {
        out += &format!(
            "  {:>7}  {} ({:.2}, {:.2})\n",
            c.samples, c.name, c.lat, c.lon
        );
    }
    out
}
