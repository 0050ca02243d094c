//! Geocells for classification-based geolocation (PIGEON's recipe): cells that follow
//! administrative borders, built from a data set's coordinates. Every sample is
//! reverse-geocoded to its (country, admin-1 region); a region with fewer than `min_samples`
//! is merged into the nearest region of the same country (else of any country); a region with
//! more than `max_samples` is bisected by spherical 2-means until it fits. Deterministic for a seed.

use super::distance::{lat_lon, unit_vector};
use super::gazetteer::Gazetteer;
use anyhow::{bail, Result};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Inputs of at least this many points report each phase on stderr.
const LONG_WORK: usize = 100_000;

/// How cells are sized.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CellSizes {
    /// A region with fewer samples joins its nearest neighbour.
    pub min_samples: usize,
    /// A region with more samples is split into ceil(n / max_samples) clusters.
    pub max_samples: usize,
    /// Seeds the k-means initialisation.
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// "Bayern, Germany" (GeoNames' admin-1 name), "Bayern, Germany #2" for the second cluster
    /// of a split region; a cell that small regions joined says so: "Bayern, Germany (+1
    /// region)", and "Agder, Norway (+2 regions; merged across borders with Sweden)" when a
    /// country had too few samples for a cell of its own.
    pub name: String,
    /// The country of most of its samples.
    pub country: String,
    /// Its samples by country, most first (several only in a cell merged across borders; empty
    /// in files written before this was recorded, where every sample counts for `country`).
    #[serde(default)]
    pub countries: Vec<CountryShare>,
    /// The admin-1 regions merged into this cell (one unless small ones joined it).
    pub regions: Vec<String>,
    /// The members' mean on the unit sphere, in degrees.
    pub lat: f64,
    pub lon: f64,
    pub samples: usize,
}

/// How many of a cell's samples lie in a country.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountryShare {
    pub country: String,
    pub samples: usize,
}

impl Cell {
    /// The share of the cell's samples in each of its countries, most first.
    pub fn country_shares(&self) -> Vec<(&str, f64)> {
        if self.countries.is_empty() {
            return vec![(self.country.as_str(), 1.0)];
        }
        let total: usize = self.countries.iter().map(|c| c.samples).sum();
        self.countries
            .iter()
            .map(|c| (c.country.as_str(), c.samples as f64 / total.max(1) as f64))
            .collect()
    }
}

/// The cells and each input point's cell.
#[derive(Debug, Clone, PartialEq)]
pub struct Geocells {
    pub cells: Vec<Cell>,
    pub cell_of: Vec<usize>,
}

impl Geocells {
    /// `{"sizes": ..., "cells": [...]}`, written atomically (`geocells.json`).
    pub fn write(&self, path: &std::path::Path, sizes: CellSizes) -> Result<()> {
        let json = serde_json::json!({"sizes": sizes, "cells": self.cells});
        crate::formats::tensor_io::write_atomic(path, &serde_json::to_vec_pretty(&json)?)
    }

    /// The first line of [`summary`](Self::summary): how many cells and their sizes.
    pub fn counts(&self) -> String {
        let mut sizes: Vec<usize> = self.cells.iter().map(|c| c.samples).collect();
        sizes.sort_unstable();
        let countries: std::collections::BTreeSet<&str> =
            self.cells.iter().map(|c| c.country.as_str()).collect();
        format!(
            "{} cells in {} countries from {} samples; samples per cell: min {}, median {}, max {}",
            self.cells.len(),
            countries.len(),
            self.cell_of.len(),
            sizes[0],
            sizes[sizes.len() / 2],
            sizes[sizes.len() - 1]
        )
    }

    /// A few lines for the terminal: how many cells, their sizes, the largest.
    pub fn summary(&self) -> String {
        let mut out = self.counts() + "\n";
        let mut largest: Vec<_> = self.cells.iter().collect();
        largest.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.name.cmp(&b.name)));
        for c in largest.iter().take(5) {
            out += &format!(
                "  {:>7}  {} ({:.2}, {:.2})\n",
                c.samples, c.name, c.lat, c.lon
            );
        }
        out
    }
}

