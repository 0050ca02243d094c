//! `streetclip convert`: a CLIP checkpoint streetclip can read — a Hugging Face directory
//! (pickled `pytorch_model.bin`, sharded or not, or safetensors), an OpenAI TorchScript archive,
//! an OpenAI / open_clip state dict — written as a complete Hugging Face safetensors directory
//! that `CLIPModel` / `CLIPProcessor.from_pretrained` load.

use crate::formats::pretrained::Pretrained;
use crate::formats::weights::named_tensors;
use crate::model::Activation;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// Write any CLIP checkpoint streetclip reads (a Hugging Face directory with pickled or
/// sharded weights, OpenAI's TorchScript archives, OpenAI / open_clip state dicts) as a
/// complete Hugging Face safetensors directory, read without Python or code execution.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  streetclip convert --from checkpoints/clip-vit-large-patch14-336 --out checkpoints/clip-vit-large-patch14-336-st\n  streetclip convert --from ~/.cache/clip/ViT-L-14-336px.pt --out checkpoints/ViT-L-14-336px"
)]
pub struct Args {
    /// A Hugging Face CLIP directory (config.json with pytorch_model.bin, its sharded index,
    /// or safetensors), a hub id in the local Hugging Face cache, an OpenAI TorchScript
    /// archive (ViT-*.pt), an OpenAI / open_clip state dict (.pt, .bin, .safetensors), or an
    /// open_clip hub directory (open_clip_pytorch_model.bin + open_clip_config.json).
    #[arg(long)]
    pub from: PathBuf,
    /// The directory to write (config.json, model.safetensors, tokenizer and preprocessor
    /// files).
    #[arg(long)]
    pub out: PathBuf,
    /// The MLP activation of an OpenAI / open_clip state dict, which its shapes cannot tell:
    /// quick_gelu (OpenAI's models; the default) or gelu (most open_clip models trained from
    /// scratch). Read from a TorchScript archive or open_clip_config.json when present.
    #[arg(long, value_parser = parse_activation)]
    pub activation: Option<Activation>,
}

pub fn exec(args: Args) -> Result<()> {
    let report = run(&args.from, &args.out, args.activation)?;
    if let Some((act, from)) = report.activation {
        eprintln!("activation: {} ({from})", serde_json::to_value(act)?);
    }
    eprintln!("wrote {} ({} tensors)", args.out.display(), report.tensors);
    Ok(())
}

/// `--activation`: the names config.json uses (`quick_gelu`, `gelu`, `gelu_new`).
fn parse_activation(s: &str) -> Result<Activation, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| format!("unknown activation `{s}`: use quick_gelu or gelu"))
}

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
