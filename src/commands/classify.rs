//! `streetclip eval classify`: classification of labelled images by the fine-tuned head a
//! `finetune` export carries, or zero-shot — each class name becomes captions through the
//! templates, each image takes the most similar class.

use super::args::{ConfigArgs, Lists, OutArgs, Runtime, MODEL_HELP};
use crate::data::classes::Labelled;
use crate::data::OnError;
use crate::encode::{Encoder, Skipped, TextEncoder};
use crate::eval::classification::{
    class_metrics, most_probable, prediction_rows, write_predictions, write_report, ClassMetrics,
    ClassPrediction,
};
use crate::eval::text::{class_text_embeddings, probabilities};
use crate::formats::pretrained::{ExportedHead, Pretrained};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const DEFAULT_TEMPLATE: &str = "A Street View photo of {}.";

/// Zero-shot classification accuracy for any label set: per-class precision/recall,
/// confusion matrix.
#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  streetclip eval classify --model runs/demo/export --data photos/ --template \"A Street View photo in {}.\""
)]
pub struct Args {
    #[arg(long, help = MODEL_HELP)]
    pub model: PathBuf,
    /// Ignore a fine-tuned classifier head the model carries (head.safetensors) and rank
    /// every candidate zero-shot, by caption similarity.
    #[arg(long)]
    pub zero_shot: bool,
    /// An ImageFolder directory (root/<class>/*.jpg) or a CSV/JSONL manifest.
    #[arg(long, required_unless_present_any = ["images", "files_from"])]
    pub data: Option<PathBuf>,
    /// The manifest column holding the class.
    #[arg(long)]
    pub label_column: Option<String>,
    /// Caption template, `{}` is the class name (`_` read as a space); repeat to ensemble.
    #[arg(long = "template")]
    pub templates: Vec<String>,
    /// Writes metrics.json, predictions.csv, confusion.csv, confusion.png and report.md here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub rt: Runtime,
    /// Its `data.on_error` (skip, the default, or fail) decides what an unreadable image does.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Images without labels (files and folders, searched recursively): classified without
    /// metrics, as `predict` does.
    #[arg(conflicts_with = "data")]
    pub images: Vec<PathBuf>,
    /// A file listing images without labels, one path per line (`-`: standard input).
    #[arg(long, value_name = "LIST", conflicts_with = "data")]
    pub files_from: Option<PathBuf>,
    /// The classes of images without labels, comma-separated (zero-shot; a model with a
    /// classifier head ranks its own).
    #[arg(long, conflicts_with = "data")]
    pub labels: Option<String>,
}

/// Classifies by the model's head (unless --zero-shot) or its templates and prints the
/// metrics as JSON.
pub fn exec(args: Args) -> Result<()> {
    let Some(data) = &args.data else {
        return predictions_only(args);
    };
    let data = Labelled::load(data, args.label_column.as_deref())?;
    let clip = args.rt.load(&args.model)?;
    let given = !args.templates.is_empty();
    let head = head(&args.model, &clip, args.zero_shot, given)?;
    let templates = match given {
        true => args.templates,
        false => vec![DEFAULT_TEMPLATE.to_string()],
    };
    let classifier = match &head {
        Some(head) => Classifier::Head(head),
        None => Classifier::ZeroShot {
            templates: &templates,
        },
    };
    let batch = (args.rt.batch_size, args.config.resolve()?.data.on_error);
    let (metrics, _) = run(&clip, &data, classifier, batch, args.out.as_deref())?;
    println!("{}", serde_json::to_string_pretty(&metrics)?);
    Ok(())
}

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

/// Images without labels: said so, and each one's most probable class given as `predict`
/// gives it — printed as JSON, or written to `predictions.csv` (the skipped images to
/// `predictions.skipped.csv`) in `--out`.
fn predictions_only(args: Args) -> Result<()> {
    eprintln!("these images have no class labels, so there is nothing to measure; each one's most probable class follows, as `streetclip predict` gives it");
    let template = match args.templates.as_slice() {
        [] => DEFAULT_TEMPLATE.to_string(),
        [one] => one.clone(),
        _ => bail!("--template: a prompt ensemble needs labelled --data; give one template"),
    };
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)?;
    }
    super::predict::exec(super::predict::Args {
        model: args.model,
        labels: args.labels,
        zero_shot: args.zero_shot,
        template,
        top_k: 1,
        rt: args.rt,
        config: args.config,
        json: true,
        out: OutArgs {
            out: args.out.map(|dir| dir.join("predictions.csv")),
            format: None,
            resume: false,
        },
        images: args.images,
        lists: Lists {
            files_from: args.files_from,
            manifest: None,
        },
    })
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

/// The embeddings of `data`'s images that can be read, and `data` narrowed to them; the
/// others are skipped (named on stderr, and in `skipped.csv` in `out`).
fn embed_readable(
    clip: &Pretrained,
    data: &Labelled,
    (batch, on_error): (usize, OnError),
    out: Option<&Path>,
) -> Result<(Tensor, Labelled)> {
    let paths: Vec<PathBuf> = data.items.iter().map(|i| i.path.clone()).collect();
    let (mut parts, mut kept) = (Vec::new(), Vec::new());
    let mut skipped = Skipped::keeping_rows();
    let all = paths.iter().cloned().map(Ok);
    let encoder = Encoder::new(clip, batch);
    encoder.stream(all, Some(paths.len()), on_error, &mut skipped, |k, e| {
        kept.extend_from_slice(k);
        parts.push(e);
        Ok(())
    })?;
    skipped.report(paths.len())?;
    if let (Some(dir), false) = (out, skipped.rows().is_empty()) {
        std::fs::create_dir_all(dir)?;
        crate::encode::write_skipped(&dir.join("skipped.csv"), skipped.rows())?;
    }
    // `kept` is `paths` in order less the skipped ones.
    let mut next = kept.iter().peekable();
    let mut readable = data.clone();
    readable
        .items
        .retain(|item| next.next_if(|p| **p == item.path).is_some());
    Ok((Tensor::cat(&parts, 0), readable))
}

/// Classifies `data`'s readable images, `batch.0` at a time (the others are skipped and listed
/// in `skipped.csv`, or stop it: `batch.1`, `data.on_error`);
/// with `out`, writes the report files and `predictions.csv` there. A head's classes must
/// include every class of `data` (matched by name).
pub fn run(
    clip: &Pretrained,
    data: &Labelled,
    classifier: Classifier,
    batch: (usize, OnError),
    out: Option<&Path>,
) -> Result<(ClassMetrics, Vec<ClassPrediction>)> {
    let (images, data) = embed_readable(clip, data, batch, out)?;
    let (data, guesses, title, about) = match classifier {
        Classifier::Head(head) => {
            let data = data.aligned_to(&head.classes)?;
            let probs = head.probabilities(&images);
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
            let guesses = most_probable(&probabilities(&images, &text, clip.scale()))?;
            (data, guesses, "Zero-shot classification", about)
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
