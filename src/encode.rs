//! Images and texts to CLIP embeddings: the one path from files, decoded images, pixels and
//! captions to vectors that predict, embed, classify, geolocate, `eval`, validation and
//! `finetune` take. Batched, on the model's device, results on the CPU.

use crate::data::OnError;
use crate::formats::pretrained::Pretrained;
use crate::model::normalize;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
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

/// A counter with its rate on a terminal for a stream of unknown length; hidden otherwise.
pub fn progress_open(what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(&format!(
        "{{spinner}} {{pos}} {what} [{{elapsed}}, {{per_sec}}]"
    ))
    .expect("valid progress template");
    ProgressBar::new_spinner().with_style(style)
}

/// Inputs left out (`data.on_error: skip`): counted, the first few kept to name on stderr, each
/// one appended to a `skipped.csv` (path, reason) as it happens when there is one, and kept in
/// memory only for a report that lists them.
#[derive(Default)]
pub struct Skipped {
    count: usize,
    first: Vec<String>,
    file: Option<(PathBuf, csv::Writer<std::fs::File>)>,
    rows: Option<Vec<(String, String)>>,
}

/// Reasons named on stderr; the rest are counted (and listed in `skipped.csv`).
const NAMED: usize = 5;

impl Skipped {
    /// Every one appended to `path` (created anew with its header: a rerun's list is its own).
    pub fn to_file(path: &Path) -> Result<Self> {
        let mut w = csv::Writer::from_path(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        w.write_record(["path", "reason"])?;
        w.flush()?;
        let file = Some((path.to_path_buf(), w));
        Ok(Self {
            file,
            ..Self::default()
        })
    }

    /// Every one kept in memory (`rows`), for a report written at the end.
    pub fn keeping_rows() -> Self {
        Self {
            rows: Some(Vec::new()),
            ..Self::default()
        }
    }

    pub fn add(&mut self, path: &str, why: &anyhow::Error) -> Result<()> {
        let why = format!("{why:#}");
        self.count += 1;
        if self.first.len() < NAMED {
            self.first.push(why.clone());
        }
        if let Some((name, w)) = &mut self.file {
            w.write_record([path, why.as_str()])
                .and_then(|_| Ok(w.flush()?))
                .with_context(|| format!("cannot write {}", name.display()))?;
        }
        if let Some(rows) = &mut self.rows {
            rows.push((path.to_string(), why));
        }
        Ok(())
    }

    /// `(path, reason)` of each, when made by `keeping_rows`.
    pub fn rows(&self) -> &[(String, String)] {
        self.rows.as_deref().unwrap_or_default()
    }

    /// Says on stderr how many of `total` inputs were left out and why, naming the first few
    /// and the file listing them all; an error (`NothingUsable`, its own exit status) when that
    /// was every one, or when there was no input at all.
    pub fn report(&self, total: usize) -> Result<()> {
        if self.count == total {
            let first = self.first.clone();
            return Err(NothingUsable { total, first }.into());
        }
        if self.count == 0 {
            return Ok(());
        }
        eprintln!(
            "skipped {} of {total} images (data.on_error: skip; `fail` stops at the first){}:",
            self.count,
            match &self.file {
                Some((path, _)) => format!(", all listed in {}", path.display()),
                None => String::new(),
            }
        );
        for why in &self.first {
            eprintln!("  {why}");
        }
        if self.count > NAMED {
            eprintln!("  ... and {} more", self.count - NAMED);
        }
        Ok(())
    }
}

/// Writes `rows` (path, reason) as a whole `skipped.csv` (a report's; atomic).
pub fn write_skipped(path: &Path, rows: &[(String, String)]) -> Result<()> {
    let mut csv = csv::Writer::from_writer(vec![]);
    csv.write_record(["path", "reason"])?;
    for (image, why) in rows {
        csv.write_record([image, why])?;
    }
    crate::formats::tensor_io::write_atomic(path, &csv.into_inner()?)
}

/// The `skipped.csv` of an output file: `NAME.skipped.csv` beside it.
pub fn skipped_beside(out: &Path) -> PathBuf {
    let stem = out.file_stem().unwrap_or_default().to_string_lossy();
    out.with_file_name(format!("{stem}.skipped.csv"))
}

/// `result` as `Some` when it is usable; a failure goes to `skipped` under `path` (`OnError::Skip`)
/// or is the error (`Fail`). The one decision every pass over images takes per image.
pub fn keep_or_skip<T>(
    result: Result<T>,
    path: &str,
    on_error: OnError,
    skipped: &mut Skipped,
) -> Result<Option<T>> {
    match (result, on_error) {
        (Ok(t), _) => Ok(Some(t)),
        (Err(e), OnError::Skip) => {
            skipped.add(path, &e)?;
            Ok(None)
        }
        (Err(e), OnError::Fail) => Err(e),
    }
}

/// No input could be used: nothing was produced. Its exit status (3) tells a script this apart
/// from a usage or model error (1).
#[derive(Debug, thiserror::Error)]
#[error("{}", match total {
    0 => "no image given (folders are searched for .jpg, .jpeg, .png and .webp files)".to_string(),
    _ => format!("no image could be used ({total} given): {}", first.join("; ")),
})]
pub struct NothingUsable {
    pub total: usize,
    pub first: Vec<String>,
}

