//! `streetclip eval classify`: classification of labelled images by the fine-tuned head a
//! `finetune` export carries, or zero-shot — each class name becomes captions through the
//! templates, each image takes the most similar class.

use crate::data::classes::Labelled;
use crate::encode::{Encoder, TextEncoder};
use crate::eval::classification::{
    class_metrics, most_probable, prediction_rows, write_predictions, write_report, ClassMetrics,
    ClassPrediction,
};
use crate::eval::text::{class_text_embeddings, probabilities};
use crate::pretrained::{ExportedHead, Pretrained};
use anyhow::Result;
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const DEFAULT_TEMPLATE: &str = "A Street View photo of {}.";

/// What classifies the images: the fine-tuned head a `finetune` export carries, or the class
/// names through caption templates (zero-shot).
pub enum Classifier<'a> {
    Head(&'a ExportedHead),
    ZeroShot { templates: &'a [String] },
}

/// The classifier head a `finetune` export in `dir` carries, unless `zero_shot`; templates
/// given for a model with a head are a question to the user.
pub fn head(
    dir: &Path,
    clip: &Pretrained,
    zero_shot: bool,
    templates_given: bool,
) -> Result<Option<ExportedHead>> {
    let conflict = templates_given.then_some("--template");
    ExportedHead::unless_zero_shot(dir, clip, zero_shot, conflict, "classification")
}

/// Zero-shot predictions (class index, probability) for `paths`, `batch` images at a time.
pub fn zero_shot(
    clip: &Pretrained,
    classes: &Tensor,
    paths: &[PathBuf],
    batch: usize,
) -> Result<Vec<(usize, f64)>> {
    most_probable(&probabilities(
        &Encoder::new(clip, batch).files(paths)?,
        classes,
        clip.scale(),
    ))
}

/// Classifies `data`; with `out`, writes the report files and `predictions.csv` there. A head's
/// classes must include every class of `data` (matched by name).
pub fn run(
    clip: &Pretrained,
    data: &Labelled,
    classifier: Classifier,
    batch: usize,
    out: Option<&Path>,
) -> Result<(ClassMetrics, Vec<ClassPrediction>)> {
    let paths: Vec<PathBuf> = data.items.iter().map(|i| i.path.clone()).collect();
    let (data, guesses, title, about) = match classifier {
        Classifier::Head(head) => {
            let data = data.clone().aligned_to(&head.classes)?;
            let probs = head.probabilities(&Encoder::new(clip, batch).files(&paths)?);
            let about = format!(
                "The fine-tuned classifier head ({} classes) on `{}`.",
                head.classes.len(),
                data.source.display()
            );
            (data, most_probable(&probs)?, "Fine-tuned classifier", about)
        }
        Classifier::ZeroShot { templates } => {
            let text = class_text_embeddings(clip, &data.caption_names(), templates)?;
            let about = format!(
                "Zero-shot on `{}` with templates {}.",
                data.source.display(),
                templates
                    .iter()
                    .map(|t| format!("\"{t}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let guesses = zero_shot(clip, &text, &paths, batch)?;
            (data.clone(), guesses, "Zero-shot classification", about)
        }
    };
    let truth: Vec<usize> = data.items.iter().map(|i| i.class).collect();
    let predicted: Vec<usize> = guesses.iter().map(|g| g.0).collect();
    let metrics = class_metrics(&data.classes, &truth, &predicted);
    let rows = prediction_rows(&data.classes, &data.items, &guesses);
    if let Some(dir) = out {
        write_report(dir, title, &about, &metrics)?;
        write_predictions(&dir.join("predictions.csv"), &rows)?;
    }
    Ok((metrics, rows))
}
