//! CLIP in tch with Hugging Face's module tree: every VarStore path is a `CLIPModel` key.

pub mod clip;
pub mod config;
mod init;
mod layers;
mod text;
mod vision;
pub mod weights;

pub use clip::{normalize, ClipModel, ClipOutput};
pub use config::{Activation, ClipConfig, TextConfig, VisionConfig};
