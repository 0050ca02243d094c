//! Image files to embeddings, batched, with a progress bar on a terminal: the one path from
//! files to vectors that predict, classify, geolocate, `eval` and `finetune` take (the loader's
//! batches, already decoded, go through `Pretrained::image_embeddings` the same way).

use crate::pretrained::Pretrained;
use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
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
        if !p.is_file() {
            bail!("image {} does not exist", p.display());
        }
    }
    Ok(())
}

/// L2-normalised image embeddings `[n, projection_dim]` (on the CPU) of image files, `batch`
/// at a time; the first unreadable file is an error naming it.
pub fn image_files(clip: &Pretrained, paths: &[PathBuf], batch: usize) -> Result<Tensor> {
    let bar = progress(paths.len(), "images");
    let mut out = Vec::new();
    for chunk in paths.chunks(batch.max(1)) {
        out.push(clip.embed_files(chunk)?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(match out.is_empty() {
        true => Tensor::zeros(
            [0, clip.model.config.projection_dim],
            (Kind::Float, Device::Cpu),
        ),
        false => Tensor::cat(&out, 0),
    })
}
