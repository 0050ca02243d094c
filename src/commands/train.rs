//! `streetclip train`: joins the job, draws the synthetic data a config asks for (rank 0),
//! loads and splits the data, and runs the contrastive trainer.

use super::args::LaunchArgs;
use crate::config::Config;
use crate::data::Dataset;
use crate::geo::Gazetteer;
use crate::synth;
use crate::train::objective::Contrastive;
use crate::train::setup::{join_job, split};
use crate::train::summary::{RunOptions, Summary};
use crate::train::trainer::Run;
use anyhow::{Context, Result};
use std::path::Path;

/// Fine-tune CLIP on captioned images (resumes from RUN_DIR's newest checkpoint).
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  streetclip train --config configs/demo.yaml --out runs/demo\n  streetclip train --config configs/streetclip.yaml --nproc-per-node 8 --set train.micro_batch_size=16"
)]
pub struct Args {
    #[command(flatten)]
    pub launch: LaunchArgs,
}

/// Trains (or starts the workers that do) and prints the summary (rank 0).
pub fn exec(args: Args) -> Result<()> {
    let (cfg, out) = args.launch.resolve()?;
    if let Some(workers) = args.launch.launch_workers() {
        return workers;
    }
    let summary = run(&cfg, &cfg.to_yaml(), &out, &args.launch.options())?;
    if crate::dist::DistEnv::from_env()?.rank == 0 {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(())
}

/// Trains CLIP contrastively as `cfg` says into `out` (resuming from its newest checkpoint).
/// Under torchrun, SLURM or `--nproc-per-node`, this process is one rank of a data-parallel job:
/// the global batch is world × grad_accum_steps × micro_batch_size.
pub fn run(cfg: &Config, config_yaml: &str, out: &Path, options: &RunOptions) -> Result<Summary> {
    let (env, dist, device) = join_job(cfg)?;
    // Rank 0 first: it draws synthetic data when the config asks for it.
    if dist.is_main() {
        synth::draw_if_missing(&cfg.data, Gazetteer::bundled()?)?;
    } else {
        dist.barrier()
            .context("waiting for rank 0 to prepare the data")?;
    }
    let (data, report) = Dataset::load(&cfg.data, Gazetteer::bundled()?)?;
    if dist.is_main() {
        eprintln!("data: {}", report.summary());
        dist.barrier()?;
    }
    let (train_samples, val_samples) = split(&data.samples, cfg.train.val_fraction, cfg.train.seed);
    let run = Run {
        cfg,
        config_yaml,
        out,
        options,
        env: &env,
        dist: &dist,
        device,
    };
    let mut objective = Contrastive {
        accumulation: cfg.train.accumulation,
    };
    Ok(run.train(train_samples, val_samples, &mut objective)?.0)
}
