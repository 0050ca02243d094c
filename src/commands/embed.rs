//! `streetclip embed`: features for images and texts, written as safetensors with the tensor
//! names and meanings of transformers (`get_image_features`, `get_text_features`, ...).

use super::args::{ConfigArgs, Lists, Runtime, MODEL_HELP};
use crate::encode::{skipped_beside, Encoder, Skipped};
use crate::formats::pretrained::Pretrained;
use anyhow::{bail, Result};
use std::path::PathBuf;
use tch::Tensor;

/// Write image and text features (HF tensor names) to a safetensors file; the images' paths,
/// in row order, are its `images` metadata (a JSON list).
#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  streetclip embed --model runs/demo/export --image photo.jpg --text \"A Street View photo in Japan.\" --out features.safetensors"
)]
pub struct Args {
    #[arg(long, help = MODEL_HELP)]
    pub model: PathBuf,
    /// An image file, or a folder searched recursively for .jpg, .jpeg, .png and .webp
    /// (repeatable). Images that cannot be read are skipped and listed in OUT's name +
    /// .skipped.csv beside it.
    #[arg(long = "image")]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub lists: Lists,
    /// A text to embed (repeatable).
    #[arg(long = "text")]
    pub texts: Vec<String>,
    /// The safetensors file to write (whole, at the end: a collection's embeddings are held in
    /// memory, 3 KB per image at ViT-L's width).
    #[arg(long)]
    pub out: PathBuf,
    /// Leave `pixel_values` out (1.35 MB per image at 336 px; needed only to check another
    /// implementation's outputs).
    #[arg(long)]
    pub no_pixels: bool,
    #[command(flatten)]
    pub rt: Runtime,
    /// Its `data.on_error` (skip, the default, or fail) decides what an unreadable image does.
    #[command(flatten)]
    pub config: ConfigArgs,
}

pub fn exec(args: Args) -> Result<()> {
    let clip = args.rt.load(&args.model)?;
    let Embedded { tensors, images } = run(&clip, &args)?;
    let listed = serde_json::to_string(&images)?;
    crate::formats::tensor_io::write_with_metadata(&args.out, &tensors, &[("images", listed)])?;
    let shapes: Vec<String> = tensors
        .iter()
        .map(|(n, t)| format!("{n} {:?}", t.size()))
        .collect();
    eprintln!("wrote {}: {}", args.out.display(), shapes.join(", "));
    Ok(())
}

/// What `run` makes.
pub struct Embedded {
    /// `pixel_values` (unless `--no-pixels`), `image_embeds` (unnormalised projections) for
    /// images; `input_ids`, `attention_mask`, `text_embeds` for texts; `logits_per_image` when
    /// both.
    pub tensors: Vec<(String, Tensor)>,
    /// The images embedded, in row order (the others were skipped).
    pub images: Vec<PathBuf>,
}

pub fn run(clip: &Pretrained, args: &Args) -> Result<Embedded> {
    let sources = args.lists.with(&args.images);
    if sources.is_empty() && args.texts.is_empty() {
        bail!("nothing to embed: give --image FILE|FOLDER, --files-from, --manifest and/or --text STR");
    }
    let encoder = Encoder::new(clip, args.rt.batch_size);
    let mut out = Vec::new();
    let (mut image_embeds, mut images) = (None, Vec::new());
    if !sources.is_empty() {
        let (mut pixels, mut features) = (Vec::new(), Vec::new());
        let mut skipped = Skipped::to_file(&skipped_beside(&args.out))?;
        let total = encoder.stream_pixels(
            sources.paths()?,
            None,
            args.config.resolve()?.data.on_error,
            &mut skipped,
            |kept, chunk| {
                images.extend_from_slice(kept);
                features.push(encoder.image_features(&chunk));
                if !args.no_pixels {
                    pixels.push(chunk);
                }
                Ok(())
            },
        )?;
        skipped.report(total)?;
        image_embeds = Some(Tensor::cat(&features, 0));
        if !args.no_pixels {
            out.push(("pixel_values".to_string(), Tensor::cat(&pixels, 0)));
        }
    }
    let mut text_embeds = None;
    if !args.texts.is_empty() {
        let (ids, mask, features) = encoder.text_features(&args.texts)?;
        out.push(("input_ids".to_string(), ids));
        out.push(("attention_mask".to_string(), mask));
        text_embeds = Some(features);
    }
    if let (Some(i), Some(t)) = (&image_embeds, &text_embeds) {
        let logits = tch::no_grad(|| clip.model.logits(i, t).logits_per_image);
        out.push(("logits_per_image".to_string(), logits));
    }
    out.extend(image_embeds.map(|t| ("image_embeds".to_string(), t)));
    out.extend(text_embeds.map(|t| ("text_embeds".to_string(), t)));
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Embedded {
        tensors: out,
        images,
    })
}
