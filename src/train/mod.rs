//! Training: the contrastive loss, the optimizer and its schedule, the accumulation step,
//! checkpoints, logging, validation and the loop.

pub mod checkpoint;
pub mod logger;
pub mod loss;
pub mod optim;
pub mod step;
pub mod trainer;
pub mod validate;
