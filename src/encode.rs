//! Images and texts to CLIP embeddings: the one path from files, decoded images, pixels and
//! captions to vectors that predict, embed, classify, geolocate, `eval`, validation and
//! `finetune` take. Batched, on the model's device, results on the CPU.

use crate::data::OnError;
use crate::model::normalize;
use crate::pretrained::Pretrained;
use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::io::IsTerminal;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

/// A progress bar on a terminal for long inputs; hidden otherwise.
pub fn progress(total: usize, what: &str) -> ProgressBar {
    if total <= 1 || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    let style = ProgressStyle::with_template(&format!(
        "{{bar:40}} {{pos}}/{{len}} {what} [{{elapsed}}<{{eta}}, {{per_sec}}]"
    ))
    .expect("valid progress template");
    bar.set_style(style);
    bar
}

/// What `Encoder::files_or_skip` made of a list of image files.
pub struct Embedded {
    /// L2-normalised embeddings `[kept, d]` of the files that could be read, in input order.
    pub embeddings: Tensor,
    /// The input index of each row of `embeddings`.
    pub kept: Vec<usize>,
    /// Why each file left out was (its message names it).
    pub skipped: Vec<String>,
}

/// `result` as `Some` when it is usable; a failure is pushed to `skipped` (`OnError::Skip`) or is
/// the error (`Fail`). The one decision every pass over images takes per image.
pub fn keep_or_skip<T>(
    result: Result<T>,
    on_error: OnError,
    skipped: &mut Vec<String>,
) -> Result<Option<T>> {
    match (result, on_error) {
        (Ok(t), _) => Ok(Some(t)),
        (Err(e), OnError::Skip) => {
            skipped.push(format!("{e:#}"));
            Ok(None)
        }
        (Err(e), OnError::Fail) => Err(e),
    }
}

/// Says on stderr how many of `total` inputs were left out and why, naming the first few; an
/// error (`NothingUsable`, its own exit status) when that was every one.
pub fn report_skipped(reasons: &[String], total: usize) -> Result<()> {
    const NAMED: usize = 5;
    if reasons.is_empty() {
        return Ok(());
    }
    if reasons.len() == total {
        let first = reasons.iter().take(NAMED).cloned().collect();
        return Err(NothingUsable { total, first }.into());
    }
    eprintln!(
        "skipped {} of {total} images (data.on_error: skip; `fail` stops at the first):",
        reasons.len()
    );
    for why in reasons.iter().take(NAMED) {
        eprintln!("  {why}");
    }
    if reasons.len() > NAMED {
        eprintln!("  ... and {} more", reasons.len() - NAMED);
    }
    Ok(())
}

/// No input could be used: nothing was produced. Its exit status (3) tells a script this apart
/// from a usage or model error (1).
#[derive(Debug, thiserror::Error)]
#[error("no image could be used ({total} given): {}", first.join("; "))]
pub struct NothingUsable {
    pub total: usize,
    pub first: Vec<String>,
}

impl NothingUsable {
    pub const EXIT_CODE: i32 = 3;
}

/// Files that must exist, checked before any work starts so a typo fails fast.
pub fn check_files(paths: &[PathBuf]) -> Result<()> {
    for p in paths {
        if p.is_dir() {
            bail!(
                "{} is a directory, not an image file: give the image files (e.g. {}/*.jpg)",
                p.display(),
                p.display()
            );
        }
        if let Some(why) = crate::data::not_a_file(p) {
            bail!("image {} {why}", p.display());
        }
    }
    Ok(())
}

/// Texts a model encodes at once when it serves as a [`TextEncoder`] (prompt lists).
const TEXT_BATCH: usize = 256;

/// Normalised text embeddings for prompts: the model, a cache in front of it, or a stand-in in
/// tests.
pub trait TextEncoder {
    /// `[n, d]`, each row L2-normalised.
    fn encode(&self, texts: &[String]) -> Result<Tensor>;
    /// The softmax temperature (CLIP's `logit_scale.exp()`).
    fn scale(&self) -> f64;
    /// `d`, the width of every embedding `encode` returns.
    fn dim(&self) -> i64;
}

impl TextEncoder for Pretrained {
    fn encode(&self, texts: &[String]) -> Result<Tensor> {
        Encoder::new(self, TEXT_BATCH).texts(texts)
    }
    fn scale(&self) -> f64 {
        self.model.logit_scale().exp().double_value(&[])
    }
    fn dim(&self) -> i64 {
        self.model.config.projection_dim
    }
}

/// A model's towers as functions from inputs to embeddings, `batch` inputs at a time.
#[derive(Clone, Copy)]
pub struct Encoder<'a> {
    pub clip: &'a Pretrained,
    batch: usize,
}

impl<'a> Encoder<'a> {
    pub fn new(clip: &'a Pretrained, batch: usize) -> Self {
        Self {
            clip,
            batch: batch.max(1),
        }
    }

    /// Preprocessed images `[n, 3, H, W]` (CPU) of image files, decoded in parallel; the first
    /// unreadable file is an error naming it.
    pub fn pixel_values(&self, paths: &[PathBuf]) -> Result<Tensor> {
        // Only the preprocessing config crosses threads (tch tensors are not Sync).
        let pre = &self.clip.preprocess;
        let planes = paths
            .par_iter()
            .map(|p| pre.load(p))
            .collect::<Result<Vec<_>>>()?;
        Ok(self.stack(planes))
    }

