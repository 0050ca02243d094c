//! `streetclip convert`: a CLIP checkpoint streetclip can read — a Hugging Face directory
//! (pickled `pytorch_model.bin`, sharded or not, or safetensors), an OpenAI TorchScript archive,
//! an OpenAI / open_clip state dict — written as a complete Hugging Face safetensors directory
//! that `CLIPModel` / `CLIPProcessor.from_pretrained` load.

use crate::model::{weights::named_tensors, Activation};
use crate::pretrained::Pretrained;
use anyhow::Result;
use std::path::Path;

/// What `run` did, for the user.
pub struct Report {
    pub tensors: usize,
    /// For an OpenAI / open_clip source: the activation and where it came from.
    pub activation: Option<(Activation, &'static str)>,
}

/// Converts `from` into `out`; `activation` overrides an OpenAI / open_clip checkpoint's.
pub fn run(from: &Path, out: &Path, activation: Option<Activation>) -> Result<Report> {
    let (clip, activation_from) = Pretrained::open(from, activation, tch::Device::Cpu)?;
    clip.save(out)?;
    let act = clip.model.config.text_config.hidden_act;
    Ok(Report {
        tensors: named_tensors(&clip.model.vs).len(),
        activation: activation_from.map(|from| (act, from)),
    })
}
