//! `streetclip convert`: a CLIP checkpoint streetclip can read — a Hugging Face directory
//! (pickled `pytorch_model.bin`, sharded or not, or safetensors), an OpenAI TorchScript archive,
//! an OpenAI / open_clip state dict — written as a complete Hugging Face safetensors directory
//! that `CLIPModel` / `CLIPProcessor.from_pretrained` load.

use crate::model::{openai, weights::named_tensors, Activation};
use crate::pretrained::Pretrained;
use anyhow::{bail, Result};
use std::path::Path;

/// What `run` did, for the user.
pub struct Report {
    pub tensors: usize,
    /// For an OpenAI / open_clip source: the activation and where it came from.
    pub activation: Option<(Activation, &'static str)>,
}

/// Converts `from` into `out`; `activation` overrides an OpenAI / open_clip checkpoint's.
pub fn run(from: &Path, out: &Path, activation: Option<Activation>) -> Result<Report> {
    let device = tch::Device::Cpu;
    let source = crate::model::hub::resolve(from)?;
    let (clip, activation) = match openai::checkpoint_file(&source) {
        Some(file) => {
            let converted = openai::read(&file, activation)?;
            let act = (converted.config.text_config.hidden_act, converted.activation_from);
            (Pretrained::from_converted(&source, converted, device)?, Some(act))
        }
        None if activation.is_some() => bail!(
            "--activation is for OpenAI and open_clip checkpoints; {} is a Hugging Face directory, whose config.json sets it",
            source.display()
        ),
        None => (Pretrained::load(&source, device)?, None),
    };
    clip.save(out)?;
    Ok(Report {
        tensors: named_tensors(&clip.model.vs).len(),
        activation,
    })
}
