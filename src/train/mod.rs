//! Training: the contrastive loss, the optimizer and its schedule, the accumulation step,
//! checkpoints, logging, validation and the loop.

pub mod batches;
pub mod checkpoint;
pub mod config_change;
pub mod logger;
pub mod loss;
pub mod objective;
pub mod optim;
pub mod param_groups;
mod run_dir;
pub mod setup;
pub mod step;
pub mod summary;
pub mod trainer;
pub mod validate;
