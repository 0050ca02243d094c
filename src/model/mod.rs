//! CLIP in tch with Hugging Face's module tree: every VarStore path is a `CLIPModel` key.

pub mod clip;
pub mod config;
mod flops;
pub mod init;
mod layers;
mod text;
mod vision;

pub use clip::{normalize, ClipModel, ClipOutput};
pub use config::{Activation, ClipConfig, TextConfig, VisionConfig};
pub use text::cut_after_pooled;
pub use vision::{resize_position_embedding, POSITION_EMBEDDING};

use anyhow::{bail, Result};
use tch::Device;

/// `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    let device = match s {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => Device::Cuda(n),
            None => bail!("unknown device `{s}`: use cpu, cuda or cuda:N"),
        },
    };
    if let Device::Cuda(n) = device {
        let available = tch::Cuda::device_count() as usize;
        if n >= available {
            bail!("device `{s}` requested but {available} CUDA device(s) are visible to libtorch: to run on the CPU pass --device cpu, or for a config --set model.device=cpu");
        }
    }
    Ok(device)
}
