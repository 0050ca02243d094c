//! The contrastive objective of CLIP, as `transformers`' `clip_loss`.

use tch::{Kind, Tensor};

/// Mean cross-entropy of each row against its own index (the matching pair).
fn contrastive(logits: &Tensor) -> Tensor {
    let n = logits.size()[0];
    let targets = Tensor::arange(n, (Kind::Int64, logits.device()));
    logits.cross_entropy_for_logits(&targets)
}

/// Symmetric InfoNCE: the mean of the text→image and image→text cross-entropies.
pub fn clip_loss(logits_per_text: &Tensor) -> Tensor {
    (contrastive(logits_per_text) + contrastive(&logits_per_text.tr())) / 2.0
}
