//! Geolocation by a geocell model (a `finetune` export of method `geocells`): the head's
//! probabilities over the cells, and the guess at the top cell's centroid or, refined, at the
//! similarity-weighted spherical mean of the training images nearest in embedding space among
//! those of the top cells (PIGEON's retrieval refinement). The search is batched on the
//! model's device, a bounded chunk of the index at a time.

use super::geolocate::{Confidence, Guess};
use super::ranking::{best_first, Ranked};
pub use super::retrieval_index::RetrievalIndex;
use crate::config::RefineConfig;
use crate::formats::pretrained::{ExportedHead, Pretrained};
use crate::geo::distance::{spherical_mean, valid_coordinates};
use crate::geo::geocells::Cell;
use crate::geo::Gazetteer;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub use crate::formats::pretrained::{CELLS_FILE, INDEX_FILE};

/// A geocell export: its head over the cells, the cells, and the index when it has one.
pub struct GeocellModel {
    pub head: ExportedHead,
    pub cells: Vec<Cell>,
    pub index: Option<RetrievalIndex>,
    /// CLIP's learned temperature (`logit_scale.exp()`), the sharpness of the refinement's
    /// similarity weights.
    pub scale: f64,
}

impl GeocellModel {
    /// The geocell model in `dir`, or `None` when it has no `geocells.json`; files that do not
    /// fit together are an error naming them.
    pub fn read(dir: &Path, clip: &Pretrained) -> Result<Option<Self>> {
        let (projection_dim, device) = (clip.model.config.projection_dim, clip.device());
        let dir = &crate::formats::hub::resolve(dir)?;
        let cells_file = dir.join(CELLS_FILE);
        if !cells_file.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&cells_file)
            .with_context(|| format!("cannot read {}", cells_file.display()))?;
        let cells: Vec<Cell> = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| serde_json::from_value(v["cells"].clone()).ok())
            .with_context(|| {
                format!(
                    "{}: expected {{\"cells\": [...]}} as `streetclip geocells` writes",
                    cells_file.display()
                )
            })?;
        if cells.is_empty() {
            bail!("{}: no cells", cells_file.display());
        }
        if let Some((i, c)) = cells
            .iter()
            .enumerate()
            .find(|(_, c)| !valid_coordinates(c.lat, c.lon))
        {
            bail!(
                "{}: cell {i} ({}) is at ({}, {}), not a latitude in [-90, 90] and a longitude in [-180, 180]: the file is damaged; rebuild it with `streetclip finetune` (method geocells)",
                cells_file.display(),
                c.name,
                c.lat,
                c.lon
            );
        }
        let head = ExportedHead::read(dir, projection_dim)?.with_context(|| {
            format!(
                "{} has {CELLS_FILE} but no classifier head over its cells ({})",
                dir.display(),
                crate::formats::pretrained::HEAD_FILE
            )
        })?;
        let names: Vec<&String> = cells.iter().map(|c| &c.name).collect();
        if head.classes.iter().collect::<Vec<_>>() != names {
            bail!(
                "{}: the head's {} classes are not the {} cells of {CELLS_FILE} in order",
                dir.display(),
                head.classes.len(),
                cells.len()
            );
        }
        let index_file = dir.join(INDEX_FILE);
        let index = match index_file.is_file() {
            true => Some(RetrievalIndex::read(
                &index_file,
                cells.len(),
                projection_dim,
                device,
            )?),
            false => None,
        };
        let scale = clip.model.logit_scale().exp().double_value(&[]);
        Ok(Some(Self {
            head,
            cells,
            index,
            scale,
        }))
    }
}

/// Places images with a [`GeocellModel`].
pub struct GeocellLocator<'a> {
    model: &'a GeocellModel,
    g: &'a Gazetteer,
    cfg: RefineConfig,
    /// The cells' countries, sorted, and each cell's share of samples in each of them (the
    /// country ranking sums the cells' probabilities by these, per image).
    countries: Vec<&'a str>,
    country_shares: Vec<Vec<(usize, f64)>>,
    /// Candidates listed in a guess (`geo.top_k`).
    top_k: usize,
}

impl<'a> GeocellLocator<'a> {
    /// Refines when `cfg.refine` asks and the model has an index.
    pub fn new(
        model: &'a GeocellModel,
        g: &'a Gazetteer,
        cfg: RefineConfig,
        top_k: usize,
    ) -> Result<Self> {
        if cfg.refine && (cfg.top_cells == 0 || cfg.neighbours == 0) {
            bail!("geo.geocells.top_cells and geo.geocells.neighbours must be at least 1 to refine (or set geo.geocells.refine: false)");
        }
        let countries: Vec<&str> = model
            .cells
            .iter()
            .flat_map(|c| c.country_shares().into_iter().map(|(name, _)| name))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let country_shares = model
            .cells
            .iter()
            .map(|c| {
                c.country_shares()
                    .into_iter()
                    .map(|(name, share)| {
                        let i = countries.binary_search(&name).expect("collected above");
                        (i, share)
                    })
                    .collect()
            })
            .collect();
        Ok(Self {
            model,
            g,
            cfg,
            countries,
            country_shares,
            top_k: top_k.max(1),
        })
    }

    pub fn refines(&self) -> bool {
        self.cfg.refine && self.model.index.is_some()
    }

