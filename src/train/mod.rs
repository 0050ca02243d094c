//! Training: the contrastive loss, the optimizer and its schedule, the accumulation step.

pub mod loss;
pub mod optim;
pub mod step;
