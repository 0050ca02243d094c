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
use crate::formats::pretrained::Pretrained;
use crate::formats::tensor_io::write_atomic;
use crate::geo::cell_targets::smoothed_targets;
use crate::geo::geocells::{self, CellSizes, Geocells};
use crate::geo::Gazetteer;
use crate::train::summary::{RunOptions, Summary};
use crate::train::trainer::Run;
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

/// The geocell method into `out/geocells/`: trains the head (every rank of a data-parallel
/// job), then on rank 0 exports it, scores the held-out splits (`metrics.json`,
/// `{val,test}.csv`, the evaluation in `test/`) and writes `out/comparison.md`.
pub fn run(
    cfg: &Config,
    config_yaml: &str,
    out: &Path,
    options: &RunOptions,
    (env, dist, device): (&DistEnv, &Dist, Device),
) -> Result<()> {
    eprintln!("finetune: geocells");
    let dir = out.join(Method::Geocells.name());
    let splits = load_splits(cfg)?;
    let (cells, sizes) = cells_of(cfg, &splits)?;
    let run = Run {
        cfg,
        config_yaml,
        out: &dir,
        options,
        env,
        dist,
        device,
    };
    let (summary, tuned) = train(&run, &cells, &splits[0])?;
    if env.rank != 0 {
        return Ok(());
    }
    let export = dir.join("export");
    write_export(&tuned, &export, cfg, (&cells, sizes), &splits[0])?;
    let [val, test] = evaluate(cfg, &dir, &tuned, &export, &splits)?;
    let by_name = |evals: &[GeoEval]| -> serde_json::Map<String, serde_json::Value> {
        evals
            .iter()
            .map(|e| (e.name.clone(), serde_json::json!(e.metrics)))
            .collect()
    };
    let [train_n, val_n, test_n] = splits.each_ref().map(Vec::len);
    let metrics = serde_json::json!({
        "method": Method::Geocells.name(),
        "cells": cells.cells.len(),
        "tau_km": cfg.finetune.geocells.tau_km,
        "train_images": train_n,
        "val_images": val_n,
        "test_images": test_n,
        "val": by_name(&val),
        "test": by_name(&test),
        "export": export,
        "training": summary,
    });
    write_atomic(
        &dir.join("metrics.json"),
        &serde_json::to_vec_pretty(&metrics)?,
    )?;
    write_summary(out, &test)
}

/// The geocells of the training split's coordinates, as `finetune.geocells` sizes them.
fn cells_of(cfg: &Config, splits: &[Vec<Located>; 3]) -> Result<(Geocells, CellSizes)> {
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
    let points: Vec<(f64, f64)> = splits[0].iter().map(|l| (l.lat, l.lon)).collect();
    let cells =
        geocells::build(Gazetteer::bundled()?, &points, sizes).context("finetune.geocells")?;
    let [train, val, test] = splits.each_ref().map(Vec::len);
    eprintln!(
        "geocells: {train} train, {val} val, {test} test images; {}",
        cells.counts()
    );
    Ok((cells, sizes))
}

/// Trains the model with a head over `cells`, started as the zero-shot classifier of the
/// cells' captions, on haversine-smoothed targets.
fn train(run: &Run, cells: &Geocells, train: &[Located]) -> Result<(Summary, Pretrained)> {
    let captions: Vec<String> = cells.cells.iter().map(|c| caption_name(&c.name)).collect();
    let templates = run.cfg.finetune.templates.clone();
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
    let points: Vec<(f64, f64)> = train.iter().map(|l| (l.lat, l.lon)).collect();
    let tau_km = run.cfg.finetune.geocells.tau_km;
    let targets = SmoothedCells::new(cells, &points, tau_km);
    let mut loss = HeadObjective::new(captions, templates, targets);
    run.train(samples, vec![], &mut loss)
}

/// The exported model's evaluations on the validation and test splits (each written as a
/// manifest in `dir`; the test one's report in `dir/test/`).
fn evaluate(
    cfg: &Config,
    dir: &Path,
    tuned: &Pretrained,
    export: &Path,
    [_, val, test]: &[Vec<Located>; 3],
) -> Result<[Vec<GeoEval>; 2]> {
    let model = GeoModel::read(export, tuned, false, &cfg.geo)?;
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
        geo_eval::evaluate(tuned, &model, &eval_cfg, "geocells", None, batch)
    };
    let evals = [score(val, "val")?, score(test, "test")?];
    report::write_comparison(&dir.join("test"), &evals[1])?;
    Ok(evals)
}

/// `comparison.md` for a geocells run: its test evaluations side by side (refined, centroid).
fn write_summary(out: &Path, evals: &[GeoEval]) -> Result<()> {
    let refs: Vec<&GeoEval> = evals.iter().collect();
    let md = format!(
        "# Fine-tuning: geocells on the test split ({} images)\n\n{}\nFull evaluation: `geocells/test/report.md`; compare with zero-shot models by `streetclip eval geo --manifest geocells/test.csv`.\n",
        evals.first().map_or(0, |e| e.metrics.n),
        report::metric_table(&refs)
    );
    write_atomic(&out.join("comparison.md"), md.as_bytes())
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
