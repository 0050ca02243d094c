//! `streetclip predict`: rank labels for each image by CLIP's zero-shot probability, or by the
//! classifier head a `finetune` export carries.

use super::args::{at_least_one, ConfigArgs, Lists, OutArgs, Runtime, IMAGES_HELP};
use super::args::{JSON_HELP, MODEL_HELP};
use super::results_out::{candidates, Row};
use crate::data::collection::Paths;
use crate::data::OnError;
use crate::encode::{Encoder, Skipped};
use crate::eval::ranker::{Ranker, DEFAULT_TEMPLATE};
use crate::eval::ranking::Ranked;
use crate::formats::pretrained::Pretrained;
use anyhow::Result;
use serde::Serialize;
use std::path::PathBuf;

/// Rank labels for each image by zero-shot probability, or, for a `finetune` export, its
/// classes by its classifier head.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  streetclip predict --model runs/demo/export --labels \"Japan,Germany,Brazil\" --top-k 2 photo.jpg\n  streetclip predict --model runs/finetune-demo/classifier/export photo.jpg"
)]
pub struct Args {
    #[arg(long, help = MODEL_HELP)]
    pub model: PathBuf,
    /// Comma-separated labels, e.g. "San Jose,San Diego,Los Angeles" (not for a model
    /// carrying a fine-tuned classifier, which ranks its own classes, unless --zero-shot).
    #[arg(long)]
    pub labels: Option<String>,
    /// Rank --labels by caption similarity even when the model carries a fine-tuned
    /// classifier head (head.safetensors).
    #[arg(long)]
    pub zero_shot: bool,
    /// Caption template; `{}` is replaced by each label.
    #[arg(long, default_value = DEFAULT_TEMPLATE)]
    pub template: String,
    /// How many labels to show per image.
    #[arg(long, default_value_t = 5, value_parser = at_least_one::<usize>)]
    pub top_k: usize,
    #[command(flatten)]
    pub rt: Runtime,
    /// Its `data.on_error` (skip, the default, or fail) decides what an unreadable image does.
    #[command(flatten)]
    pub config: ConfigArgs,
    #[arg(long, help = JSON_HELP)]
    pub json: bool,
    #[command(flatten)]
    pub out: OutArgs,
    #[arg(help = IMAGES_HELP, required_unless_present_any = ["files_from", "manifest"])]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub lists: Lists,
}

pub fn exec(args: Args) -> Result<()> {
    let on_error = args.config.resolve()?.data.on_error;
    let clip = args.rt.load(&args.model)?;
    let ranker =
        match Ranker::head_or_labels(&args.model, &clip, args.labels.as_deref(), args.zero_shot)? {
            Ok(head) => Ranker::Head(head),
            Err(labels) => {
                let encoder = Encoder::new(&clip, args.rt.batch_size);
                Ranker::labels(&encoder, labels, &args.template)?
            }
        };
    args.out.run(
        &args.lists.with(&args.images),
        |paths, skipped, on_batch| run((&clip, &ranker, &args, on_error), paths, skipped, on_batch),
        |rows| print(rows, args.json),
    )
}

#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub image: PathBuf,
    pub ranking: Vec<Ranked>,
}

/// Rankings of the images of `paths` that can be read, handed to `on_batch` a few batches at a
/// time; the others go to `skipped` (or stop the run, `on_error: fail`). Returns how many
/// images came.
pub fn run(
    (clip, ranker, args, on_error): (&Pretrained, &Ranker, &Args, OnError),
    paths: Paths,
    skipped: &mut Skipped,
    on_batch: &mut dyn FnMut(&[Prediction]) -> Result<()>,
) -> Result<usize> {
    let encoder = Encoder::new(clip, args.rt.batch_size);
    encoder.stream(paths, None, on_error, skipped, |kept, images| {
        let rankings = ranker.rank(clip, &images, args.top_k)?;
        let rows: Vec<Prediction> = kept
            .iter()
            .zip(rankings)
            .map(|(image, ranking)| Prediction {
                image: image.clone(),
                ranking,
            })
            .collect();
        on_batch(&rows)
    })
}

/// A ranking: the best label and its probability, then the list (`label fraction; ...`).
impl Row for Prediction {
    const POINTS: bool = false;
    const COLUMNS: &'static [&'static str] = &["image", "label", "probability", "ranking"];

    fn json(&self) -> serde_json::Value {
        serde_json::json!(self)
    }

    fn csv_row(&self) -> Vec<String> {
        let best = self.ranking.first();
        vec![
            self.image.display().to_string(),
            best.map(|r| r.label.clone()).unwrap_or_default(),
            best.map(|r| r.probability.to_string()).unwrap_or_default(),
            candidates(&self.ranking),
        ]
    }

    fn point(&self) -> Option<[f64; 2]> {
        None
    }
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
