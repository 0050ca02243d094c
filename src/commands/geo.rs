//! `streetclip geolocate` and `streetclip eval geo`.

use crate::config::Config;
use crate::data::decode::decode;
use crate::data::{Dataset, Sample};
use crate::eval::geolocate::{Geolocator, Guess};
use crate::eval::metrics::{geo_metrics, GeoMetrics, THRESHOLDS_KM};
use crate::eval::{plots, text_cache};
use crate::geo::{haversine_km, Gazetteer};
use crate::pretrained::Pretrained;
use crate::tensor_io::write_atomic;
use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub fn geolocate(
    clip: &Pretrained,
    cfg: &Config,
    images: &[PathBuf],
    batch: usize,
) -> Result<Vec<(PathBuf, Guess)>> {
    super::check_files(images)?;
    let g = Gazetteer::bundled()?;
    let encoder = text_cache::for_model(clip, cfg.geo.cache)?;
    let locator = Geolocator::new(&encoder, g, cfg.geo.clone())?;
    let mut out = Vec::new();
    for chunk in images.chunks(batch.max(1)) {
        let guesses = locator.locate(&clip.embed_files(chunk)?)?;
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

/// One model's evaluation.
pub struct GeoEval {
    pub name: String,
    pub metrics: GeoMetrics,
    pub predictions: Vec<Prediction>,
}

/// Evaluates `clip` on the samples of `cfg.data` that have coordinates.
pub fn eval_geo(
    clip: &Pretrained,
    cfg: &Config,
    name: &str,
    limit: Option<usize>,
    batch: usize,
) -> Result<GeoEval> {
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
    let encoder = text_cache::for_model(clip, cfg.geo.cache)?;
    let locator = Geolocator::new(&encoder, g, cfg.geo.clone())?;
    let bar = super::progress(samples.len(), "images");
    let (mut predictions, mut errors, mut correct) = (Vec::new(), Vec::new(), Vec::new());
    for chunk in samples.chunks(batch.max(1)) {
        let decoded = chunk
            .par_iter()
            .map(|s| {
                s.image
                    .read()
                    .and_then(|b| decode(&b))
                    .with_context(|| format!("cannot decode image {}", s.image))
            })
            .collect::<Result<Vec<_>>>()?;
        for (s, guess) in chunk
            .iter()
            .zip(locator.locate(&clip.image_embeddings(decoded)?)?)
        {
            let (lat, lon) = (
                s.place.lat.unwrap_or_default(),
                s.place.lon.unwrap_or_default(),
            );
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
                true_country: s
                    .place
                    .country
                    .map(|c| g.countries[c].iso2.clone())
                    .unwrap_or_default(),
                error_km,
            });
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    if encoder.hits.get() + encoder.misses.get() > 0 {
        eprintln!(
            "text embeddings: {} prompt lists from the cache, {} encoded",
            encoder.hits.get(),
            encoder.misses.get()
        );
    }
    Ok(GeoEval {
        name: name.to_string(),
        metrics: geo_metrics(&errors, &correct),
        predictions,
    })
}

fn errors(e: &GeoEval) -> Vec<f64> {
    e.predictions.iter().map(|p| p.error_km).collect()
}

const THRESHOLD_NOTE: &str =
    "Distances are great-circle (R = 6371 km); a guess exactly at a threshold counts as within it.";

/// The metrics as Markdown table rows, one column per evaluation (and their difference for two).
fn metric_rows(evals: &[&GeoEval]) -> String {
    let mut md = String::new();
    let diff = evals.len() == 2;
    let row =
        |md: &mut String, label: &str, values: Vec<Option<f64>>, unit: &str, digits: usize| {
            let cell =
                |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.digits$}{unit}"));
            let mut cells: Vec<String> = values.iter().map(|&v| cell(v)).collect();
            if let (true, [Some(a), Some(b)]) = (diff, values.as_slice()) {
                cells.push(format!("{:+.digits$}{unit}", b - a));
            }
            let _ = writeln!(md, "| {label} | {} |", cells.join(" | "));
        };
    for t in THRESHOLDS_KM {
        let t = t as u32;
        row(
            &mut md,
            &format!("within {t} km"),
            evals
                .iter()
                .map(|e| e.metrics.within_km.get(&t).map(|f| 100.0 * f))
                .collect(),
            "%",
            1,
        );
    }
    row(
        &mut md,
        "median error",
        evals.iter().map(|e| Some(e.metrics.median_km)).collect(),
        " km",
        0,
    );
    row(
        &mut md,
        "mean error",
        evals.iter().map(|e| Some(e.metrics.mean_km)).collect(),
        " km",
        0,
    );
    row(
        &mut md,
        "country accuracy",
        evals
            .iter()
            .map(|e| e.metrics.country_accuracy.map(|f| 100.0 * f))
            .collect(),
        "%",
        1,
    );
    row(
        &mut md,
        "mean GeoScore",
        evals.iter().map(|e| Some(e.metrics.geoscore)).collect(),
        "",
        0,
    );
    md
}

/// `metrics.json`, `predictions.csv`, `report.md`, `error_curve.png` and `map.png` in `dir`.
pub fn write_outputs(dir: &Path, e: &GeoEval, g: &Gazetteer) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_atomic(
        &dir.join("metrics.json"),
        &serde_json::to_vec_pretty(&e.metrics)?,
    )?;
    let mut csv = csv::Writer::from_writer(vec![]);
    for p in &e.predictions {
        csv.serialize(p)?;
    }
    write_atomic(&dir.join("predictions.csv"), &csv.into_inner()?)?;
    plots::error_curve(&dir.join("error_curve.png"), &[(e.name.clone(), errors(e))])?;
    let land: Vec<(f64, f64)> = g.cities.iter().map(|c| (c.lat, c.lon)).collect();
    let pairs: Vec<_> = e
        .predictions
        .iter()
        .map(|p| ((p.lat, p.lon), (p.pred_lat, p.pred_lon)))
        .collect();
    plots::map_scatter(
        &dir.join("map.png"),
        &format!("{}: truths and guesses", e.name),
        &pairs,
        &land,
    )?;
    let mut md = format!(
        "# Geolocation evaluation\n\nModel: `{}`; {} images.\n\n| metric | value |\n|---|---|\n",
        e.name, e.metrics.n
    );
    md += &metric_rows(&[e]);
    let _ = write!(
        md,
        "\n{THRESHOLD_NOTE}\n\n![cumulative error](error_curve.png)\n\n![map](map.png)\n"
    );
    write_atomic(&dir.join("report.md"), md.as_bytes())
}

