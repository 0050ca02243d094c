//! `streetclip synth-data`: procedural street scenes for real cities (`synth`).

use super::args::at_least_one;
use crate::geo::Gazetteer;
use crate::synth::{generate, SynthArgs};
use anyhow::Result;
use std::path::PathBuf;

/// Draw a small dataset of procedural street scenes for real cities (demo and tests).
#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  streetclip synth-data --out /tmp/scenes --countries 4 --per-city 5"
)]
pub struct Args {
    /// The folder to write (images/ and manifest.csv).
    #[arg(long)]
    pub out: PathBuf,
    /// Countries drawn (the most populous ones with enough cities).
    #[arg(long, default_value_t = 8, value_parser = at_least_one::<usize>)]
    pub countries: usize,
    /// Cities per country (its most populous).
    #[arg(long, default_value_t = 3, value_parser = at_least_one::<usize>)]
    pub cities_per_country: usize,
    /// Scenes per city.
    #[arg(long, default_value_t = 12, value_parser = at_least_one::<usize>)]
    pub per_city: usize,
    /// Seed of the scenes' randomness (same seed, same images).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn exec(args: Args) -> Result<()> {
    let synth = SynthArgs {
        countries: args.countries,
        cities_per_country: args.cities_per_country,
        per_city: args.per_city,
        seed: args.seed,
        ..Default::default()
    };
    let n = generate(&args.out, &synth, Gazetteer::bundled()?)?;
    let manifest = args.out.join("manifest.csv");
    eprintln!("wrote {n} images and {}", manifest.display());
    Ok(())
}