    /// Guesses for L2-normalised image embeddings `[B, d]`.
    pub fn locate(&self, images: &Tensor) -> Result<Vec<Guess>> {
        let images = images.to_kind(Kind::Float);
        let probs = self
            .model
            .head
            .probabilities(&images.to(Device::Cpu))
            .to_kind(Kind::Double);
        let rows: Vec<Vec<f64>> = Vec::<Vec<f64>>::try_from(probs)?;
        let orders: Vec<Vec<usize>> = rows.iter().map(|p| best_first(p)).collect();
        let points = match (&self.model.index, self.refines()) {
            (Some(index), true) => self.refined(index, &images, &rows, &orders)?,
            _ => orders.iter().map(|o| (self.centroid(o[0]), o[0])).collect(),
        };
        Ok(rows
            .iter()
            .zip(&orders)
            .zip(points)
            .map(|((p, order), (point, cell))| self.guess(p, order, point, cell))
            .collect())
    }

    fn centroid(&self, cell: usize) -> (f64, f64) {
        let c = &self.model.cells[cell];
        (c.lat, c.lon)
    }

    /// The refined point of each image. Its `neighbours` nearest training images within its top
    /// cells each weigh their cell's probability times exp(scale · similarity) (CLIP's own
    /// kernel, taken relative to the nearest so it never overflows); the cell with the most
    /// weight wins, and the guess is the weighted spherical mean of its neighbours — never an
    /// average of distant places. The top cell's centroid when no neighbour is found. Returns
    /// each point and the cell it lies in.
    fn refined(
        &self,
        index: &RetrievalIndex,
        images: &Tensor,
        probs: &[Vec<f64>],
        orders: &[Vec<usize>],
    ) -> Result<Vec<((f64, f64), usize)>> {
        let k = self.model.cells.len();
        let mut allowed = vec![false; orders.len() * k];
        for (b, order) in orders.iter().enumerate() {
            for &cell in order.iter().take(self.cfg.top_cells) {
                allowed[b * k + cell] = true;
            }
        }
        let allowed = Tensor::from_slice(&allowed).view([orders.len() as i64, k as i64]);
        let (sims, rows) = index.nearest(images, &allowed, self.cfg.neighbours as i64);
        let sims = Vec::<Vec<f64>>::try_from(sims.to_kind(Kind::Double))?;
        let rows = Vec::<Vec<i64>>::try_from(rows)?;
        Ok((0..orders.len())
            .map(|b| {
                let found: Vec<(f64, usize)> = sims[b]
                    .iter()
                    .zip(&rows[b])
                    .filter(|(s, _)| s.is_finite())
                    .map(|(&s, &r)| (s, r as usize))
                    .collect();
                let Some(&(best, _)) = found.first() else {
                    return (self.centroid(orders[b][0]), orders[b][0]);
                };
                let weight = |&(s, r): &(f64, usize)| {
                    probs[b][index.cell_of[r]] * (self.model.scale * (s - best)).exp()
                };
                let mut mass: BTreeMap<usize, f64> = BTreeMap::new();
                for f in &found {
                    *mass.entry(index.cell_of[f.1]).or_default() += weight(f);
                }
                let cell = mass
                    .iter()
                    .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(a.0)))
                    .map(|(&c, _)| c)
                    .expect("a neighbour was found");
                let chosen: Vec<&(f64, usize)> = found
                    .iter()
                    .filter(|f| index.cell_of[f.1] == cell)
                    .collect();
                let points: Vec<(f64, f64)> = chosen.iter().map(|f| index.coords[f.1]).collect();
                let weights: Vec<f64> = chosen.iter().map(|f| weight(f)).collect();
                (spherical_mean(&points, &weights), cell)
            })
            .collect())
    }

    /// Every cell's centroid with its probability in `p`.
    fn cell_places(&self, p: &[f64]) -> Vec<(f64, f64, f64)> {
        let cells = &self.model.cells;
        cells
            .iter()
            .zip(p)
            .map(|(c, &q)| (c.lat, c.lon, q))
            .collect()
    }

    /// One image's guess from its cell probabilities `p` (`order`: best first), its point and
    /// the cell that lies in (the top cell, or the one refinement chose). The country, region
    /// and city are the point's own (reverse-geocoded, as everywhere else), never a cell's
    /// label; where that country is not the most probable one, the guess says why.
    fn guess(&self, p: &[f64], order: &[usize], (lat, lon): (f64, f64), cell: usize) -> Guess {
        let (g, cells) = (self.g, &self.model.cells);
        let mut by_country = vec![0.0; self.countries.len()];
        for (shares, &q) in self.country_shares.iter().zip(p) {
            for &(c, share) in shares {
                by_country[c] += q * share;
            }
        }
        let countries: Vec<(&str, f64)> = best_first(&by_country)
            .into_iter()
            .map(|c| (self.countries[c], by_country[c]))
            .collect();
        let place = &g.cities[g.nearest_city(lat, lon)];
        let country = &g.countries[place.country];
        let note = (countries[0].0 != country.name).then(|| {
            let how = match self.refines() {
                true => "the mean of the training images nearest to the photo in",
                false => "the centroid of",
            };
            format!(
                "the guess lies in {}, not in the most probable country ({}): it is {how} the cell {}",
                country.name, countries[0].0, cells[cell].name
            )
        });
        Guess {
            country: country.name.clone(),
            country_code: country.iso2.clone(),
            region: place.region.map(|r| g.regions[r].name.clone()),
            city: Some(place.name.clone()),
            lat,
            lon,
            note,
            top_countries: countries
                .iter()
                .take(self.top_k)
                .map(|&(c, q)| Ranked::new(c.to_string(), q))
                .collect(),
            top_regions: vec![],
            top_cities: vec![],
            top_cells: order
                .iter()
                .take(self.top_k)
                .map(|&i| Ranked::at(cells[i].name.clone(), p[i], cells[i].lat, cells[i].lon))
                .collect(),
            confidence: Confidence::around(lat, lon, &self.cell_places(p)),
            country_index: place.country,
        }
    }
}
