//! Flags several commands share — where the model runs, a config with overrides, a training
//! run's launcher — and the range checks of the numbers that become sizes.

use super::results_out::{Format, ResultFile, Row};
use crate::config::Config;
use crate::data::collection::{Paths, Sources};
use crate::encode::{skipped_beside, Skipped};
use crate::formats::pretrained::Pretrained;
use crate::train::summary::RunOptions;
use anyhow::Result;
use std::path::{Path, PathBuf};

pub const MODEL_HELP: &str = "A Hugging Face CLIP directory (config.json + model.safetensors), \
    e.g. runs/demo/export, or a hub id (org/name) in the local Hugging Face cache";
pub const JSON_HELP: &str = "Print one JSON document (fractions, not percentages) instead of text";

/// Where and how many at a time the model runs.
#[derive(clap::Args)]
pub struct Runtime {
    /// Images per forward pass.
    #[arg(long, default_value_t = 16, value_parser = batch_size)]
    pub batch_size: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl Runtime {
    pub fn device(&self) -> Result<tch::Device> {
        crate::model::parse_device(&self.device)
    }

    /// The model in `dir` (or a hub id) on this device.
    pub fn load(&self, dir: &Path) -> Result<Pretrained> {
        Pretrained::load(dir, self.device()?)
    }
}

/// An optional YAML config and `--set` overrides of its keys.
#[derive(clap::Args)]
pub struct ConfigArgs {
    /// YAML config (`streetclip config defaults` lists every key and its default).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. --set geo.top_k=3 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

impl ConfigArgs {
    /// The config file (or the defaults) with the overrides applied.
    pub fn resolve(&self) -> Result<Config> {
        match &self.config {
            Some(path) => Config::from_file_with(path, &self.sets),
            None => Config::from_yaml_with("{}", &self.sets),
        }
    }
}

/// A training run (`train`, `finetune`): its config, run directory, overrides and launcher.
#[derive(clap::Args)]
pub struct LaunchArgs {
    /// The run's YAML config (`streetclip config defaults` lists every key and its default).
    #[arg(long)]
    pub config: PathBuf,
    /// Run directory (default: runs/<config name>; finetune: a folder per method inside).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Stop after N optimizer steps (the schedule still spans the configured run; 0
    /// only evaluates the starting weights).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Override a config key: --set train.micro_batch_size=8 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Resume even if the config now differs from the run's in settings that change the result
    /// (the changes are logged and recorded in the run's config.yaml).
    #[arg(long)]
    pub allow_config_change: bool,
    /// Start N data-parallel workers on this machine (as torchrun --nproc-per-node N).
    #[arg(long, value_parser = at_least_one::<usize>)]
    pub nproc_per_node: Option<usize>,
    /// The launcher's rendezvous port (default: a free one).
    #[arg(long, requires = "nproc_per_node")]
    pub master_port: Option<u16>,
}

impl LaunchArgs {
    /// The config with the overrides applied (checked before any worker starts), and the run
    /// directory.
    pub fn resolve(&self) -> Result<(Config, PathBuf)> {
        let cfg = Config::from_file_with(&self.config, &self.sets)?;
        let out = self.out.clone().unwrap_or_else(|| {
            PathBuf::from("runs").join(self.config.file_stem().unwrap_or_default())
        });
        Ok((cfg, out))
    }

    pub fn options(&self) -> RunOptions {
        RunOptions {
            max_steps: self.max_steps,
            allow_config_change: self.allow_config_change,
        }
    }

    /// With `--nproc-per-node N`: starts N workers, each rerunning this command line without
    /// the launcher's options, and returns when they have finished (`Some`); otherwise `None`
    /// and this process is the run (or one rank of it under torchrun or SLURM).
    pub fn launch_workers(&self) -> Option<Result<()>> {
        let n = self.nproc_per_node?;
        Some(crate::dist::launch::run(
            n,
            &worker_args(),
            self.master_port,
        ))
    }
}

/// This program's arguments without `--nproc-per-node` and `--master-port` (and their values).
fn worker_args() -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        let text = a.to_string_lossy();
        if text == "--nproc-per-node" || text == "--master-port" {
            args.next();
        } else if !(text.starts_with("--nproc-per-node=") || text.starts_with("--master-port=")) {
            out.push(a);
        }
    }
    out
}

