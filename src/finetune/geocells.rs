//! `finetune` method `geocells` (PIGEON's recipe on a CLIP backbone): geocells from the
//! training split's coordinates, a head over them on the image embeddings trained through the
//! main trainer against haversine-smoothed targets, and an export that geolocates by itself
//! (`geolocate` / `eval geo` read it): the HF model, `head.safetensors` + `head.json` over the
//! cells, `geocells.json`, and `index.safetensors` (the training images' embeddings,
//! coordinates and cells) for retrieval refinement. The held-out splits are scored the way
//! `eval geo` scores them, refined and at the top cell's centroid.

use super::head::{HeadObjective, HeadTargets, HEAD_INFO};
use crate::config::{Config, Method};
use crate::data::dataset::DataConfig;
use crate::data::{Dataset, ImageRef, Sample};
use crate::dist::{Dist, DistEnv};
use crate::eval::geo_eval::{self, GeoEval};
use crate::eval::geo_model::GeoModel;
use crate::eval::geocell_locate::{RetrievalIndex, CELLS_FILE, INDEX_FILE};
use crate::eval::report;
use crate::geo::cell_targets::smoothed_targets;
use crate::geo::geocells::{self, CellSizes, Geocells};
use crate::geo::Gazetteer;
use crate::pretrained::Pretrained;
use crate::tensor_io::write_atomic;
use crate::train::trainer::{Run, RunOptions};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// One located image of a split.
#[derive(Debug, Clone)]
pub struct Located {
    pub path: PathBuf,
    pub lat: f64,
    pub lon: f64,
    /// The reverse-geocoded (or labelled) country, which the split is stratified by.
    pub country: Option<usize>,
}

/// The located images of a manifest (rows without coordinates are counted and left out).
fn located(manifest: &Path, cfg: &Config, key: &str) -> Result<Vec<Located>> {
    let data = DataConfig {
        manifest: Some(manifest.to_path_buf()),
        on_error: cfg.data.on_error,
        ..DataConfig::default()
    };
    let (dataset, report) =
        Dataset::load(&data, Gazetteer::bundled()?).with_context(|| format!("finetune.{key}"))?;
    let total = dataset.samples.len();
    let items: Vec<Located> = dataset
        .samples
        .into_iter()
        .filter_map(|s| match (s.image, s.place.lat, s.place.lon) {
            (ImageRef::File(path), Some(lat), Some(lon)) => Some(Located {
                path,
                lat,
                lon,
                country: s.place.country,
            }),
            _ => None,
        })
        .collect();
    eprintln!(
        "finetune.{key}: {}; {} with coordinates",
        report.summary(),
        items.len()
    );
    if items.is_empty() {
        bail!(
            "finetune.{key} ({}): no row has coordinates; the geocells method needs lat and lon columns",
            manifest.display()
        );
    }
    if items.len() < total {
        eprintln!(
            "finetune.{key}: {} rows without coordinates left out",
            total - items.len()
        );
    }
    Ok(items)
}

/// The train / validation / test images: given manifests, or seeded fractions of the training
/// manifest taken per country (the classification methods' splitter).
pub fn load_splits(cfg: &Config) -> Result<[Vec<Located>; 3]> {
    let f = &cfg.finetune;
    let Some(train_path) = &f.train else {
        bail!("finetune.train is not set: give a CSV/JSONL manifest of images with lat and lon columns")
    };
    super::split::check_fractions(f)?;
    let mut train = located(train_path, cfg, "train")?;
    let countries = Gazetteer::bundled()?.countries.len();
    let group = |l: &Located| l.country.unwrap_or(countries);
    let mut other = |path: &Option<PathBuf>, key: &str, fraction: f64, salt: u64| match path {
        Some(p) => located(p, cfg, key),
        None => Ok(super::split::take_fraction(
            &mut train,
            group,
            countries + 1,
            fraction,
            cfg.train.seed,
            salt,
        )),
    };
    let test = other(&f.test, "test", f.test_fraction, u64::MAX - 2)?;
    let val = other(&f.val, "val", f.val_fraction, u64::MAX - 3)?;
    if test.is_empty() {
        bail!("the test split is empty: set finetune.test or a positive finetune.test_fraction");
    }
    Ok([train, val, test])
}