    /// Preprocessed decoded images `[n, 3, H, W]` (CPU), in parallel.
    pub fn pixels_of(&self, images: Vec<image::RgbImage>) -> Result<Tensor> {
        let pre = &self.clip.preprocess;
        let planes = images
            .into_par_iter()
            .map(|i| pre.apply(&i))
            .collect::<Result<Vec<_>>>()?;
        Ok(self.stack(planes))
    }

    fn stack(&self, planes: Vec<Vec<f32>>) -> Tensor {
        let (h, w) = self.clip.preprocess.output_size();
        let n = planes.len() as i64;
        Tensor::from_slice(&planes.concat()).view([n, 3, h as i64, w as i64])
    }

    /// The image tower's projections (transformers' `get_image_features`, not normalised) of
    /// pixels `[n, 3, H, W]`, `batch` at a time.
    pub fn image_features(&self, pixels: &Tensor) -> Tensor {
        let device = self.clip.device();
        let parts: Vec<Tensor> = pixels
            .split(self.batch as i64, 0)
            .iter()
            .map(|p| tch::no_grad(|| self.clip.model.image_features(&p.to(device))))
            .map(|f| f.to(Device::Cpu))
            .collect();
        self.cat(parts)
    }

    /// L2-normalised image embeddings `[n, d]` of pixels; damaged (NaN/inf) weights are an
    /// error, not silent NaN scores downstream.
    pub fn pixel_embeddings(&self, pixels: &Tensor) -> Result<Tensor> {
        let embeds = normalize(&self.image_features(pixels));
        if !bool::try_from(embeds.isfinite().all())? {
            bail!("the model gives non-finite image embeddings (NaN or infinity): its weights are damaged; re-export or re-download it");
        }
        Ok(embeds)
    }

    /// L2-normalised image embeddings `[n, d]` of decoded images.
    pub fn images(&self, images: Vec<image::RgbImage>) -> Result<Tensor> {
        self.pixel_embeddings(&self.pixels_of(images)?)
    }

    /// L2-normalised image embeddings `[n, d]` of image files, `batch` decoded at a time (a
    /// progress bar on a terminal); the first unreadable file is an error naming it.
    pub fn files(&self, paths: &[PathBuf]) -> Result<Tensor> {
        Ok(self.files_or_skip(paths, OnError::Fail)?.embeddings)
    }

    /// L2-normalised image embeddings of the files that can be read, `batch` decoded at a time
    /// by the route the loader takes (`PreprocessConfig::load`); a file that is missing, not a
    /// file or undecodable is left out and listed (`OnError::Skip`), or is an error naming it
    /// (`Fail`).
    pub fn files_or_skip(&self, paths: &[PathBuf], on_error: OnError) -> Result<Embedded> {
        let bar = progress(paths.len(), "images");
        let pre = &self.clip.preprocess;
        let (mut parts, mut kept, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
        for (c, chunk) in paths.chunks(self.batch).enumerate() {
            let loaded: Vec<Result<Vec<f32>>> = chunk
                .par_iter()
                .map(|p| match crate::data::not_a_file(p) {
                    Some(why) => Err(anyhow::anyhow!("image {} {why}", p.display())),
                    None => pre.load(p),
                })
                .collect();
            let mut planes = Vec::new();
            for (i, result) in loaded.into_iter().enumerate() {
                if let Some(p) = keep_or_skip(result, on_error, &mut skipped)? {
                    planes.push(p);
                    kept.push(c * self.batch + i);
                }
            }
            if !planes.is_empty() {
                parts.push(self.pixel_embeddings(&self.stack(planes))?);
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        Ok(Embedded {
            embeddings: self.cat(parts),
            kept,
            skipped,
        })
    }

    /// `(input_ids, attention_mask)` and the text tower's projections (transformers'
    /// `get_text_features`, not normalised) of `texts`, `batch` at a time (CPU).
    pub fn text_features(&self, texts: &[String]) -> Result<(Tensor, Tensor, Tensor)> {
        if texts.is_empty() {
            let none = Tensor::zeros([0, 0], (Kind::Int64, Device::Cpu));
            return Ok((none.shallow_clone(), none, self.cat(vec![])));
        }
        let (ids, mask) = self.clip.tokenize(texts)?;
        let device = self.clip.device();
        let parts: Vec<Tensor> = ids
            .split(self.batch as i64, 0)
            .iter()
            .zip(mask.split(self.batch as i64, 0))
            .map(|(i, m)| {
                tch::no_grad(|| {
                    self.clip
                        .model
                        .text_features(&i.to(device), Some(&m.to(device)))
                })
                .to(Device::Cpu)
            })
            .collect();
        let features = self.cat(parts);
        Ok((ids, mask, features))
    }

    /// L2-normalised text embeddings `[n, d]` of `texts`.
    pub fn texts(&self, texts: &[String]) -> Result<Tensor> {
        Ok(normalize(&self.text_features(texts)?.2))
    }

    /// The rows of `parts` as one tensor; `[0, d]` when there are none.
    fn cat(&self, parts: Vec<Tensor>) -> Tensor {
        match parts.is_empty() {
            true => Tensor::zeros(
                [0, self.clip.model.config.projection_dim],
                (Kind::Float, Device::Cpu),
            ),
            false => Tensor::cat(&parts, 0),
        }
    }
}
