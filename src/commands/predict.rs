//! `streetclip predict`: rank labels for each image by CLIP's zero-shot probability.

use crate::encode::{check_files, progress};
use crate::pretrained::Pretrained;
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::PathBuf;
use tch::{Kind, Tensor};

pub struct PredictArgs {
    pub labels: Vec<String>,
    /// `{}` is replaced by each label.
    pub template: String,
    pub images: Vec<PathBuf>,
    pub batch_size: usize,
    pub top_k: usize,
}

#[derive(Debug, Serialize)]
pub struct Ranked {
    pub label: String,
    pub probability: f64,
}

#[derive(Debug, Serialize)]
pub struct Prediction {
    pub image: PathBuf,
    pub ranking: Vec<Ranked>,
}

/// Labels split on commas, trimmed, empty entries refused.
pub fn parse_labels(list: &str) -> Result<Vec<String>> {
    let labels: Vec<String> = list.split(',').map(|l| l.trim().to_string()).collect();
    if labels.iter().all(|l| l.is_empty()) {
        bail!(
            "--labels is empty: give comma-separated labels, e.g. --labels \"San Jose,San Diego\""
        );
    }
    if let Some(i) = labels.iter().position(|l| l.is_empty()) {
        bail!(
            "--labels has an empty label at position {} (two commas in a row?)",
            i + 1
        );
    }
    Ok(labels)
}

pub fn run(clip: &Pretrained, args: &PredictArgs) -> Result<Vec<Prediction>> {
    if args.labels.is_empty() {
        bail!("no labels to rank");
    }
    if !args.template.contains("{}") {
        bail!(
            "--template `{}` has no `{{}}` where the label goes",
            args.template
        );
    }
    check_files(&args.images)?;
    let prompts: Vec<String> = args
        .labels
        .iter()
        .map(|l| args.template.replace("{}", l))
        .collect();
    let device = clip.device();
    let (ids, mask) = clip.tokenize(&prompts)?;
    let text = tch::no_grad(|| {
        clip.model
            .text_features(&ids.to(device), Some(&mask.to(device)))
    });
    let bar = progress(args.images.len(), "images");
    let mut out = Vec::with_capacity(args.images.len());
    for chunk in args.images.chunks(args.batch_size.max(1)) {
        let pixels = clip.pixel_values(chunk)?.to(device);
        let probs: Tensor = tch::no_grad(|| {
            let image = clip.model.image_features(&pixels);
            clip.model
                .logits(&image, &text)
                .logits_per_image
                .softmax(-1, Kind::Float)
        });
        let probs = probs.to(tch::Device::Cpu);
        if !bool::try_from(probs.isfinite().all())? {
            bail!("the model gives non-finite scores (NaN or infinity) for {}: its weights are damaged; re-export or re-download it", chunk[0].display());
        }
        for (row, image) in chunk.iter().enumerate() {
            let p: Vec<f64> = Vec::<f32>::try_from(probs.get(row as i64))?
                .into_iter()
                .map(f64::from)
                .collect();
            let mut order: Vec<usize> = (0..p.len()).collect();
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
            let ranking = order
                .into_iter()
                .take(args.top_k)
                .map(|i| Ranked {
                    label: args.labels[i].clone(),
                    probability: p[i],
                })
                .collect();
            out.push(Prediction {
                image: image.clone(),
                ranking,
            });
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// The rankings as one JSON document (probabilities as fractions), or per image its path and a
/// `  47.29%  label` line per label.
pub fn print(predictions: &[Prediction], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(predictions)?);
        return Ok(());
    }
    for p in predictions {
        println!("{}", p.image.display());
        for r in &p.ranking {
            println!("  {:>6.2}%  {}", 100.0 * r.probability, r.label);
        }
    }
    Ok(())
}
