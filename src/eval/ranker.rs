//! What ranks labels for an image (`predict`, and `serve`'s `/v1/predict`): the classifier
//! head a fine-tuned export carries, or zero-shot caption similarity over given labels.

use super::ranking::{top, Ranked};
use super::text::probabilities;
use crate::encode::{Encoder, TextEncoder};
use crate::formats::pretrained::{ExportedHead, Pretrained};
use anyhow::{bail, Result};
use std::path::Path;
use tch::{Kind, Tensor};

/// The caption template `predict` fills with each label by default.
pub const DEFAULT_TEMPLATE: &str = "A Street View photo in {}.";

pub enum Ranker {
    Head(ExportedHead),
    /// The labels and their captions' L2-normalised text embeddings `[labels, d]`.
    Labels(Vec<String>, Tensor),
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

impl Ranker {
    /// The head in `model_dir` unless `zero_shot`; `labels` only without a head (a model with
    /// one and labels is a question to the user, not a silent choice).
    pub fn head_or_labels(
        model_dir: &Path,
        clip: &Pretrained,
        labels: Option<&str>,
        zero_shot: bool,
    ) -> Result<Result<ExportedHead, Vec<String>>> {
        let conflict = labels.map(|_| "--labels");
        let head =
            ExportedHead::unless_zero_shot(model_dir, clip, zero_shot, conflict, "the ranking")?;
        match (head, labels) {
            (Some(head), _) => Ok(Ok(head)),
            (None, Some(list)) => Ok(Err(parse_labels(list)?)),
            (None, None) => bail!(
                "--labels is required: {} has no fine-tuned classifier head, so give the labels to rank, e.g. --labels \"France,Japan,Brazil\"",
                model_dir.display()
            ),
        }
    }

    /// Zero-shot over `labels`, each put into `template` where its `{}` is.
    pub fn labels(encoder: &Encoder, labels: Vec<String>, template: &str) -> Result<Self> {
        if !template.contains("{}") {
            bail!("--template `{template}` has no `{{}}` where the label goes");
        }
        let prompts: Vec<String> = labels.iter().map(|l| template.replace("{}", l)).collect();
        let text = encoder.texts(&prompts)?;
        Ok(Self::Labels(labels, text))
    }

    pub fn names(&self) -> &[String] {
        match self {
            Ranker::Head(h) => &h.classes,
            Ranker::Labels(labels, _) => labels,
        }
    }

    /// The `k` most probable names for each of the L2-normalised image embeddings `[B, d]`.
    pub fn rank(&self, clip: &Pretrained, images: &Tensor, k: usize) -> Result<Vec<Vec<Ranked>>> {
        let probs = match self {
            Ranker::Head(head) => head.probabilities(images),
            Ranker::Labels(_, text) => probabilities(images, text, clip.scale()),
        };
        if !bool::try_from(probs.isfinite().all())? {
            bail!("the model gives non-finite scores (NaN or infinity): its weights are damaged; re-export or re-download it");
        }
        let probs = Vec::<Vec<f64>>::try_from(probs.to_kind(Kind::Double))?;
        Ok(probs.iter().map(|p| top(self.names(), p, k)).collect())
    }
}