/// Each evaluation's outputs in `dir/<name>/`, and at the top a side-by-side `report.md`,
/// `comparison.json` and one `error_curve.png` with every model's curve.
pub fn write_comparison(dir: &Path, evals: &[GeoEval]) -> Result<()> {
    let g = Gazetteer::bundled()?;
    let mut md = format!(
        "# Geolocation evaluation: {} models compared\n\n{} images each.\n\n",
        evals.len(),
        evals[0].metrics.n
    );
    let names: Vec<String> = evals.iter().map(|e| format!("`{}`", e.name)).collect();
    let delta = if evals.len() == 2 {
        " | Δ (2nd − 1st)"
    } else {
        ""
    };
    let _ = writeln!(
        md,
        "| metric | {}{delta} |\n|---|{}",
        names.join(" | "),
        "---|".repeat(evals.len() + usize::from(evals.len() == 2))
    );
    md += &metric_rows(&evals.iter().collect::<Vec<_>>());
    let mut json = serde_json::Map::new();
    for e in evals {
        let sub = slug(&e.name);
        write_outputs(&dir.join(&sub), e, g)?;
        json.insert(
            e.name.clone(),
            serde_json::json!({"dir": sub, "metrics": e.metrics}),
        );
    }
    let _ = write!(md, "\n{THRESHOLD_NOTE} Per-model predictions, maps and reports: {}.\n\n![cumulative error](error_curve.png)\n", evals.iter().map(|e| format!("[{0}]({0}/report.md)", slug(&e.name))).collect::<Vec<_>>().join(", "));
    plots::error_curve(
        &dir.join("error_curve.png"),
        &evals
            .iter()
            .map(|e| (e.name.clone(), errors(e)))
            .collect::<Vec<_>>(),
    )?;
    write_atomic(
        &dir.join("comparison.json"),
        &serde_json::to_vec_pretty(&json)?,
    )?;
    write_atomic(&dir.join("report.md"), md.as_bytes())
}

/// A folder name for a model name: its letters, digits, `-`, `_` and `.`.
fn slug(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
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
