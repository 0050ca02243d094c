//! `eval geo`'s evaluation: geolocation of every sample with coordinates, its
//! great-circle error, whether the country was right, and the metrics over them.

use super::geo_model::GeoModel;
use super::metrics::{geo_metrics, GeoMetrics};
use crate::config::Config;
use crate::data::{Dataset, Sample};
use crate::encode::{keep_or_skip, Encoder, Skipped};
use crate::formats::pretrained::Pretrained;
use crate::geo::{haversine_km, Gazetteer};
use anyhow::Result;
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// One sample's guess and error (a row of `predictions.csv`).
#[derive(Debug, Serialize)]
pub struct GeoPrediction {
    pub image: String,
    pub lat: f64,
    pub lon: f64,
    pub pred_lat: f64,
    pub pred_lon: f64,
    pub pred_country: String,
    pub pred_region: String,
    pub pred_city: String,
    pub true_country: String,
    pub error_km: f64,
}

/// One model's evaluation.
pub struct GeoEval {
    pub name: String,
    pub metrics: GeoMetrics,
    pub predictions: Vec<GeoPrediction>,
    /// Images left out (`data.on_error: skip`): `(image, why)`, a row each of `skipped.csv`.
    pub skipped: Vec<(String, String)>,
}

/// One way of placing the images, filling its own evaluation.
struct Scored {
    name: String,
    predictions: Vec<GeoPrediction>,
    errors: Vec<f64>,
    correct: Vec<Option<bool>>,
}

/// Evaluates `clip` the way `model` geolocates on the samples of `cfg.data` that have
/// coordinates, embedding each image once: one evaluation named `name`, and for a refining
/// geocell model a second, `name-centroid`, of its unrefined guesses.
pub fn evaluate(
    clip: &Pretrained,
    model: &GeoModel,
    cfg: &Config,
    name: &str,
    limit: Option<usize>,
    batch: usize,
) -> Result<Vec<GeoEval>> {
    let g = Gazetteer::bundled()?;
    let (data, report) = Dataset::load(&cfg.data, g)?;
    eprintln!("data: {}", report.summary());
    let samples: Vec<&Sample> = data
        .samples
        .iter()
        .filter(|s| s.place.lat.is_some() && s.place.lon.is_some())
        .take(limit.unwrap_or(usize::MAX))
        .collect();
    if samples.is_empty() {
        anyhow::bail!("no sample has coordinates to evaluate against");
    }
    let encoder = model.text_encoder(clip, cfg.geo.cache)?;
    let locators = model.locators(encoder.as_ref(), g, &cfg.geo)?;
    let mut scored: Vec<Scored> = locators
        .iter()
        .map(|(suffix, _)| Scored {
            name: format!("{name}{suffix}"),
            predictions: vec![],
            errors: vec![],
            correct: vec![],
        })
        .collect();
    let images = Encoder::new(clip, batch);
    // Only the preprocessing config crosses threads (tch tensors are not Sync).
    let pre = &clip.preprocess;
    let bar = crate::encode::progress(samples.len(), "images");
    let mut skipped = Skipped::keeping_rows();
    for chunk in samples.chunks(batch.max(1)) {
        let decoded: Vec<Result<_>> = chunk.par_iter().map(|s| pre.load_ref(&s.image)).collect();
        let (mut good, mut pictures) = (Vec::new(), Vec::new());
        for (s, d) in chunk.iter().zip(decoded) {
            let name = s.image.to_string();
            if let Some(picture) = keep_or_skip(d, &name, cfg.data.on_error, &mut skipped)? {
                good.push(*s);
                pictures.push(picture);
            }
        }
        bar.inc(chunk.len() as u64);
        if good.is_empty() {
            continue;
        }
        let embeddings = images.planes(pictures)?;
        for ((_, locator), out) in locators.iter().zip(&mut scored) {
            for (s, guess) in good.iter().zip(locator.locate(&embeddings)?) {
                out.add(s, guess, g);
            }
        }
    }
    bar.finish_and_clear();
    if let Some(encoder) = &encoder {
        if encoder.hits.get() + encoder.misses.get() > 0 {
            eprintln!(
                "text embeddings: {} prompt lists from the cache, {} encoded",
                encoder.hits.get(),
                encoder.misses.get()
            );
        }
    }
    skipped.report(samples.len())?;
    Ok(scored
        .into_iter()
        .map(|s| GeoEval {
            metrics: geo_metrics(&s.errors, &s.correct),
            name: s.name,
            predictions: s.predictions,
            skipped: skipped.rows().to_vec(),
        })
        .collect())
}

impl Scored {
    fn add(&mut self, s: &Sample, guess: super::geolocate::Guess, g: &Gazetteer) {
        let (lat, lon) = (
            s.place.lat.unwrap_or_default(),
            s.place.lon.unwrap_or_default(),
        );
        let error_km = haversine_km(lat, lon, guess.lat, guess.lon);
        self.errors.push(error_km);
        self.correct
            .push(s.place.country.map(|c| c == guess.country_index));
        self.predictions.push(GeoPrediction {
            image: s.image.to_string(),
            lat,
            lon,
            pred_lat: guess.lat,
            pred_lon: guess.lon,
            pred_country: guess.country_code,
            pred_region: guess.region.unwrap_or_default(),
            pred_city: guess.city.unwrap_or_default(),
            true_country: s
                .place
                .country
                .map(|c| g.countries[c].iso2.clone())
                .unwrap_or_default(),
            error_km,
        });
    }
}

/// Display names for model directories: their last path component (with the run's folder
/// before the generic `export*` / `step-*` names a run writes), made unique with `-2`, `-3`.
pub fn model_names(dirs: &[PathBuf]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for d in dirs {
        let component = |p: Option<&Path>| {
            p.and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        };
        let last = component(Some(d)).unwrap_or_else(|| d.display().to_string());
        let generic = last.starts_with("export") || last.starts_with("step-");
        let base = match component(d.parent()) {
            Some(parent) if generic => format!("{parent}-{last}"),
            _ => last,
        };
        let mut name = base.clone();
        let mut i = 2;
        while names.contains(&name) {
            name = format!("{base}-{i}");
            i += 1;
        }
        names.push(name);
    }
    names
}
