//! A training or evaluation set: images with resolved places, from a manifest or WebDataset
//! shards, with bad rows handled as configured (`skip`: counted and reported; `fail`: an error).

use super::image_ref::ImageRef;
use super::manifest::{self, Columns};
use super::places::{resolve, Place, UnknownNames};
use super::webdataset;
use crate::geo::Gazetteer;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Leave the sample out, count it, name the first few, summarise at the end.
    #[default]
    Skip,
    /// Stop with an error naming the sample.
    Fail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// A `.csv` or `.jsonl` manifest.
    pub manifest: Option<PathBuf>,
    /// WebDataset tar shards, brace patterns allowed: `shards/train-{0000..0099}.tar`.
    pub shards: Option<String>,
    /// Where relative image paths start (default: the manifest's folder, or its `images/`).
    pub image_root: Option<PathBuf>,
    pub columns: Columns,
    pub on_error: OnError,
    /// Decode/preprocess threads (0: one per core).
    pub workers: usize,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
    pub augment: AugmentConfig,
    /// Draw `synth-data` scenes into the manifest's folder when the manifest is absent (the
    /// demo config uses this, so it runs on a fresh clone).
    pub synth: Option<SynthSpec>,
}

/// More decode threads than this only add memory: every worker holds a batch in flight.
pub const MAX_WORKERS: usize = 256;

impl DataConfig {
    pub fn validate(&self) -> Result<()> {
        if self.workers > MAX_WORKERS {
            bail!(
                "data.workers = {}: at most {MAX_WORKERS} (0 means one per core)",
                self.workers
            );
        }
        if self.prefetch > 64 {
            bail!("data.prefetch = {}: at most 64 batches", self.prefetch);
        }
        self.augment.validate()
    }
}

impl AugmentConfig {
    fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.hflip) {
            bail!(
                "data.augment.hflip = {}: a probability, in [0, 1]",
                self.hflip
            );
        }
        if let Some([lo, hi]) = self.random_resized_crop {
            if !(lo > 0.0 && lo <= hi && hi <= 1.0) {
                bail!("data.augment.random_resized_crop = [{lo}, {hi}]: fractions of the area with 0 < min <= max <= 1");
            }
        }
        Ok(())
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            manifest: None,
            shards: None,
            image_root: None,
            columns: Columns::default(),
            on_error: OnError::Skip,
            workers: 0,
            prefetch: 4,
            augment: AugmentConfig::default(),
            synth: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SynthSpec {
    /// Countries drawn (the most populous ones with enough cities).
    pub countries: usize,
    /// Cities per country (its most populous).
    pub cities_per_country: usize,
    /// Scenes per city.
    pub per_city: usize,
    /// Seed of the scenes' randomness.
    pub seed: u64,
}

/// Training augmentation; off by default (StreetCLIP used the evaluation preprocessing).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// `[min, max]` fraction of the image area kept by a random resized crop.
    pub random_resized_crop: Option<[f64; 2]>,
    /// Probability of a horizontal flip. Off by default: a flip swaps the driving side.
    pub hflip: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub image: ImageRef,
    pub place: Place,
    /// `file:line` or `shard:member`, for messages.
    pub origin: String,
}

/// What happened to the rows: kept, skipped (with the first few named), unknown names.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DataReport {
    pub rows: usize,
    pub kept: usize,
    pub skipped: usize,
    pub first_skipped: Vec<String>,
    pub unknown: UnknownNames,
}

pub const NAMED_SKIPS: usize = 5;

impl DataReport {
    /// Counts a bad row, or turns it into the error when the policy is `fail`.
    pub fn bad(&mut self, policy: OnError, origin: &str, why: &str) -> Result<()> {
        if policy == OnError::Fail {
            bail!("{origin}: {why} (set data.on_error: skip to leave such samples out)");
        }
        self.skipped += 1;
        if self.first_skipped.len() < NAMED_SKIPS {
            self.first_skipped.push(format!("{origin}: {why}"));
        }
        Ok(())
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} rows: {} kept, {} skipped",
            self.rows, self.kept, self.skipped
        );
        if self.unknown.cities + self.unknown.regions > 0 {
            s += &format!(
                "; names not in the gazetteer (left out of captions): {} cities, {} regions",
                self.unknown.cities, self.unknown.regions
            );
        }
        for line in &self.first_skipped {
            s += &format!("\n  {line}");
        }
        if self.skipped > self.first_skipped.len() {
            s += &format!(
                "\n  ... and {} more",
                self.skipped - self.first_skipped.len()
            );
        }
        s
    }
}

pub struct Dataset {
    pub samples: Vec<Sample>,
}

impl Dataset {
    /// Reads the manifest or shards named in `cfg` and resolves every label. Missing image
    /// files are checked here for manifests; unreadable images are found by the loader.
    /// Nothing is written (`synth::draw_if_missing` draws a config's synthetic data first).
    pub fn load(cfg: &DataConfig, g: &Gazetteer) -> Result<(Self, DataReport)> {
        let mut report = DataReport::default();
        let rows: Vec<(ImageRef, super::places::RawLabel, String)> =
            match (&cfg.manifest, &cfg.shards) {
                (Some(path), None) => {
                    let (records, bad) =
                        manifest::read(path, &cfg.columns, cfg.image_root.as_deref())?;
                    report.rows = records.len() + bad.len();
                    for (origin, why) in bad {
                        report.bad(cfg.on_error, &origin, &why)?;
                    }
                    let mut rows = Vec::with_capacity(records.len());
                    for r in records {
                        match super::not_a_file(&r.image) {
                            None => rows.push((ImageRef::File(r.image), r.label, r.origin)),
                            Some(why) => report.bad(
                                cfg.on_error,
                                &r.origin,
                                &format!("image {} {why}", r.image.display()),
                            )?,
                        }
                    }
                    rows
                }
                (None, Some(pattern)) => {
                    let (members, bad) = webdataset::index(pattern, &cfg.columns)?;
                    report.rows = members.len() + bad.len();
                    for (origin, why) in bad {
                        report.bad(cfg.on_error, &origin, &why)?;
                    }
                    members
                }
                (Some(_), Some(_)) => {
                    bail!("data.manifest and data.shards are both set; choose one")
                }
                (None, None) => {
                    bail!("no data: set data.manifest (CSV/JSONL) or data.shards (WebDataset tars)")
                }
            };
        let mut samples = Vec::with_capacity(rows.len());
        for (image, raw, origin) in rows {
            match resolve(g, &raw, &mut report.unknown) {
                Ok(place) => samples.push(Sample {
                    image,
                    place,
                    origin,
                }),
                Err(e) => report.bad(cfg.on_error, &origin, &e.to_string())?,
            }
        }
        report.kept = samples.len();
        if samples.is_empty() {
            bail!("no usable samples: {}", report.summary());
        }
        Ok((Self { samples }, report))
    }
}