/// A cell under construction: its members and the sum of their unit vectors.
struct Group {
    /// The country of the region it started as (same-country merges look for it).
    country: usize,
    /// The region it started as: "Bayern, Germany".
    name: String,
    regions: Vec<String>,
    /// How many other groups were merged into it.
    joined: usize,
    members: Vec<usize>,
    sum: [f64; 3],
}

fn normalized(v: [f64; 3]) -> [f64; 3] {
    let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt().max(1e-300);
    [v[0] / n, v[1] / n, v[2] / n]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn add(a: &mut [f64; 3], b: [f64; 3]) {
    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
}

/// Builds the cells of `points` (latitude, longitude in degrees).
pub fn build(g: &Gazetteer, points: &[(f64, f64)], sizes: CellSizes) -> Result<Geocells> {
    if points.is_empty() {
        bail!("no coordinates to build geocells from");
    }
    if sizes.min_samples == 0 || sizes.max_samples < sizes.min_samples.max(1) {
        bail!(
            "geocells need 1 <= min_samples <= max_samples (got {} and {})",
            sizes.min_samples,
            sizes.max_samples
        );
    }
    let started = std::time::Instant::now();
    // Long work says what it is doing (a million points take seconds, not minutes).
    let progress = |what: String| {
        if points.len() >= LONG_WORK {
            eprintln!(
                "geocells: {what} ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
        }
    };
    progress(format!("placing {} points in their regions", points.len()));
    let vectors: Vec<[f64; 3]> = points.iter().map(|&(la, lo)| unit_vector(la, lo)).collect();
    let (mut groups, country_of) = regions(g, points, &vectors);
    progress(format!(
        "merging the regions under {} samples",
        sizes.min_samples
    ));
    merge_small(&mut groups, sizes.min_samples);
    progress(format!(
        "splitting the regions over {} samples",
        sizes.max_samples
    ));
    let mut cells = Vec::new();
    let mut cell_of = vec![usize::MAX; points.len()];
    let mut stuck = 0;
    for (i, group) in groups.iter().enumerate() {
        let seed = sizes.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let (clusters, unsplittable) = split(group, &vectors, sizes.max_samples, seed);
        stuck += unsplittable;
        for (k, members) in clusters.into_iter().enumerate() {
            let mut sum = [0.0; 3];
            for &m in &members {
                add(&mut sum, vectors[m]);
                cell_of[m] = cells.len();
            }
            let (lat, lon) = lat_lon(normalized(sum));
            let suffix = if k == 0 {
                String::new()
            } else {
                format!(" #{}", k + 1)
            };
            let countries = country_counts(g, members.iter().map(|&m| country_of[m]));
            cells.push(Cell {
                name: format!(
                    "{}{suffix}{}",
                    group.name,
                    merged_note(g, group, &countries)
                ),
                country: countries[0].country.clone(),
                countries,
                regions: group.regions.clone(),
                lat,
                lon,
                samples: members.len(),
            });
        }
    }
    progress(format!("{} cells", cells.len()));
    if stuck > 0 {
        eprintln!(
            "warning: geocells: {stuck} samples lie on shared points in groups larger than max_samples ({}) and cannot be split; their cells are larger (identical coordinates?)",
            sizes.max_samples
        );
    }
    Ok(Geocells { cells, cell_of })
}

/// Samples per country of `countries` (gazetteer indices), most first (ties by name).
fn country_counts(g: &Gazetteer, countries: impl Iterator<Item = usize>) -> Vec<CountryShare> {
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for c in countries {
        *counts.entry(g.countries[c].name.as_str()).or_default() += 1;
    }
    let mut shares: Vec<CountryShare> = counts
        .into_iter()
        .map(|(country, samples)| CountryShare {
            country: country.to_string(),
            samples,
        })
        .collect();
    shares.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.country.cmp(&b.country)));
    shares
}

