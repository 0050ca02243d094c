//! `streetclip export`: a training checkpoint as a Hugging Face CLIP directory.

use crate::config::Config;
use crate::finetune::head::{split_head, ClassHead};
use crate::formats::pretrained::Pretrained;
use crate::formats::weights;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Write a checkpoint as a Hugging Face CLIP directory.
#[derive(clap::Args)]
#[command(
    after_help = "Example (after `make demo`):\n  streetclip export --checkpoint runs/demo/checkpoints/step-00000046 --out runs/demo/export-46"
)]
pub struct Args {
    /// A checkpoint directory (RUN_DIR/checkpoints/step-...).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The directory to write (config.json, model.safetensors, tokenizer and preprocessor
    /// files).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn exec(args: Args) -> Result<()> {
    run(&args.checkpoint, &args.out)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

/// Loads the checkpoint's model (its `config.json` and weights, and a `finetune` classifier
/// head when it has one) with the tokenizer and preprocessing of the run's initial model, and
/// writes them to `out`.
pub fn run(checkpoint: &Path, out: &Path) -> Result<()> {
    if let Some(newest) = crate::train::checkpoint::list(checkpoint).pop() {
        anyhow::bail!(
            "{} holds checkpoints, it is not one: pass a step folder, e.g. --checkpoint {}",
            checkpoint.display(),
            newest.display()
        );
    }
    if !checkpoint.is_dir() {
        let parent = checkpoint.parent().unwrap_or(Path::new("."));
        let steps: Vec<String> = crate::train::checkpoint::list(parent)
            .iter()
            .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        match steps.as_slice() {
            [] => anyhow::bail!("checkpoint {} does not exist", checkpoint.display()),
            _ => anyhow::bail!(
                "checkpoint {} does not exist; {} holds {}",
                checkpoint.display(),
                parent.display(),
                steps.join(", ")
            ),
        }
    }
    let context = || format!("checkpoint {}", checkpoint.display());
    let mut clip = Pretrained::skeleton(checkpoint, tch::Device::Cpu).with_context(context)?;
    let names = crate::formats::tensor_io::read(&checkpoint.join(weights::WEIGHTS_FILE))
        .with_context(context)?;
    let (_, head) = split_head(names);
    if let [(_, bias), (_, weight)] = head.as_slice() {
        ClassHead::attach_with(&mut clip, weight, bias);
    }
    weights::load_into(&mut clip.model.vs, checkpoint).with_context(context)?;
    let cfg = Config::from_file(&checkpoint.join("config.yaml"))?;
    if let Some(init) = &cfg.model.init {
        let original = Pretrained::load_processing(init, &clip.model.config)?;
        clip.tokenizer = original.0;
        clip.preprocess = original.1;
        clip.set_tokenizer_dir(original.2);
    }
    clip.save(out)
}
