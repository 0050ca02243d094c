//! `streetclip geolocate` and `streetclip eval geo`: running them and printing their results
//! (the evaluation itself is `eval::geo_eval`, its files `eval::report`).

use crate::config::Config;
use crate::eval::geo_eval::{self, GeoEval};
use crate::eval::geo_model::GeoModel;
use crate::eval::geolocate::Guess;
use crate::eval::ranking::Ranked;
use crate::eval::report;
use crate::geo::Gazetteer;
use crate::pretrained::Pretrained;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// Guesses for `images` by the model in `model_dir` (by its geocells or its country head when
/// it has them, unless `zero_shot`), handed to `on_batch` a few batches at a time as they are
/// made. Images that cannot be read follow `data.on_error` (skipped and listed on stderr by
/// default; `NothingUsable` when none could be used).
pub fn geolocate(
    model_dir: &Path,
    clip: &Pretrained,
    zero_shot: bool,
    cfg: &Config,
    (images, batch): (&[PathBuf], usize),
    mut on_batch: impl FnMut(&[(PathBuf, Guess)]) -> Result<()>,
) -> Result<()> {
    let g = Gazetteer::bundled()?;
    let model = GeoModel::read(model_dir, clip, zero_shot, &cfg.geo)?;
    let encoder = model.text_encoder(clip, cfg.geo.cache)?;
    let locators = model.locators(encoder.as_ref(), g, &cfg.geo)?;
    let images_encoder = crate::encode::Encoder::new(clip, batch);
    let mut skipped = Vec::new();
    for chunk in images.chunks(batch.max(1) * BATCHES_PER_WRITE) {
        let embedded = images_encoder.files_or_skip(chunk, cfg.data.on_error)?;
        skipped.extend(embedded.skipped);
        if embedded.kept.is_empty() {
            continue;
        }
        let guesses = locators[0].1.locate(&embedded.embeddings)?;
        let rows: Vec<(PathBuf, Guess)> = embedded
            .kept
            .iter()
            .map(|&i| chunk[i].clone())
            .zip(guesses)
            .collect();
        on_batch(&rows)?;
    }
    crate::encode::report_skipped(&skipped, images.len())
}

/// Batches embedded between two hand-overs of guesses (to the output file).
const BATCHES_PER_WRITE: usize = 4;

/// Evaluates each model directory on `cfg`'s data (one report, or a comparison when there are
/// several evaluations, in `out`); a model's geocells or country head are used unless
/// `zero_shot`.
pub fn eval_geo(
    models: &[PathBuf],
    zero_shot: bool,
    cfg: &Config,
    out: Option<&Path>,
    limit: Option<usize>,
    batch: usize,
    device: tch::Device,
) -> Result<Vec<GeoEval>> {
    crate::synth::draw_if_missing(&cfg.data, Gazetteer::bundled()?)?;
    let mut evals = Vec::new();
    for (dir, name) in models.iter().zip(geo_eval::model_names(models)) {
        let clip = Pretrained::load(dir, device)?;
        let model = GeoModel::read(dir, &clip, zero_shot, &cfg.geo)?;
        evals.extend(geo_eval::evaluate(&clip, &model, cfg, &name, limit, batch)?);
    }
    match (out, evals.as_slice()) {
        (Some(out), [one]) => report::write_outputs(out, one, Gazetteer::bundled()?)?,
        (Some(out), _) => report::write_comparison(out, &evals)?,
        (None, _) => {}
    }
    Ok(evals)
}

/// Each image's guess: JSON (`image`, `guess`), or its place and coordinates with the top
/// candidates of each stage.
pub fn print_guesses(guesses: &[(PathBuf, Guess)], json: bool) -> Result<()> {
    if json {
        let rows: Vec<_> = guesses
            .iter()
            .map(|(p, g)| serde_json::json!({"image": p, "guess": g}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let top = |list: &[Ranked]| {
        list.iter()
            .map(|r| format!("{} {:.1}%", r.label, 100.0 * r.probability))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (path, g) in guesses {
        let place = [g.city.clone(), g.region.clone(), Some(g.country.clone())]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", ");
        println!("{}\t{place} ({:.4}, {:.4})", path.display(), g.lat, g.lon);
        if let Some(note) = &g.note {
            println!("  note:      {note}");
        }
        println!("  countries: {}", top(&g.top_countries));
        if !g.top_regions.is_empty() {
            println!("  regions:   {}", top(&g.top_regions));
        }
        if g.top_cells.is_empty() {
            println!("  cities:    {}", top(&g.top_cities));
        } else {
            println!("  cells:     {}", top(&g.top_cells));
        }
    }
    Ok(())
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
