//! Downstream fine-tuning (`streetclip finetune`). For a classification task — labelled images
//! in an ImageFolder tree or a manifest, class names turned into captions — one or several
//! methods run on the same split into `RUN_DIR/<method>/` and are compared in
//! `RUN_DIR/comparison.md`: `zero_shot`, `linear_probe`, `contrastive` (FLYP: the main trainer
//! on class captions), `classifier` (a head initialised from the class captions,
//! cross-entropy), the trained ones with WiSE-FT mixes (`wise`). Geolocation is its own path:
//! `geocells`, a head over geocells with retrieval refinement.

mod classifier;
pub mod compare;
mod contrastive;
pub mod geocells;
pub mod head;
mod linear_probe;
pub mod logistic;
pub mod split;
mod task;
pub mod wise;
mod zero_shot;

use crate::config::{Config, Method};
use crate::formats::tensor_io::write_atomic;
use crate::train::setup::join_job;
use crate::train::summary::RunOptions;
use anyhow::{bail, Context, Result};
use std::path::Path;
use task::Task;

/// Runs `cfg`'s fine-tuning into `out`: the geocell method alone (every rank of a data-parallel
/// job), or the classification methods in turn and their comparison.
pub fn run(cfg: &Config, config_yaml: &str, out: &Path, options: &RunOptions) -> Result<()> {
    let methods = &cfg.finetune.method;
    if methods.is_empty() {
        bail!("finetune.method lists no method: choose from zero_shot, linear_probe, contrastive, classifier, geocells");
    }
    if methods.contains(&Method::Geocells) && methods.len() > 1 {
        bail!("finetune.method: geocells geolocates rather than classifies, so it is not compared with the classification methods; run it alone (method: geocells) and compare it with zero-shot models by `streetclip eval geo`");
    }
    let (env, dist, device) = join_job(cfg)?;
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create run directory {}", out.display()))?;
    if methods == &[Method::Geocells] {
        return geocells::run(cfg, config_yaml, out, options, (&env, &dist, device));
    }
    if dist.world_size > 1 {
        bail!("the classification methods run as one process (this is rank {} of {}): launch them without torchrun/--nproc-per-node", env.rank, env.world_size);
    }
    let splits = split::load(&cfg.finetune, cfg.train.seed)?;
    let sizes = splits.sizes();
    write_atomic(&out.join("split.json"), &serde_json::to_vec_pretty(&sizes)?)?;
    splits.write_csv(&out.join("split.csv"))?;
    eprintln!(
        "finetune: {} classes; {} train, {} val, {} test images",
        sizes.classes, sizes.train, sizes.val, sizes.test
    );
    let task = Task {
        cfg,
        config_yaml,
        options,
        splits,
        device,
        env,
        dist,
    };
    for &method in methods {
        let dir = out.join(method.name());
        eprintln!("finetune: {}", method.name());
        let result = match method {
            Method::ZeroShot => zero_shot::run(&task, &dir)?,
            Method::LinearProbe => linear_probe::run(&task, &dir)?,
            Method::Contrastive => contrastive::run(&task, &dir)?,
            Method::Classifier => classifier::run(&task, &dir)?,
            Method::Geocells => bail!("geocells runs alone"),
        };
        compare::write_method(&task, &dir, result)?;
    }
    compare::write_comparison(out)
}
