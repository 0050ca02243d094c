//! `streetclip geolocate` and `streetclip eval geo`.

use crate::config::Config;
use crate::data::preprocess::decode;
use crate::data::{Dataset, Sample};
use crate::eval::geolocate::{Geolocator, Guess};
use crate::eval::metrics::{geo_metrics, GeoMetrics};
use crate::geo::{haversine_km, Gazetteer};
use crate::pretrained::Pretrained;
use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Normalised image embeddings of decoded images.
fn embed(clip: &Pretrained, images: Vec<image::DynamicImage>) -> Result<Tensor> {
    let (h, w) = clip.preprocess.output_size();
    let pre = &clip.preprocess;
    let planes = images.into_par_iter().map(|i| pre.apply(i)).collect::<Result<Vec<_>>>()?;
    let n = planes.len() as i64;
    let pixels = Tensor::from_slice(&planes.concat()).view([n, 3, h as i64, w as i64]).to(clip.device());
    Ok(tch::no_grad(|| crate::model::normalize(&clip.model.image_features(&pixels))).to(tch::Device::Cpu))
}

pub fn geolocate(clip: &Pretrained, cfg: &Config, images: &[PathBuf], batch: usize) -> Result<Vec<(PathBuf, Guess)>> {
    super::check_files(images)?;
    let g = Gazetteer::bundled()?;
    let locator = Geolocator::new(clip, &g, cfg.geo.clone())?;
    let mut out = Vec::new();
    for chunk in images.chunks(batch.max(1)) {
        let decoded = chunk
            .par_iter()
            .map(|p| std::fs::read(p).map_err(anyhow::Error::from).and_then(|b| decode(&b)).with_context(|| format!("cannot decode image {}", p.display())))
            .collect::<Result<Vec<_>>>()?;
        let guesses = locator.locate(&embed(clip, decoded)?)?;
        out.extend(chunk.iter().cloned().zip(guesses));
    }
    Ok(out)
}

#[derive(Debug, Serialize)]
pub struct Prediction {
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

/// Evaluates `clip` on the samples with coordinates; writes metrics.json, predictions.csv and
/// report.md into `out` when given.
pub fn eval_geo(clip: &Pretrained, cfg: &Config, model_name: &str, out: Option<&Path>, limit: Option<usize>, batch: usize) -> Result<(GeoMetrics, Vec<Prediction>)> {
    let g = Gazetteer::bundled()?;
    let (data, report) = Dataset::load(&cfg.data, &g)?;
    eprintln!("data: {}", report.summary());
    let samples: Vec<&Sample> = data.samples.iter().filter(|s| s.place.lat.is_some() && s.place.lon.is_some()).take(limit.unwrap_or(usize::MAX)).collect();
    if samples.is_empty() {
        anyhow::bail!("no sample has coordinates to evaluate against");
    }
    let locator = Geolocator::new(clip, &g, cfg.geo.clone())?;
    let bar = super::progress(samples.len(), "images");
    let (mut predictions, mut errors, mut correct) = (Vec::new(), Vec::new(), Vec::new());
    for chunk in samples.chunks(batch.max(1)) {
        let decoded = chunk.par_iter().map(|s| s.image.read().and_then(|b| decode(&b)).with_context(|| format!("cannot decode image {}", s.image))).collect::<Result<Vec<_>>>()?;
        for (s, guess) in chunk.iter().zip(locator.locate(&embed(clip, decoded)?)?) {
            let (lat, lon) = (s.place.lat.unwrap_or_default(), s.place.lon.unwrap_or_default());
            let error_km = haversine_km(lat, lon, guess.lat, guess.lon);
            errors.push(error_km);
            correct.push(s.place.country.map(|c| c == guess.country_index));
            predictions.push(Prediction {
                image: s.image.to_string(),
                lat,
                lon,
                pred_lat: guess.lat,
                pred_lon: guess.lon,
                pred_country: guess.country_code,
                pred_region: guess.region.unwrap_or_default(),
                pred_city: guess.city.unwrap_or_default(),
                true_country: s.place.country.map(|c| g.countries[c].iso2.clone()).unwrap_or_default(),
                error_km,
            });
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let metrics = geo_metrics(&errors, &correct);
    if let Some(dir) = out {
        write_outputs(dir, model_name, &metrics, &predictions)?;
    }
    Ok((metrics, predictions))
}

fn write_outputs(dir: &Path, model_name: &str, m: &GeoMetrics, predictions: &[Prediction]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    crate::tensor_io::write_atomic(&dir.join("metrics.json"), &serde_json::to_vec_pretty(m)?)?;
    let mut csv = csv::Writer::from_writer(vec![]);
    for p in predictions {
        csv.serialize(p)?;
    }
    crate::tensor_io::write_atomic(&dir.join("predictions.csv"), &csv.into_inner()?)?;
    let mut md = format!("# Geolocation evaluation\n\nModel: `{model_name}`; {} images.\n\n", m.n);
    md += "| metric | value |\n|---|---|\n";
    for (t, v) in &m.within_km {
        let _ = writeln!(md, "| within {t} km | {v:.1}% |");
    }
    let _ = writeln!(md, "| median error | {:.0} km |\n| mean error | {:.0} km |", m.median_km, m.mean_km);
    if let Some(c) = m.country_accuracy {
        let _ = writeln!(md, "| country accuracy | {c:.1}% |");
    }
    let _ = writeln!(md, "| mean GeoScore | {:.0} |\n\nDistances are great-circle (R = 6371 km); a guess exactly at a threshold counts as within it.", m.geoscore);
    crate::tensor_io::write_atomic(&dir.join("report.md"), md.as_bytes())
}