/// A count from 1 to `config::MAX_COUNT` (`--top-k 0` would print nothing; a count of 2^63
/// would become a negative size).
pub fn at_least_one<T: std::str::FromStr + PartialOrd + From<u8> + TryFrom<u64>>(
    s: &str,
) -> Result<T, String> {
    in_range(s, crate::config::MAX_COUNT)
}

/// Images per forward pass: 1 to `config::MAX_BATCH`.
pub fn batch_size(s: &str) -> Result<usize, String> {
    in_range(s, crate::config::MAX_BATCH)
}

fn in_range<T: std::str::FromStr + PartialOrd + From<u8> + TryFrom<u64>>(
    s: &str,
    max: u64,
) -> Result<T, String> {
    let too_large = || format!("`{s}` is too large: at most {max}");
    match (s.parse::<T>(), T::try_from(max)) {
        (Ok(n), _) if n < T::from(1) => Err("must be at least 1".into()),
        (Ok(n), Ok(m)) if n > m => Err(too_large()),
        (Ok(n), _) => Ok(n),
        (Err(_), _) if s.parse::<u128>().is_ok() => Err(too_large()),
        (Err(_), _) => Err(format!("`{s}` is not a whole number")),
    }
}

/// Images listed rather than named (beside the files and folders a command takes).
#[derive(clap::Args)]
pub struct Lists {
    /// A file listing image paths, one per line (`-`: standard input), read as they are used.
    #[arg(long, value_name = "LIST")]
    pub files_from: Option<PathBuf>,
    /// A CSV/JSONL manifest whose image column names the images (paths relative to it);
    /// labels, if any, are not needed.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
}

impl Lists {
    /// The images: `paths` (files as named, folders searched), then the list, then the manifest.
    pub fn with(&self, paths: &[PathBuf]) -> Sources {
        Sources {
            paths: paths.to_vec(),
            files_from: self.files_from.clone(),
            manifest: self.manifest.clone(),
        }
    }
}

/// Where a collection's results go: printed, or a file written as they come.
#[derive(clap::Args)]
pub struct OutArgs {
    /// Write the results to FILE (see --format) instead of printing them; images that could
    /// not be read are listed in FILE's name + .skipped.csv beside it (path, reason).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The file's format (default: by --out's extension): jsonl and csv rows are appended as
    /// each batch finishes; json, and geojson (a FeatureCollection for QGIS or geojson.io;
    /// geolocate only), are written at the end.
    #[arg(long, value_enum, requires = "out")]
    pub format: Option<Format>,
    /// Keep the rows already in --out (jsonl or csv; a partial last line is cut off) and run
    /// only the images not in it.
    #[arg(long, requires = "out")]
    pub resume: bool,
}

/// Help of the image arguments of the commands that take a collection.
pub const IMAGES_HELP: &str = "Image files (JPEG, PNG, WebP) and folders (searched recursively \
    for .jpg, .jpeg, .png and .webp, in sorted order)";

impl OutArgs {
    /// Runs `produce` over the images of `sources`: its rows streamed to --out (resuming, with
    /// the skipped images beside it), or collected and handed to `print`. `produce` returns how
    /// many images it was given; none usable is `NothingUsable`.
    pub fn run<R: Row>(
        &self,
        sources: &Sources,
        produce: impl FnOnce(Paths, &mut Skipped, &mut dyn FnMut(&[R]) -> Result<()>) -> Result<usize>,
        print: impl FnOnce(&[R]) -> Result<()>,
    ) -> Result<()> {
        let paths = sources.paths()?;
        let Some(out) = &self.out else {
            let (mut rows, mut skipped) = (Vec::new(), Skipped::default());
            let total = produce(paths, &mut skipped, &mut |batch| {
                rows.extend_from_slice(batch);
                Ok(())
            })?;
            skipped.report(total)?;
            return print(&rows);
        };
        let format = Format::resolve(self.format, out)?;
        let (mut file, done) = ResultFile::<R>::open(out, format, self.resume)?;
        let already = done.len();
        if already > 0 {
            eprintln!("{}: {already} images already there", out.display());
        }
        let todo = paths.filter(move |p| !p.as_ref().is_ok_and(|p| done.contains(&display(p))));
        let mut skipped = Skipped::to_file(&skipped_beside(out))?;
        let total = produce(Box::new(todo), &mut skipped, &mut |rows| file.add(rows))?;
        file.finish()?;
        // The rows already there count as produced: a resumed run that skips its last images
        // still leaves a complete file.
        skipped.report(already + total)
    }
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