/// How a cell reads in the head's initial captions: its name without a cluster number.
fn caption_name(name: &str) -> String {
    name.split(" #").next().unwrap_or(name).to_string()
}

/// PIGEON's haversine-smoothed targets of the training samples: their coordinates, cells and
/// the cells' centroids.
pub struct SmoothedCells {
    /// `[N, 2]` degrees, float64.
    points: Tensor,
    /// `[N]`, int64.
    cells: Tensor,
    /// `[K, 2]` degrees, float64.
    centroids: Tensor,
    tau_km: f64,
}

impl SmoothedCells {
    pub fn new(cells: &Geocells, points: &[(f64, f64)], tau_km: f64) -> Self {
        let flat = |p: &[(f64, f64)]| -> Tensor {
            let v: Vec<f64> = p.iter().flat_map(|&(a, b)| [a, b]).collect();
            Tensor::from_slice(&v).view([p.len() as i64, 2])
        };
        let centroids: Vec<(f64, f64)> = cells.cells.iter().map(|c| (c.lat, c.lon)).collect();
        let ids: Vec<i64> = cells.cell_of.iter().map(|&c| c as i64).collect();
        Self {
            points: flat(points),
            cells: Tensor::from_slice(&ids),
            centroids: flat(&centroids),
            tau_km,
        }
    }
}

impl HeadTargets for SmoothedCells {
    fn targets(&self, samples: &[usize], device: Device) -> (Tensor, Option<Tensor>) {
        let rows = Tensor::from_slice(&samples.iter().map(|&i| i as i64).collect::<Vec<_>>());
        let cells = self.cells.index_select(0, &rows).to(device);
        let soft = smoothed_targets(
            &self.points.index_select(0, &rows).to(device),
            &cells,
            &self.centroids.to(device),
            self.tau_km,
        )
        .to_kind(Kind::Float);
        (cells, Some(soft))
    }
}

/// Trains the geocell head for `cfg` into `dir` (every rank of a data-parallel job), then on
/// rank 0 exports it and scores the held-out splits: writes `dir/metrics.json`,
/// `dir/{val,test}.csv`, `dir/test/` (the evaluation) and returns the test evaluations
/// (refined, centroid; none on other ranks).
pub fn run(
    cfg: &Config,
    config_yaml: &str,
    dir: &Path,
    options: &RunOptions,
    (env, dist, device): (&DistEnv, &Dist, Device),
) -> Result<Vec<GeoEval>> {
    let [train, val, test] = load_splits(cfg)?;
    let g = Gazetteer::bundled()?;
    let gc = &cfg.finetune.geocells;
    if !(gc.tau_km > 0.0 && gc.tau_km.is_finite()) {
        bail!(
            "finetune.geocells.tau_km = {} must be a positive distance in km",
            gc.tau_km
        );
    }
    let sizes = CellSizes {
        min_samples: gc.min_samples,
        max_samples: gc.max_samples,
        seed: cfg.train.seed,
    };
    let points: Vec<(f64, f64)> = train.iter().map(|l| (l.lat, l.lon)).collect();
    let cells = geocells::build(g, &points, sizes).context("finetune.geocells")?;
    eprintln!(
        "geocells: {} train, {} val, {} test images; {}",
        train.len(),
        val.len(),
        test.len(),
        cells.counts()
    );
    // The head starts as the zero-shot classifier of the cells' captions.
    let captions: Vec<String> = cells.cells.iter().map(|c| caption_name(&c.name)).collect();
    let templates = cfg.finetune.templates.clone();
    let samples = train
        .iter()
        .zip(&cells.cell_of)
        .map(|(l, &c)| Sample {
            image: ImageRef::File(l.path.clone()),
            place: crate::data::places::Place {
                caption: Some(templates[0].replace("{}", &captions[c])),
                ..Default::default()
            },
            origin: l.path.display().to_string(),
        })
        .collect();
    let mut loss = HeadObjective::new(
        captions,
        templates,
        SmoothedCells::new(&cells, &points, gc.tau_km),
    );
    let run = Run {
        cfg,
        config_yaml,
        out: dir,
        options,
        env,
        dist,
        device,
    };
    let (summary, tuned) = run.train(samples, vec![], &mut loss)?;
    if env.rank != 0 {
        return Ok(vec![]);
    }
    let export = dir.join("export");
    write_export(&tuned, &export, cfg, (&cells, sizes), &train)?;
    let model = GeoModel::read(&export, &tuned, false, &cfg.geo)?;
    let score = |items: &[Located], name: &str| -> Result<Vec<GeoEval>> {
        if items.is_empty() {
            return Ok(vec![]);
        }
        let manifest = dir.join(format!("{name}.csv"));
        write_manifest(&manifest, items)?;
        let mut eval_cfg = cfg.clone();
        eval_cfg.data = DataConfig {
            manifest: Some(manifest),
            ..DataConfig::default()
        };
        let batch = cfg.train.micro_batch_size;
        geo_eval::evaluate(&tuned, &model, &eval_cfg, "geocells", None, batch)
    };
    let val_evals = score(&val, "val")?;
    let test_evals = score(&test, "test")?;
    report::write_comparison(&dir.join("test"), &test_evals)?;
    let by_name = |evals: &[GeoEval]| -> serde_json::Map<String, serde_json::Value> {
        evals
            .iter()
            .map(|e| (e.name.clone(), serde_json::json!(e.metrics)))
            .collect()
    };
    let metrics = serde_json::json!({
        "method": Method::Geocells.name(),
        "cells": cells.cells.len(),
        "tau_km": gc.tau_km,
        "train_images": train.len(),
        "val_images": val.len(),
        "test_images": test.len(),
        "val": by_name(&val_evals),
        "test": by_name(&test_evals),
        "export": export,
        "training": summary,
    });
    write_atomic(
        &dir.join("metrics.json"),
        &serde_json::to_vec_pretty(&metrics)?,
    )?;
    Ok(test_evals)
}

