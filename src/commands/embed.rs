//! `streetclip embed`: features for images and texts, written as safetensors with the tensor
//! names and meanings of transformers (`get_image_features`, `get_text_features`, ...).

use crate::encode::{check_files, progress};
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
    let device = clip.device();
    let batch = args.batch_size.max(1);
    let mut out = Vec::new();
    let mut image_embeds = None;
    if !args.images.is_empty() {
        let bar = progress(args.images.len(), "images");
        let (mut pixels, mut embeds) = (Vec::new(), Vec::new());
        for chunk in args.images.chunks(batch) {
            let p = clip.pixel_values(chunk)?;
            embeds.push(
                tch::no_grad(|| clip.model.image_features(&p.to(device))).to(tch::Device::Cpu),
            );
            pixels.push(p);
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        out.push(("pixel_values".to_string(), Tensor::cat(&pixels, 0)));
        image_embeds = Some(Tensor::cat(&embeds, 0));
    }
    let mut text_embeds = None;
    if !args.texts.is_empty() {
        let (ids, mask) = clip.tokenize(&args.texts)?;
        let embeds: Vec<Tensor> = (0..args.texts.len() as i64)
            .step_by(batch)
            .map(|start| {
                let len = (batch as i64).min(args.texts.len() as i64 - start);
                let (i, m) = (
                    ids.narrow(0, start, len).to(device),
                    mask.narrow(0, start, len).to(device),
                );
                tch::no_grad(|| clip.model.text_features(&i, Some(&m))).to(tch::Device::Cpu)
            })
            .collect();
        out.push(("input_ids".to_string(), ids));
        out.push(("attention_mask".to_string(), mask));
        text_embeds = Some(Tensor::cat(&embeds, 0));
    }
    if let (Some(i), Some(t)) = (&image_embeds, &text_embeds) {
        let logits = tch::no_grad(|| {
            clip.model
                .logits(&i.to(device), &t.to(device))
                .logits_per_image
        });
        out.push(("logits_per_image".to_string(), logits.to(tch::Device::Cpu)));
    }
    out.extend(image_embeds.map(|t| ("image_embeds".to_string(), t)));
    out.extend(text_embeds.map(|t| ("text_embeds".to_string(), t)));
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

pub fn write(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    crate::tensor_io::write(path, tensors)
}
