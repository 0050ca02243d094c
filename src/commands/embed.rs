//! `streetclip embed`: features for images and texts, written as safetensors with the tensor
//! names and meanings of transformers (`get_image_features`, `get_text_features`, ...).

use crate::encode::{check_files, Encoder};
use crate::pretrained::Pretrained;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use tch::Tensor;

pub struct EmbedArgs {
    pub images: Vec<PathBuf>,
    pub texts: Vec<String>,
    pub batch_size: usize,
}

/// Named tensors: `pixel_values`, `image_embeds` (unnormalised projections) for images;
/// `input_ids`, `attention_mask`, `text_embeds` for texts; `logits_per_image` when both.
pub fn run(clip: &Pretrained, args: &EmbedArgs) -> Result<Vec<(String, Tensor)>> {
    if args.images.is_empty() && args.texts.is_empty() {
        bail!("nothing to embed: give --image FILE and/or --text STR");
    }
    check_files(&args.images)?;
    let encoder = Encoder::new(clip, args.batch_size);
    let mut out = Vec::new();
    let mut image_embeds = None;
    if !args.images.is_empty() {
        let pixels = encoder.pixel_values(&args.images)?;
        image_embeds = Some(encoder.image_features(&pixels));
        out.push(("pixel_values".to_string(), pixels));
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
    Ok(out)
}

pub fn write(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    crate::tensor_io::write(path, tensors)
}
