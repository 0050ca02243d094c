//! `streetclip eval geo`: geolocation metrics of one or more models on photos with
//! coordinates (the evaluation itself is `eval::geo_eval`, its files `eval::report`).

use super::args::{at_least_one, ConfigArgs, OutArgs, Runtime};
use super::geolocate::{geolocate, print_guesses};
use crate::config::Config;
use crate::data::collection::Sources;
use crate::data::manifest::read_images;
use crate::eval::geo_eval::{self, GeoEval};
use crate::eval::geo_model::GeoModel;
use crate::eval::report;
use crate::formats::pretrained::Pretrained;
use crate::geo::Gazetteer;
use anyhow::Result;
use std::path::PathBuf;

/// Zero-shot geolocation: % within 1/25/200/750/2500 km, median/mean error, country
/// accuracy, GeoScore.
#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  streetclip eval geo --model runs/demo/export --manifest .cache/synth-demo/manifest.csv --out runs/demo/eval"
)]
pub struct Args {
    /// A Hugging Face CLIP directory; repeat to compare models in one report.
    #[arg(long, required = true)]
    pub model: Vec<PathBuf>,
    /// Ignore a fine-tuned classifier head the model carries (head.safetensors) and rank
    /// every candidate zero-shot, by caption similarity.
    #[arg(long)]
    pub zero_shot: bool,
    /// A manifest with coordinates (IM2GPS3K's IMG_ID,LAT,LON works as it is); one without
    /// them is geolocated without metrics (and says so).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Its `geo` section, and `data` when --manifest is not given, are used.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Writes metrics.json, predictions.csv, report.md, error_curve.png and map.png here
    /// (one folder per model and a side-by-side report when comparing).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Evaluate only the first N samples.
    #[arg(long, value_parser = at_least_one::<usize>)]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub rt: Runtime,
    /// Photos without coordinates (files and folders, searched recursively): geolocated
    /// without metrics, as with a manifest that has none.
    #[arg(conflicts_with = "manifest")]
    pub images: Vec<PathBuf>,
    /// A file listing photos without coordinates, one path per line (`-`: standard input).
    #[arg(long, value_name = "LIST", conflicts_with = "manifest")]
    pub files_from: Option<PathBuf>,
}

pub fn exec(args: Args) -> Result<()> {
    let mut cfg = args.config.resolve()?;
    let unlabelled = Sources {
        paths: args.images.clone(),
        files_from: args.files_from.clone(),
        manifest: None,
    };
    if !unlabelled.is_empty() {
        let what = "these photos have no coordinates";
        return guesses_only(&args, &cfg, unlabelled, what);
    }
    if args.manifest.is_some() {
        cfg.data.manifest = args.manifest.clone();
        cfg.data.shards = None;
    }
    if cfg.data.manifest.is_none() && cfg.data.shards.is_none() {
        anyhow::bail!("eval geo needs photos with coordinates: pass --manifest CSV/JSONL (IM2GPS3K's IMG_ID,LAT,LON works as it is), or a --config whose data.manifest or data.shards is set");
    }
    if let Some(manifest) = without_coordinates(&cfg)? {
        let what = format!(
            "{}: no sample has coordinates (lat, lon)",
            manifest.display()
        );
        let sources = Sources {
            manifest: Some(manifest),
            ..Sources::default()
        };
        return guesses_only(&args, &cfg, sources, &what);
    }
    let evals = eval_geo(&args, &cfg)?;
    print_metrics(&evals)
}

/// The manifest of `cfg.data`, when none of its samples has coordinates (nothing to measure).
fn without_coordinates(cfg: &Config) -> Result<Option<PathBuf>> {
    let Some(manifest) = &cfg.data.manifest else {
        return Ok(None);
    };
    crate::synth::draw_if_missing(&cfg.data, Gazetteer::bundled()?)?;
    let (rows, _) = read_images(manifest, &cfg.data.columns, cfg.data.image_root.as_deref())?;
    let any = rows
        .iter()
        .any(|r| r.label.lat.is_some() && r.label.lon.is_some());
    Ok((!any).then(|| manifest.clone()))
}

/// Photos without coordinates: said so (`what`), and geolocated as `geolocate` does — the
/// guesses printed as JSON, or written to `guesses.jsonl` (the skipped images to
/// `guesses.skipped.csv`) in `--out`.
fn guesses_only(args: &Args, cfg: &Config, sources: Sources, what: &str) -> Result<()> {
    let [model] = args.model.as_slice() else {
        anyhow::bail!("{what}, so there is nothing to compare the models on: give a manifest with lat and lon columns");
    };
    eprintln!("{what}, so there is nothing to measure; the guesses follow, as `streetclip geolocate` gives them");
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)?;
    }
    let out = OutArgs {
        out: args.out.as_ref().map(|dir| dir.join("guesses.jsonl")),
        format: None,
        resume: false,
    };
    let clip = Pretrained::load(model, args.rt.device()?)?;
    let method = (
        model.as_path(),
        &clip,
        args.zero_shot,
        cfg,
        args.rt.batch_size,
    );
    out.run(
        &sources,
        |paths, skipped, on_batch| geolocate(method, paths, skipped, on_batch),
        |guesses| print_guesses(guesses, true),
    )
}

/// Evaluates each model directory on `cfg`'s data (one report, or a comparison when there are
/// several evaluations, in `out`); a model's geocells or country head are used unless
/// `zero_shot`.
pub fn eval_geo(args: &Args, cfg: &Config) -> Result<Vec<GeoEval>> {
    let (models, zero_shot, limit) = (&args.model, args.zero_shot, args.limit);
    crate::synth::draw_if_missing(&cfg.data, Gazetteer::bundled()?)?;
    let mut evals = Vec::new();
    for (dir, name) in models.iter().zip(geo_eval::model_names(models)) {
        let clip = Pretrained::load(dir, args.rt.device()?)?;
        let model = GeoModel::read(dir, &clip, zero_shot, &cfg.geo)?;
        evals.extend(geo_eval::evaluate(
            &clip,
            &model,
            cfg,
            &name,
            limit,
            args.rt.batch_size,
        )?);
    }
    match (args.out.as_deref(), evals.as_slice()) {
        (Some(out), [one]) => report::write_outputs(out, one)?,
        (Some(out), _) => report::write_comparison(out, &evals)?,
        (None, _) => {}
    }
    Ok(evals)
}

/// The metrics as JSON: one model's, or an object of every model's by name.
pub fn print_metrics(evals: &[GeoEval]) -> Result<()> {
    let text = match evals {
        [one] => serde_json::to_string_pretty(&one.metrics)?,
        _ => {
            let by_name: serde_json::Map<String, serde_json::Value> = evals
                .iter()
                .map(|e| (e.name.clone(), serde_json::json!(e.metrics)))
                .collect();
            serde_json::to_string_pretty(&by_name)?
        }
    };
    println!("{text}");
    Ok(())
}
