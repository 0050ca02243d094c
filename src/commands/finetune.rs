//! `streetclip finetune`: the configured methods on one split, compared in `comparison.md`.

use super::args::LaunchArgs;
use crate::config::Method;
use anyhow::{bail, Result};

/// Fine-tune for a classification task (zero_shot, linear_probe, contrastive, classifier)
/// and compare the methods on the same test split, or for geolocation by geocells (the only
/// method that trains data-parallel with --nproc-per-node).
#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  streetclip finetune --config configs/finetune/demo-country.yaml --out runs/finetune-demo"
)]
pub struct Args {
    #[command(flatten)]
    pub launch: LaunchArgs,
}

/// Runs the methods (or starts the workers that do) and prints the comparison (rank 0).
pub fn exec(args: Args) -> Result<()> {
    let (cfg, out) = args.launch.resolve()?;
    if args.launch.nproc_per_node.is_some() && cfg.finetune.method != [Method::Geocells] {
        bail!("--nproc-per-node: only finetune.method geocells trains data-parallel; the classification methods run as one process");
    }
    if let Some(workers) = args.launch.launch_workers() {
        return workers;
    }
    crate::finetune::run(&cfg, &cfg.to_yaml(), &out, &args.launch.options())?;
    if crate::dist::DistEnv::from_env()?.rank == 0 {
        print!("{}", std::fs::read_to_string(out.join("comparison.md"))?);
    }
    Ok(())
}
