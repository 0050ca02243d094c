//! `streetclip predict`: rank labels for each image by CLIP's zero-shot probability.

use crate::data::OnError;
use crate::encode::{Encoder, TextEncoder};
use crate::eval::ranking::{top, Ranked};
use crate::eval::text::probabilities;
use crate::pretrained::{ExportedHead, Pretrained};
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::Kind;

pub struct PredictArgs {
    /// `{}` is replaced by each label (zero-shot only).
    pub template: String,
    pub images: Vec<PathBuf>,
    pub batch_size: usize,
    pub top_k: usize,
}

#[derive(Debug, Serialize)]
pub struct Prediction {
    pub image: PathBuf,
    pub ranking: Vec<Ranked>,
}

/// Labels split on commas, trimmed, empty entries refused.
pub fn parse_labels(list: &str) -> Result<Vec<String>> {
    let labels: Vec<String> = list.split(',').map(|l| l.trim().to_string()).collect();
    if labels.iter().all(|l| l.is_empty()) {
        bail!(
            "--labels is empty: give comma-separated labels, e.g. --labels \"San Jose,San Diego\""
        );
    }
    if let Some(i) = labels.iter().position(|l| l.is_empty()) {
        bail!(
            "--labels has an empty label at position {} (two commas in a row?)",
            i + 1
        );
    }
    Ok(labels)
}

/// What ranks the images: the classifier a fine-tuned export carries (its classes), or
/// zero-shot caption similarity over `--labels`.
pub enum Ranker {
    Head(ExportedHead),
    Labels(Vec<String>),
}

impl Ranker {
    /// The head in `model_dir` unless `zero_shot`; `labels` only without a head (a model with
    /// one and `--labels` is a question to the user, not a silent choice).
    pub fn choose(
        model_dir: &Path,
        clip: &Pretrained,
        labels: Option<&str>,
        zero_shot: bool,
    ) -> Result<Self> {
        let conflict = labels.map(|_| "--labels");
        let head =
            ExportedHead::unless_zero_shot(model_dir, clip, zero_shot, conflict, "the ranking")?;
        match (head, labels) {
            (Some(head), _) => Ok(Ranker::Head(head)),
            (None, Some(list)) => Ok(Ranker::Labels(parse_labels(list)?)),
            (None, None) => bail!(
                "--labels is required: {} has no fine-tuned classifier head, so give the labels to rank, e.g. --labels \"France,Japan,Brazil\"",
                model_dir.display()
            ),
        }
    }

    fn names(&self) -> &[String] {
        match self {
            Ranker::Head(h) => &h.classes,
            Ranker::Labels(l) => l,
        }
    }
}

/// Rankings of the images that can be read; the others are skipped and listed on stderr.
pub fn run(clip: &Pretrained, ranker: &Ranker, args: &PredictArgs) -> Result<Vec<Prediction>> {
    if !args.template.contains("{}") {
        bail!(
            "--template `{}` has no `{{}}` where the label goes",
            args.template
        );
    }
    let encoder = Encoder::new(clip, args.batch_size);
    let embedded = encoder.files_or_skip(&args.images, OnError::Skip)?;
    crate::encode::report_skipped(&embedded.skipped, args.images.len())?;
    let images = &embedded.embeddings;
    let probs = match ranker {
        Ranker::Head(head) => head.probabilities(images),
        Ranker::Labels(labels) => {
            let prompts: Vec<String> = labels
                .iter()
                .map(|l| args.template.replace("{}", l))
                .collect();
            probabilities(images, &encoder.texts(&prompts)?, clip.scale())
        }
    };
    if !bool::try_from(probs.isfinite().all())? {
        bail!("the model gives non-finite scores (NaN or infinity): its weights are damaged; re-export or re-download it");
    }
    let probs = Vec::<Vec<f64>>::try_from(probs.to_kind(Kind::Double))?;
    Ok(embedded
        .kept
        .iter()
        .map(|&i| &args.images[i])
        .zip(probs)
        .map(|(image, p)| Prediction {
            image: image.clone(),
            ranking: top(ranker.names(), &p, args.top_k),
        })
        .collect())
}

/// The rankings as one JSON document (probabilities as fractions), or per image its path and a
/// `  47.29%  label` line per label.
pub fn print(predictions: &[Prediction], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(predictions)?);
        return Ok(());
    }
    for p in predictions {
        println!("{}", p.image.display());
        for r in &p.ranking {
            println!("  {:>6.2}%  {}", 100.0 * r.probability, r.label);
        }
    }
    Ok(())
}
