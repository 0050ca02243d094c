//! The contrastive objective of CLIP, as `transformers`' `clip_loss`; cross-entropy against
//! distributions (the geocell head's smoothed targets).

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

/// Mean cross-entropy of `logits` `[B, K]` against distributions `targets` `[B, K]` (rows
/// summing to 1): torch's `F.cross_entropy` with class-probability targets.
pub fn soft_cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    logits.cross_entropy_loss::<Tensor>(targets, None, tch::Reduction::Mean, -100, 0.0)
}

/// Top-1 accuracy of `logits` `[B, K]` against class indices `targets` `[B]`, as a 0-d double
/// tensor on their device (read it when needed: reading synchronises with a GPU).
pub fn accuracy(logits: &Tensor, targets: &Tensor) -> Tensor {
    logits
        .argmax(-1, false)
        .eq_tensor(targets)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
}

/// In-batch image→text accuracy: how often an image's most similar caption is its own.
pub fn pair_accuracy(logits_per_image: &Tensor) -> Tensor {
    let n = logits_per_image.size()[0];
    accuracy(
        logits_per_image,
        &Tensor::arange(n, (Kind::Int64, logits_per_image.device())),
    )
}