/// What a cell's name adds when small regions joined it: how many, and the other countries
/// when they came from across a border.
fn merged_note(g: &Gazetteer, group: &Group, countries: &[CountryShare]) -> String {
    let own = g.countries[group.country].name.as_str();
    let others: Vec<&str> = countries
        .iter()
        .map(|c| c.country.as_str())
        .filter(|&c| c != own)
        .collect();
    match (group.joined, others.is_empty()) {
        (0, true) => String::new(),
        (n, true) => format!(" (+{n} region{})", if n == 1 { "" } else { "s" }),
        (n, false) => format!(
            " (+{n} region{}; merged across borders with {})",
            if n == 1 { "" } else { "s" },
            others.join(", ")
        ),
    }
}

/// One group per (country, admin-1 region) of the points' nearest cities (looked up on every
/// core), in gazetteer order, and each point's country.
fn regions(g: &Gazetteer, points: &[(f64, f64)], vectors: &[[f64; 3]]) -> (Vec<Group>, Vec<usize>) {
    use rayon::prelude::*;
    let nearest: Vec<usize> = points
        .par_iter()
        .map(|&(lat, lon)| g.nearest_city(lat, lon))
        .collect();
    let mut by_key: std::collections::BTreeMap<(usize, Option<usize>), Group> = Default::default();
    for (i, &c) in nearest.iter().enumerate() {
        let city = &g.cities[c];
        let group = by_key
            .entry((city.country, city.region))
            .or_insert_with(|| {
                let country = &g.countries[city.country].name;
                let region = city.region.map(|r| g.regions[r].name.clone());
                Group {
                    country: city.country,
                    name: region
                        .as_ref()
                        .map_or(country.clone(), |r| format!("{r}, {country}")),
                    regions: region.into_iter().collect(),
                    joined: 0,
                    members: Vec::new(),
                    sum: [0.0; 3],
                }
            });
        group.members.push(i);
        add(&mut group.sum, vectors[i]);
    }
    let country_of = nearest.iter().map(|&c| g.cities[c].country).collect();
    (by_key.into_values().collect(), country_of)
}

/// Merges the smallest group under `min` into its nearest neighbour (same country first) until
/// none is under `min` or one group is left.
fn merge_small(groups: &mut Vec<Group>, min: usize) {
    while groups.len() > 1 {
        let Some(small) = (0..groups.len())
            .filter(|&i| groups[i].members.len() < min)
            .min_by_key(|&i| (groups[i].members.len(), i))
        else {
            return;
        };
        let here = normalized(groups[small].sum);
        let nearest = |same_country: bool| {
            (0..groups.len())
                .filter(|&j| j != small)
                .filter(|&j| !same_country || groups[j].country == groups[small].country)
                .max_by(|&a, &b| {
                    let (da, db) = (
                        dot(here, normalized(groups[a].sum)),
                        dot(here, normalized(groups[b].sum)),
                    );
                    da.total_cmp(&db).then(b.cmp(&a))
                })
        };
        let target = nearest(true)
            .or_else(|| nearest(false))
            .expect("another group");
        let merged = groups.remove(small);
        let target = if target > small { target - 1 } else { target };
        let t = &mut groups[target];
        t.members.extend(merged.members);
        add(&mut t.sum, merged.sum);
        t.regions.extend(merged.regions);
        t.joined += 1 + merged.joined;
    }
}

/// The group's members in clusters of at most `max`, largest first: bisected by spherical
/// 2-means (k-means++ seeding from `seed`) until every part fits, so a region of n points costs
/// O(n log(n / max)) rather than k-means' O(n · n / max) per iteration. The second value counts
/// the members that could not be split because they lie at one point (their cluster is larger
/// than `max`).
fn split(group: &Group, vectors: &[[f64; 3]], max: usize, seed: u64) -> (Vec<Vec<usize>>, usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut done, mut todo, mut stuck) = (Vec::new(), vec![group.members.clone()], 0);
    while let Some(members) = todo.pop() {
        if members.len() <= max {
            done.push(members);
            continue;
        }
        match bisect(&members, vectors, &mut rng) {
            Some((a, b)) => todo.extend([a, b]),
            None => {
                stuck += members.len();
                done.push(members);
            }
        }
    }
    done.sort_by(|a, b| b.len().cmp(&a.len()).then(a[0].cmp(&b[0])));
    (done, stuck)
}

