//! `streetclip captions`: the caption each sample would train on, without decoding images.

use super::args::{at_least_one, ConfigArgs, JSON_HELP};
use crate::config::Config;
use crate::data::dataset::DataReport;
use crate::data::Dataset;
use crate::geo::Gazetteer;
use crate::text::Captioner;
use anyhow::Result;
use serde::Serialize;
use std::path::PathBuf;

/// Print the caption each sample would train on (tab-separated: image, caption). Images are
/// not read.
#[derive(clap::Args)]
#[command(
    after_help = "Example (synthetic scenes first, so it runs anywhere):\n  streetclip synth-data --out /tmp/scenes --countries 4 --per-city 5\n  streetclip captions --manifest /tmp/scenes/manifest.csv --limit 3"
)]
pub struct Args {
    /// CSV or JSONL manifest (overrides data.manifest of the config).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// WebDataset shards, brace patterns allowed (overrides data.shards).
    #[arg(long)]
    pub shards: Option<String>,
    /// Its data and captions sections are used.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Caption only the first N samples.
    #[arg(long, value_parser = at_least_one::<usize>)]
    pub limit: Option<usize>,
    #[arg(long, help = JSON_HELP)]
    pub json: bool,
}

pub fn exec(args: Args) -> Result<()> {
    let mut cfg = args.config.resolve()?;
    if args.manifest.is_some() || args.shards.is_some() {
        cfg.data.manifest = args.manifest;
        cfg.data.shards = args.shards;
    }
    let (rows, report) = run(&cfg, args.limit)?;
    print(&rows, &report, args.json)
}

#[derive(Debug, Serialize)]
pub struct CaptionRow {
    pub image: String,
    pub caption: String,
    pub city: Option<String>,
    pub region: Option<String>,
    pub country: Option<String>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
}

/// Captions for the first `limit` samples (epoch 0), and the data report.
pub fn run(cfg: &Config, limit: Option<usize>) -> Result<(Vec<CaptionRow>, DataReport)> {
    let g = Gazetteer::bundled()?;
    crate::synth::draw_if_missing(&cfg.data, g)?;
    let (data, report) = Dataset::load(&cfg.data, g)?;
    let captioner = Captioner::new(&cfg.captions)?;
    let rows = data
        .samples
        .iter()
        .enumerate()
        .take(limit.unwrap_or(usize::MAX))
        .map(|(i, s)| {
            let caption = s
                .place
                .caption
                .clone()
                .or_else(|| captioner.caption(&s.place.names, 0, i as u64))
                .unwrap_or_default();
            CaptionRow {
                image: s.image.to_string(),
                caption,
                city: s.place.names.city.clone(),
                region: s.place.names.region.clone(),
                country: s.place.names.country.clone(),
                lat: s.place.lat,
                lon: s.place.lon,
            }
        })
        .collect();
    Ok((rows, report))
}

/// The rows (tab-separated image and caption, or JSON) on stdout; how many were captioned of
/// how many, and the data report, on stderr.
pub fn print(rows: &[CaptionRow], report: &DataReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
    } else {
        for r in rows {
            println!("{}\t{}", r.image, r.caption);
        }
    }
    eprintln!(
        "{} of {} samples captioned; {}",
        rows.len(),
        report.kept,
        report.summary()
    );
    Ok(())
}
