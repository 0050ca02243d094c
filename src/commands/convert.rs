//! `streetclip convert`: a Hugging Face CLIP directory streetclip can read (pickled
//! `pytorch_model.bin`, sharded or not, or safetensors) written as a complete safetensors
//! directory that `CLIPModel` / `CLIPProcessor.from_pretrained` load.

use crate::model::weights::named_tensors;
use crate::pretrained::Pretrained;
use anyhow::Result;
use std::path::Path;

/// Converts `from` into `out`; returns the number of tensors written.
pub fn run(from: &Path, out: &Path) -> Result<usize> {
    let clip = Pretrained::load(from, tch::Device::Cpu)?;
    clip.save(out)?;
    Ok(named_tensors(&clip.model.vs).len())
}