/// Two non-empty halves of `members` by spherical 2-means, or None when they all lie at one point.
fn bisect(
    members: &[usize],
    vectors: &[[f64; 3]],
    rng: &mut ChaCha8Rng,
) -> Option<(Vec<usize>, Vec<usize>)> {
    let points: Vec<[f64; 3]> = members.iter().map(|&m| vectors[m]).collect();
    let first = points[rng.random_range(0..points.len())];
    // k-means++: the second centre with probability ∝ squared chord distance to the first.
    let d2: Vec<f64> = points
        .iter()
        .map(|p| (2.0 - 2.0 * dot(*p, first)).max(0.0))
        .collect();
    let total: f64 = d2.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let mut r = rng.random::<f64>() * total;
    let pick = d2.iter().position(|&d| {
        r -= d;
        r <= 0.0 && d > 0.0
    });
    let mut centres = [
        first,
        points[pick.unwrap_or_else(|| d2.iter().rposition(|&d| d > 0.0).expect("total > 0"))],
    ];
    let mut side = vec![false; points.len()];
    for _ in 0..100 {
        let mut changed = false;
        let mut sums = [[0.0; 3]; 2];
        for (i, p) in points.iter().enumerate() {
            let second = dot(*p, centres[1]) > dot(*p, centres[0]);
            changed |= second != side[i];
            side[i] = second;
            add(&mut sums[usize::from(second)], *p);
        }
        for (c, s) in centres.iter_mut().zip(sums) {
            if s != [0.0; 3] {
                *c = normalized(s);
            }
        }
        if !changed {
            break;
        }
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (i, &m) in members.iter().enumerate() {
        if side[i] {
            b.push(m)
        } else {
            a.push(m)
        }
    }
    if a.is_empty() || b.is_empty() {
        // Distinct points always fall on both sides of their own centres; guard all the same.
        let half = members.len() / 2;
        return Some((members[..half].to_vec(), members[half..].to_vec()));
    }
    Some((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` points scattered by up to `spread` degrees around a place, deterministically.
    fn around(lat: f64, lon: f64, n: usize, spread: f64) -> Vec<(f64, f64)> {
        (0..n)
            .map(|i| {
                let t = i as f64 * 2.399_963; // golden angle: an even spiral
                let r = spread * ((i as f64 + 0.5) / n as f64).sqrt();
                (lat + r * t.sin(), lon + r * t.cos())
            })
            .collect()
    }

    fn sizes(min: usize, max: usize) -> CellSizes {
        CellSizes {
            min_samples: min,
            max_samples: max,
            seed: 7,
        }
    }

    fn check_partition(cells: &Geocells, n: usize) {
        assert_eq!(cells.cell_of.len(), n);
        assert!(
            cells.cell_of.iter().all(|&c| c < cells.cells.len()),
            "every sample in a cell"
        );
        let mut counts = vec![0; cells.cells.len()];
        cells.cell_of.iter().for_each(|&c| counts[c] += 1);
        for (cell, count) in cells.cells.iter().zip(counts) {
            assert_eq!(cell.samples, count, "{}", cell.name);
            assert!(count > 0, "{} is empty", cell.name);
        }
    }

    #[test]
    fn small_regions_join_the_nearest_region_of_their_country() {
        let g = Gazetteer::bundled().unwrap();
        // Munich (Bavaria) and Berlin: many; Stuttgart (Baden-Württemberg): few, nearer Munich.
        let mut points = around(48.14, 11.58, 60, 0.1);
        points.extend(around(52.52, 13.40, 60, 0.1));
        points.extend(around(48.78, 9.18, 5, 0.05));
        let cells = build(g, &points, sizes(20, 1000)).unwrap();
        check_partition(&cells, points.len());
        assert_eq!(cells.cells.len(), 2, "{:?}", cells.cells);
        let munich = &cells.cells[cells.cell_of[0]];
        assert_eq!(munich.country, "Germany");
        assert_eq!(munich.samples, 65, "Stuttgart's five joined Munich's cell");
        assert_eq!(munich.regions.len(), 2);
        assert_eq!(munich.name, "Bayern, Germany (+1 region)");
        assert_eq!(munich.countries.len(), 1, "{:?}", munich.countries);
        assert_eq!(
            cells.cell_of[124], cells.cell_of[0],
            "a Stuttgart sample is in Munich's cell"
        );
    }

    #[test]
    fn a_country_with_one_small_region_joins_the_nearest_other_country() {
        let g = Gazetteer::bundled().unwrap();
        // Luxembourg's few samples have no other region of their own country to join.
        let mut points = around(49.61, 6.13, 4, 0.02);
        points.extend(around(50.85, 4.35, 50, 0.02)); // Brussels
        points.extend(around(40.42, -3.70, 50, 0.02)); // Madrid
        let cells = build(g, &points, sizes(10, 1000)).unwrap();
        check_partition(&cells, points.len());
        assert_eq!(cells.cells.len(), 2, "{:?}", cells.cells);
        assert_eq!(
            cells.cell_of[0], cells.cell_of[4],
            "Luxembourg joined Brussels"
        );
        assert_ne!(cells.cell_of[0], cells.cell_of[60]);
        // The merged cell says so, and counts each country's samples.
        let merged = &cells.cells[cells.cell_of[0]];
        assert!(
            merged
                .name
                .ends_with("(+1 region; merged across borders with Luxembourg)"),
            "{}",
            merged.name
        );
        assert_eq!(merged.country, "Belgium");
        let shares: Vec<(&str, usize)> = merged
            .countries
            .iter()
            .map(|c| (c.country.as_str(), c.samples))
            .collect();
        assert_eq!(shares, [("Belgium", 50), ("Luxembourg", 4)]);
    }

    #[test]
    fn identical_points_are_one_cell_and_large_regions_split_below_the_limit() {
        let g = Gazetteer::bundled().unwrap();
        // 40,000 photos at one point cannot be split: one cell (with a warning), at once.
        let same = vec![(48.14, 11.58); 40_000];
        let cells = build(g, &same, sizes(1, 40)).unwrap();
        assert_eq!(cells.cells.len(), 1);
        assert_eq!(cells.cells[0].samples, 40_000);
        // A region of 20,000 spread points with at most 100 per cell: every cell within the
        // limit, each a contiguous part (no cell is empty).
        let spread = around(48.14, 11.58, 20_000, 0.5);
        let cells = build(g, &spread, sizes(1, 100)).unwrap();
        check_partition(&cells, spread.len());
        assert!(cells.cells.iter().all(|c| c.samples <= 100));
        assert!(cells.cells.len() >= 200, "{}", cells.cells.len());
    }

    #[test]
    fn large_regions_split_by_spherical_k_means_deterministically() {
        let g = Gazetteer::bundled().unwrap();
        // Two clusters inside Bavaria (GeoNames: Bayern): around Munich and around Nuremberg.
        let mut points = around(48.14, 11.58, 300, 0.15);
        points.extend(around(49.45, 11.08, 300, 0.15));
        let cells = build(g, &points, sizes(10, 400)).unwrap();
        check_partition(&cells, points.len());
        assert_eq!(cells.cells.len(), 2);
        let (a, b) = (cells.cell_of[0], cells.cell_of[300]);
        assert_ne!(a, b);
        assert!(
            cells.cell_of[..300].iter().all(|&c| c == a),
            "Munich's cluster is whole"
        );
        assert!(
            cells.cell_of[300..].iter().all(|&c| c == b),
            "Nuremberg's cluster is whole"
        );
        let names: Vec<&str> = cells.cells.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["Bayern, Germany", "Bayern, Germany #2"]);
        let munich = &cells.cells[a];
        assert!(
            (munich.lat - 48.14).abs() < 0.05 && (munich.lon - 11.58).abs() < 0.05,
            "{munich:?}"
        );
        assert_eq!(
            build(g, &points, sizes(10, 400)).unwrap(),
            cells,
            "deterministic"
        );
    }

    #[test]
    fn bad_sizes_and_no_points_are_errors() {
        let g = Gazetteer::bundled().unwrap();
        assert!(build(g, &[], sizes(1, 2)).is_err());
        assert!(build(g, &[(0.0, 0.0)], sizes(0, 2)).is_err());
        assert!(build(g, &[(0.0, 0.0)], sizes(5, 2)).is_err());
    }
}
