//! `streetclip geolocate`: where photos were taken — country, (region,) city and
//! coordinates — printed, or written as files GIS tools and spreadsheets open
//! (`results_out`).

use super::args::MODEL_HELP;
use super::args::{at_least_one, ConfigArgs, Lists, OutArgs, Runtime, IMAGES_HELP, JSON_HELP};
use crate::config::Config;
use crate::data::collection::Paths;
use crate::encode::{Encoder, Skipped};
use crate::eval::geo_model::GeoModel;
use crate::eval::geolocate::Guess;
use crate::eval::ranking::Ranked;
use crate::formats::pretrained::Pretrained;
use crate::geo::Gazetteer;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// Guess where photos were taken: country, (region,) city and coordinates — zero-shot, or
/// by the export's fine-tuned country head or its geocells when it has them (said on
/// stderr; --zero-shot ignores them).
#[derive(clap::Args)]
#[command(
    after_help = "Example (after `make demo`):\n  streetclip geolocate --model runs/demo/export --countries FR,JP,BR --top-k 2 assets/demo/coffee.jpg"
)]
pub struct Args {
    #[arg(long, help = MODEL_HELP)]
    pub model: PathBuf,
    /// Ignore a fine-tuned classifier head the model carries (head.safetensors) and rank
    /// every candidate zero-shot, by caption similarity.
    #[arg(long)]
    pub zero_shot: bool,
    /// Its `geo` section (prompts, candidates, regions, top-k, refinement) and
    /// `data.on_error` for unreadable images are used.
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub out: OutArgs,
    /// Candidates listed per stage (geo.top_k).
    #[arg(long, value_parser = at_least_one::<usize>)]
    pub top_k: Option<usize>,
    /// Candidate countries, comma-separated names or ISO codes (geo.countries); default
    /// every gazetteer country. A geocell export ranks its own cells' countries instead.
    #[arg(long, value_name = "LIST")]
    pub countries: Option<String>,
    #[command(flatten)]
    pub rt: Runtime,
    #[arg(long, help = JSON_HELP)]
    pub json: bool,
    #[arg(help = IMAGES_HELP, required_unless_present_any = ["files_from", "manifest"])]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub lists: Lists,
}

pub fn exec(args: Args) -> Result<()> {
    let mut cfg = args.config.resolve()?;
    cfg.geo.top_k = args.top_k.unwrap_or(cfg.geo.top_k);
    if let Some(list) = &args.countries {
        cfg.geo.countries = Some(list.split(',').map(|c| c.trim().to_string()).collect());
    }
    let clip = args.rt.load(&args.model)?;
    let method = (
        args.model.as_path(),
        &clip,
        args.zero_shot,
        &cfg,
        args.rt.batch_size,
    );
    args.out.run(
        &args.lists.with(&args.images),
        |paths, skipped, on_batch| geolocate(method, paths, skipped, on_batch),
        |guesses| print_guesses(guesses, args.json),
    )
}

/// An image and the guess for it.
pub type Located = (PathBuf, Guess);

/// Guesses for the images of `paths` by the model in `model_dir` (by its geocells or its
/// country head when it has them, unless `zero_shot`), handed to `on_batch` a few batches at a
/// time as they are made. Images that cannot be read follow `data.on_error` (`skipped`).
/// Returns how many images came.
pub fn geolocate(
    (model_dir, clip, zero_shot, cfg, batch): (&Path, &Pretrained, bool, &Config, usize),
    paths: Paths,
    skipped: &mut Skipped,
    on_batch: &mut dyn FnMut(&[Located]) -> Result<()>,
) -> Result<usize> {
    let g = Gazetteer::bundled()?;
    let model = GeoModel::read(model_dir, clip, zero_shot, &cfg.geo)?;
    let encoder = model.text_encoder(clip, cfg.geo.cache)?;
    let locators = model.locators(encoder.as_ref(), g, &cfg.geo)?;
    let images = Encoder::new(clip, batch);
    images.stream(
        paths,
        None,
        cfg.data.on_error,
        skipped,
        |kept, embeddings| {
            let guesses = locators[0].1.locate(&embeddings)?;
            let rows: Vec<(PathBuf, Guess)> = kept.iter().cloned().zip(guesses).collect();
            on_batch(&rows)
        },
    )
}

/// Each image's guess: JSON (`image`, `guess`), or its place and coordinates with the top
/// candidates of each stage.
pub fn print_guesses(guesses: &[(PathBuf, Guess)], json: bool) -> Result<()> {
    if json {
        let rows: Vec<_> = guesses
            .iter()
            .map(|(p, g)| serde_json::json!({"image": p, "guess": g}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let top = |list: &[Ranked]| {
        list.iter()
            .map(|r| format!("{} {:.1}%", r.label, 100.0 * r.probability))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (path, g) in guesses {
        let place = [g.city.clone(), g.region.clone(), Some(g.country.clone())]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", ");
        println!("{}\t{place} ({:.4}, {:.4})", path.display(), g.lat, g.lon);
        if let Some(note) = &g.note {
            println!("  note:      {note}");
        }
        println!("  countries: {}", top(&g.top_countries));
        if !g.top_regions.is_empty() {
            println!("  regions:   {}", top(&g.top_regions));
        }
        if g.top_cells.is_empty() {
            println!("  cities:    {}", top(&g.top_cities));
        } else {
            println!("  cells:     {}", top(&g.top_cells));
        }
    }
    Ok(())
}