impl NothingUsable {
    pub const EXIT_CODE: i32 = 3;
}

/// Batches decoded between two hand-overs to the caller (an output file's write).
const BATCHES_PER_CHUNK: usize = 4;

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

    /// L2-normalised image embeddings `[n, d]` of preprocessed images (`PreprocessConfig`'s
    /// CHW planes).
    pub fn planes(&self, planes: Vec<Vec<f32>>) -> Result<Tensor> {
        self.pixel_embeddings(&self.stack(planes))
    }

    /// L2-normalised image embeddings `[n, d]` of image files, `batch` decoded at a time (a
    /// progress bar on a terminal); the first unreadable file is an error naming it.
    pub fn files(&self, paths: &[PathBuf]) -> Result<Tensor> {
        let mut parts = Vec::new();
        let all = paths.iter().cloned().map(Ok);
        self.stream(
            all,
            Some(paths.len()),
            OnError::Fail,
            &mut Skipped::default(),
            |_, e| {
                parts.push(e);
                Ok(())
            },
        )?;
        Ok(self.cat(parts))
    }

    /// L2-normalised image embeddings of a stream of image files, handed to `on_chunk` with
    /// their paths a few batches at a time (see `stream_pixels`).
    pub fn stream(
        &self,
        paths: impl Iterator<Item = Result<PathBuf>>,
        total: Option<usize>,
        on_error: OnError,
        skipped: &mut Skipped,
        mut on_chunk: impl FnMut(&[PathBuf], Tensor) -> Result<()>,
    ) -> Result<usize> {
        self.stream_pixels(paths, total, on_error, skipped, |kept, pixels| {
            on_chunk(kept, self.pixel_embeddings(&pixels)?)
        })
    }

    /// Preprocessed images `[k, 3, H, W]` of a stream of image files, read as they come and
    /// `batch` decoded at a time in parallel by the route the loader takes
    /// (`PreprocessConfig::load`), handed to `on_chunk` with their paths every
    /// `BATCHES_PER_CHUNK` batches. A file that is missing, not a file or undecodable goes to
    /// `skipped` (`OnError::Skip`) or is an error naming it (`Fail`). A progress bar with
    /// images/s on a terminal (`total` when known). Returns how many paths came.
    pub fn stream_pixels(
        &self,
        mut paths: impl Iterator<Item = Result<PathBuf>>,
        total: Option<usize>,
        on_error: OnError,
        skipped: &mut Skipped,
        mut on_chunk: impl FnMut(&[PathBuf], Tensor) -> Result<()>,
    ) -> Result<usize> {
        let bar = match total {
            Some(n) => progress(n, "images"),
            None => progress_open("images"),
        };
        let pre = &self.clip.preprocess;
        let mut seen = 0;
        loop {
            let chunk = paths
                .by_ref()
                .take(self.batch * BATCHES_PER_CHUNK)
                .collect::<Result<Vec<PathBuf>>>()?;
            if chunk.is_empty() {
                break;
            }
            seen += chunk.len();
            let loaded: Vec<Result<Vec<f32>>> = chunk
                .par_iter()
                .map(|p| match crate::data::not_a_file(p) {
                    Some(why) => Err(anyhow::anyhow!("image {} {why}", p.display())),
                    None => pre.load(p),
                })
                .collect();
            let (mut kept, mut planes) = (Vec::new(), Vec::new());
            for (path, result) in chunk.into_iter().zip(loaded) {
                let name = path.display().to_string();
                if let Some(plane) = keep_or_skip(result, &name, on_error, skipped)? {
                    kept.push(path);
                    planes.push(plane);
                }
            }
            if !kept.is_empty() {
                on_chunk(&kept, self.stack(planes))?;
            }
            bar.set_position(seen as u64);
        }
        bar.finish_and_clear();
        Ok(seen)
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
