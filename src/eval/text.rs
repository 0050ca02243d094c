//! Candidate prompts to embeddings (prompt ensembling) and probabilities over them.

use crate::encode::TextEncoder;
use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// Each candidate's embedding averaged over the templates and renormalised (CLIP's prompt
/// ensembling); `prompts(template)` lists the candidates' prompts for one template.
pub fn ensemble(
    encoder: &impl TextEncoder,
    templates: &[String],
    prompts: impl Fn(&str) -> Vec<String>,
) -> Result<Tensor> {
    let per_template = templates
        .iter()
        .map(|t| encoder.encode(&prompts(t)))
        .collect::<Result<Vec<_>>>()?;
    Ok(crate::model::normalize(
        &Tensor::stack(&per_template, 0).mean_dim(0, false, Kind::Float),
    ))
}

/// Softmax probabilities of `[B, d]` image embeddings over `[n, d]` candidate embeddings.
pub fn probabilities(images: &Tensor, candidates: &Tensor, scale: f64) -> Tensor {
    (images.to_kind(Kind::Float).matmul(&candidates.tr()) * scale).softmax(-1, Kind::Double)
}

/// The class-caption embeddings `[classes, d]`: each template filled with each name (`{}`),
/// ensembled over the templates.
pub fn class_text_embeddings(
    encoder: &impl TextEncoder,
    names: &[String],
    templates: &[String],
) -> Result<Tensor> {
    if templates.is_empty() {
        bail!("no caption template given");
    }
    if let Some(t) = templates.iter().find(|t| !t.contains("{}")) {
        bail!("caption template `{t}` has no `{{}}` for the class name");
    }
    ensemble(encoder, templates, |t| {
        names.iter().map(|n| t.replace("{}", n)).collect()
    })
}
