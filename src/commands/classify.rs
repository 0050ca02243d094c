//! `streetclip eval classify`: zero-shot classification of labelled images — each class name
//! becomes captions through the templates, each image takes the most similar class.

use crate::data::classes::Labelled;
use crate::encode::{Encoder, TextEncoder};
use crate::eval::classification::{class_metrics, write_report, ClassMetrics};
use crate::eval::text::{class_text_embeddings, probabilities};
use crate::pretrained::Pretrained;
use crate::tensor_io::write_atomic;
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const DEFAULT_TEMPLATE: &str = "A Street View photo of {}.";

/// One image's result.
#[derive(Debug, Clone, Serialize)]
pub struct ClassPrediction {
    pub image: String,
    pub label: String,
    pub predicted: String,
    pub probability: f64,
}

/// Zero-shot predictions (class index, probability) for `paths`, `batch` images at a time.
pub fn zero_shot(
    clip: &Pretrained,
    classes: &Tensor,
    paths: &[PathBuf],
    batch: usize,
) -> Result<Vec<(usize, f64)>> {
    let probs = probabilities(
        &Encoder::new(clip, batch).files(paths)?,
        classes,
        clip.scale(),
    );
    let (best, index) = probs.max_dim(-1, false);
    let best = Vec::<f64>::try_from(best)?;
    let index = Vec::<i64>::try_from(index)?;
    Ok(index.into_iter().map(|i| i as usize).zip(best).collect())
}

/// Classifies `data` zero-shot; with `out`, writes the report files and `predictions.csv` there.
pub fn run(
    clip: &Pretrained,
    data: &Labelled,
    templates: &[String],
    batch: usize,
    out: Option<&Path>,
) -> Result<(ClassMetrics, Vec<ClassPrediction>)> {
    let text = class_text_embeddings(clip, &data.caption_names(), templates)?;
    let paths: Vec<PathBuf> = data.items.iter().map(|i| i.path.clone()).collect();
    let guesses = zero_shot(clip, &text, &paths, batch)?;
    let truth: Vec<usize> = data.items.iter().map(|i| i.class).collect();
    let predicted: Vec<usize> = guesses.iter().map(|g| g.0).collect();
    let metrics = class_metrics(&data.classes, &truth, &predicted);
    let rows: Vec<ClassPrediction> = data
        .items
        .iter()
        .zip(&guesses)
        .map(|(item, &(p, prob))| ClassPrediction {
            image: item.path.display().to_string(),
            label: data.classes[item.class].clone(),
            predicted: data.classes[p].clone(),
            probability: prob,
        })
        .collect();
    if let Some(dir) = out {
        let about = format!(
            "Zero-shot on `{}` with templates {}.",
            data.source.display(),
            templates
                .iter()
                .map(|t| format!("\"{t}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        write_report(dir, "Zero-shot classification", &about, &metrics)?;
        write_predictions(&dir.join("predictions.csv"), &rows)?;
    }
    Ok((metrics, rows))
}

pub fn write_predictions(path: &Path, rows: &[ClassPrediction]) -> Result<()> {
    let mut csv = csv::Writer::from_writer(vec![]);
    for r in rows {
        csv.serialize(r)?;
    }
    write_atomic(path, &csv.into_inner().context("csv")?)
}