/// `image,lat,lon` with absolute image paths: a manifest `eval geo --manifest` reads from
/// anywhere.
fn write_manifest(path: &Path, items: &[Located]) -> Result<()> {
    let mut csv = csv::Writer::from_writer(vec![]);
    csv.write_record(["image", "lat", "lon"])?;
    for l in items {
        let image = std::path::absolute(&l.path)?;
        csv.write_record([
            image.display().to_string(),
            l.lat.to_string(),
            l.lon.to_string(),
        ])?;
    }
    write_atomic(path, &csv.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?)
}

/// The HF directory with the head (`head.safetensors`, `head.json` naming the cells),
/// `geocells.json` and the retrieval index of the training images embedded by `clip`.
fn write_export(
    clip: &Pretrained,
    out: &Path,
    cfg: &Config,
    (cells, sizes): (&Geocells, CellSizes),
    train: &[Located],
) -> Result<()> {
    let names: Vec<&String> = cells.cells.iter().map(|c| &c.name).collect();
    let info = serde_json::json!({
        "method": Method::Geocells.name(),
        "classes": names,
        "templates": cfg.finetune.templates,
        "tau_km": cfg.finetune.geocells.tau_km,
        "input": "L2-normalised CLIP image embeddings (CLIPModel image_embeds); logits = head.weight @ x + head.bias over the cells of geocells.json",
    });
    eprintln!(
        "geocells: embedding {} training images for the retrieval index",
        train.len()
    );
    let paths: Vec<PathBuf> = train.iter().map(|l| l.path.clone()).collect();
    let embeddings = crate::encode::Encoder::new(clip, cfg.train.micro_batch_size).files(&paths)?;
    let coords = train.iter().map(|l| (l.lat, l.lon)).collect();
    let index = RetrievalIndex::new(&embeddings, coords, cells.cell_of.clone(), Device::Cpu);
    clip.save_with(out, |out| {
        write_atomic(&out.join(HEAD_INFO), &serde_json::to_vec_pretty(&info)?)?;
        cells.write(&out.join(CELLS_FILE), sizes)?;
        index.write(&out.join(INDEX_FILE))
    })
}
