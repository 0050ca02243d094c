//! Training: the contrastive loss (more arrives with the trainer).

pub mod loss;
