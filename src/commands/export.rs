//! `streetclip export`: a training checkpoint as a Hugging Face CLIP directory.

use crate::config::Config;
use crate::pretrained::Pretrained;
use anyhow::{Context, Result};
use std::path::Path;

/// Loads the checkpoint's model (its `config.json` and weights) with the tokenizer and
/// preprocessing of the run's initial model, and writes them to `out`.
pub fn run(checkpoint: &Path, out: &Path) -> Result<()> {
    let mut clip = Pretrained::load(checkpoint, tch::Device::Cpu)
        .with_context(|| format!("checkpoint {}", checkpoint.display()))?;
    let cfg = Config::from_file(&checkpoint.join("config.yaml"))?;
    if let Some(init) = &cfg.model.init {
        let original = Pretrained::load_processing(init, &clip.model.config)?;
        clip.tokenizer = original.0;
        clip.preprocess = original.1;
        clip.set_tokenizer_dir(original.2);
    }
    clip.save(out)
}
