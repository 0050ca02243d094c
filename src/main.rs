//! The `streetclip` command line: argument parsing over the library's commands.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use streetclip::commands::{self, captions, embed, predict};
use streetclip::config::Config;
use streetclip::pretrained::Pretrained;
use streetclip::train::trainer::RunOptions;

#[derive(Parser)]
#[command(
    name = "streetclip",
    version,
    about = "CLIP for street-level image geolocalization (StreetCLIP), on libtorch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// A training run: its config, run directory and overrides (`train`, `finetune`).
#[derive(clap::Args)]
struct RunArgs {
    /// The run's YAML config (`streetclip config defaults` lists every key and its default).
    #[arg(long)]
    config: PathBuf,
    /// Run directory (default: runs/<config name>; finetune: a folder per method inside).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Stop after N optimizer steps (the schedule still spans the configured run; 0
    /// only evaluates the starting weights).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Override a config key: --set train.micro_batch_size=8 (repeatable).
    #[arg(long = "set")]
    sets: Vec<String>,
    /// Resume even if the config now differs from the run's in settings that change the result
    /// (the changes are logged and recorded in the run's config.yaml).
    #[arg(long)]
    allow_config_change: bool,
}

impl RunArgs {
    /// The config with the overrides applied, and the run directory.
    fn resolve(&self) -> Result<(Config, PathBuf)> {
        let cfg = Config::from_file_with(&self.config, &self.sets)?;
        let out = self.out.clone().unwrap_or_else(|| {
            PathBuf::from("runs").join(self.config.file_stem().unwrap_or_default())
        });
        Ok((cfg, out))
    }

    fn options(&self) -> RunOptions {
        RunOptions {
            max_steps: self.max_steps,
            allow_config_change: self.allow_config_change,
        }
    }
}

/// Where and how many at a time the model runs.
#[derive(clap::Args)]
struct Runtime {
    /// Images per forward pass.
    #[arg(long, default_value_t = 16, value_parser = batch_size)]
    batch_size: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// A count from 1 to `streetclip::config::MAX_COUNT` (`--top-k 0` would print nothing; a count
/// of 2^63 would become a negative size).
fn at_least_one<T: std::str::FromStr + PartialOrd + From<u8> + TryFrom<u64>>(
    s: &str,
) -> Result<T, String> {
    in_range(s, streetclip::config::MAX_COUNT)
}

/// Images per forward pass: 1 to `streetclip::config::MAX_BATCH`.
fn batch_size(s: &str) -> Result<usize, String> {
    in_range(s, streetclip::config::MAX_BATCH)
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

const MODEL_HELP: &str = "A Hugging Face CLIP directory (config.json + model.safetensors), e.g. \
    runs/demo/export, or a hub id (org/name) in the local Hugging Face cache";
const JSON_HELP: &str = "Print one JSON document (fractions, not percentages) instead of text";

#[derive(Subcommand)]
enum Command {
    /// Rank labels for each image by zero-shot probability, or, for a `finetune` export, its
    /// classes by its classifier head.
    #[command(
        after_help = "Examples:\n  streetclip predict --model runs/demo/export --labels \"Japan,Germany,Brazil\" --top-k 2 photo.jpg\n  streetclip predict --model runs/finetune-demo/classifier/export photo.jpg"
    )]
    Predict {
        #[arg(long, help = MODEL_HELP)]
        model: PathBuf,
        /// Comma-separated labels, e.g. "San Jose,San Diego,Los Angeles" (not for a model
        /// carrying a fine-tuned classifier, which ranks its own classes, unless --zero-shot).
        #[arg(long)]
        labels: Option<String>,
        /// Rank --labels by caption similarity even when the model carries a fine-tuned
        /// classifier head (head.safetensors).
        #[arg(long)]
        zero_shot: bool,
        /// Caption template; `{}` is replaced by each label.
        #[arg(long, default_value = "A Street View photo in {}.")]
        template: String,
        /// How many labels to show per image.
        #[arg(long, default_value_t = 5, value_parser = at_least_one::<usize>)]
        top_k: usize,
        #[command(flatten)]
        rt: Runtime,
        #[arg(long, help = JSON_HELP)]
        json: bool,
        /// JPEG, PNG or WebP photos.
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Print the caption each sample would train on (tab-separated: image, caption). Images are
    /// not read.
    #[command(
        after_help = "Example (synthetic scenes first, so it runs anywhere):\n  streetclip synth-data --out /tmp/scenes --countries 4 --per-city 5\n  streetclip captions --manifest /tmp/scenes/manifest.csv --limit 3"
    )]
    Captions {
        /// CSV or JSONL manifest (overrides data.manifest of the config).
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// WebDataset shards, brace patterns allowed (overrides data.shards).
        #[arg(long)]
        shards: Option<String>,
        /// YAML config (its data and captions sections).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Caption only the first N samples.
        #[arg(long, value_parser = at_least_one::<usize>)]
        limit: Option<usize>,
        #[arg(long, help = JSON_HELP)]
        json: bool,
    },
    /// Fine-tune CLIP on captioned images (resumes from RUN_DIR's newest checkpoint).
    #[command(
        after_help = "Examples:\n  streetclip train --config configs/demo.yaml --out runs/demo\n  streetclip train --config configs/streetclip.yaml --nproc-per-node 8 --set train.micro_batch_size=16"
    )]
    Train {
        #[command(flatten)]
        run: RunArgs,
        /// Start N data-parallel workers on this machine (as torchrun --nproc-per-node N).
        #[arg(long, value_parser = at_least_one::<usize>)]
        nproc_per_node: Option<usize>,
        /// The launcher's rendezvous port (default: a free one).
        #[arg(long, requires = "nproc_per_node")]
        master_port: Option<u16>,
    },
    /// Fine-tune for a classification task (zero_shot, linear_probe, contrastive, classifier)
    /// and compare the methods on the same test split, or for geolocation by geocells.
    #[command(
        after_help = "Example:\n  streetclip finetune --config configs/finetune/demo-country.yaml --out runs/finetune-demo"
    )]
    Finetune {
        #[command(flatten)]
        run: RunArgs,
        /// Start N data-parallel workers on this machine (method `geocells` only; the
        /// classification methods run as one process).
        #[arg(long, value_parser = at_least_one::<usize>)]
        nproc_per_node: Option<usize>,
        /// The launcher's rendezvous port (default: a free one).
        #[arg(long, requires = "nproc_per_node")]
        master_port: Option<u16>,
    },
    /// Write a checkpoint as a Hugging Face CLIP directory.
    #[command(
        after_help = "Example (after `make demo`):\n  streetclip export --checkpoint runs/demo/checkpoints/step-00000046 --out runs/demo/export-46"
    )]
    Export {
        /// A checkpoint directory (RUN_DIR/checkpoints/step-...).
        #[arg(long)]
        checkpoint: PathBuf,
        /// The directory to write (config.json, model.safetensors, tokenizer and preprocessor
        /// files).
        #[arg(long)]
        out: PathBuf,
    },
    /// Write any CLIP checkpoint streetclip reads (a Hugging Face directory with pickled or
    /// sharded weights, OpenAI's TorchScript archives, OpenAI / open_clip state dicts) as a
    /// complete Hugging Face safetensors directory, read without Python or code execution.
    #[command(
        after_help = "Examples:\n  streetclip convert --from checkpoints/clip-vit-large-patch14-336 --out checkpoints/clip-vit-large-patch14-336-st\n  streetclip convert --from ~/.cache/clip/ViT-L-14-336px.pt --out checkpoints/ViT-L-14-336px"
    )]
    Convert {
        /// A Hugging Face CLIP directory (config.json with pytorch_model.bin, its sharded index,
        /// or safetensors), a hub id in the local Hugging Face cache, an OpenAI TorchScript
        /// archive (ViT-*.pt), an OpenAI / open_clip state dict (.pt, .bin, .safetensors), or an
        /// open_clip hub directory (open_clip_pytorch_model.bin + open_clip_config.json).
        #[arg(long)]
        from: PathBuf,
        /// The directory to write (config.json, model.safetensors, tokenizer and preprocessor
        /// files).
        #[arg(long)]
        out: PathBuf,
        /// The MLP activation of an OpenAI / open_clip state dict, which its shapes cannot tell:
        /// quick_gelu (OpenAI's models; the default) or gelu (most open_clip models trained from
        /// scratch). Read from a TorchScript archive or open_clip_config.json when present.
        #[arg(long, value_parser = parse_activation)]
        activation: Option<streetclip::model::Activation>,
    },
    /// Guess where photos were taken: country, (region,) city and coordinates — zero-shot, or
    /// by the export's fine-tuned country head or its geocells when it has them (said on
    /// stderr; --zero-shot ignores them).
    #[command(
        after_help = "Example (after `make demo`):\n  streetclip geolocate --model runs/demo/export --countries FR,JP,BR --top-k 2 assets/demo/coffee.jpg"
    )]
    Geolocate {
        #[arg(long, help = MODEL_HELP)]
        model: PathBuf,
        /// Ignore a fine-tuned classifier head the model carries (head.safetensors) and rank
        /// every candidate zero-shot, by caption similarity.
        #[arg(long)]
        zero_shot: bool,
        /// YAML config (its `geo` section: prompts, candidates, regions, top-k, refinement;
        /// `data.on_error` for unreadable images).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override a config key: --set geo.use_regions=true (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Write the guesses to this file (see --format) instead of printing them.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// The file's format: jsonl and csv rows are appended as each batch finishes; geojson
        /// (a FeatureCollection for QGIS or geojson.io) and json are written at the end.
        #[arg(long, value_enum, default_value = "jsonl", requires = "out")]
        format: commands::guesses_out::Format,
        /// Keep the rows already in --out (jsonl or csv; a partial last line is cut off) and
        /// geolocate only the images not in it.
        #[arg(long, requires = "out")]
        resume: bool,
        /// Candidates listed per stage (geo.top_k).
        #[arg(long, value_parser = at_least_one::<usize>)]
        top_k: Option<usize>,
        /// Candidate countries, comma-separated names or ISO codes (geo.countries); default
        /// every gazetteer country. A geocell export ranks its own cells' countries instead.
        #[arg(long, value_name = "LIST")]
        countries: Option<String>,
        #[command(flatten)]
        rt: Runtime,
        #[arg(long, help = JSON_HELP)]
        json: bool,
        /// JPEG, PNG or WebP photos.
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Evaluate a model.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Draw a small dataset of procedural street scenes for real cities (demo and tests).
    #[command(
        after_help = "Example:\n  streetclip synth-data --out /tmp/scenes --countries 4 --per-city 5"
    )]
    SynthData {
        /// The folder to write (images/ and manifest.csv).
        #[arg(long)]
        out: PathBuf,
        /// Countries drawn (the most populous ones with enough cities).
        #[arg(long, default_value_t = 8, value_parser = at_least_one::<usize>)]
        countries: usize,
        /// Cities per country (its most populous).
        #[arg(long, default_value_t = 3, value_parser = at_least_one::<usize>)]
        cities_per_country: usize,
        /// Scenes per city.
        #[arg(long, default_value_t = 12, value_parser = at_least_one::<usize>)]
        per_city: usize,
        /// Seed of the scenes' randomness (same seed, same images).
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Write image and text features (HF tensor names) to a safetensors file.
    #[command(
        after_help = "Example:\n  streetclip embed --model runs/demo/export --image photo.jpg --text \"A Street View photo in Japan.\" --out features.safetensors"
    )]
    Embed {
        #[arg(long, help = MODEL_HELP)]
        model: PathBuf,
        /// An image to embed (repeatable).
        #[arg(long = "image")]
        images: Vec<PathBuf>,
        /// A text to embed (repeatable).
        #[arg(long = "text")]
        texts: Vec<String>,
        /// The safetensors file to write.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        rt: Runtime,
    },
    /// The configuration reference.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Geocells of a manifest's coordinates: admin-1 regions, small ones merged into their
    /// nearest neighbour, large ones bisected by spherical 2-means; written as JSON to inspect.
    #[command(
        after_help = "Example (synthetic scenes first, so it runs anywhere):\n  streetclip synth-data --out /tmp/scenes --countries 4 --per-city 5\n  streetclip geocells --manifest /tmp/scenes/manifest.csv --min-samples 5 --max-samples 10 --out /tmp/geocells.json"
    )]
    Geocells {
        /// A CSV/JSONL manifest with lat and lon columns (IM2GPS3K's IMG_ID,LAT,LON works).
        #[arg(long)]
        manifest: PathBuf,
        /// A region with fewer samples joins the nearest region of its country (else of any).
        #[arg(long, default_value_t = 50, value_parser = at_least_one::<usize>)]
        min_samples: usize,
        /// A region with more samples is split into ceil(n / max) clusters.
        #[arg(long, default_value_t = 2000, value_parser = at_least_one::<usize>)]
        max_samples: usize,
        /// Seeds the k-means initialisation.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The JSON file to write.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Time training steps on synthetic batches already on the device: samples/s, TFLOP/s,
    /// MFU, peak GPU memory. `make bench-gpu` runs it beside transformers (eager and compiled).
    #[command(
        after_help = "Examples:\n  streetclip bench train --config configs/demo.yaml\n  streetclip bench train --set model.preset=ViT-L/14-336 --set model.device=cuda --set train.micro_batch_size=64 --set train.grad_accum_steps=1 --json"
    )]
    Train {
        /// A YAML config (model, train and optim sections); default: the default config.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override a config key: --set model.device=cuda (repeatable).
        #[arg(long = "set")]
        sets: Vec<String>,
        /// Timed optimizer steps.
        #[arg(long, default_value_t = 10, value_parser = at_least_one::<usize>)]
        steps: usize,
        /// Untimed steps first (allocator and kernel warm-up).
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// The device's peak TFLOP/s for MFU (default: dense bf16 of known GPUs).
        #[arg(long)]
        peak_tflops: Option<f64>,
        /// Train on the config's data through the training loader (decoding, augmentation,
        /// tokenising and the copy to the device timed too) instead of synthetic batches.
        #[arg(long)]
        data: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the complete default config, a comment above every key.
    #[command(after_help = "Example:\n  streetclip config defaults > my-run.yaml")]
    Defaults,
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Zero-shot geolocation: % within 1/25/200/750/2500 km, median/mean error, country
    /// accuracy, GeoScore.
    #[command(
        after_help = "Example:\n  streetclip eval geo --model runs/demo/export --manifest .cache/synth-demo/manifest.csv --out runs/demo/eval"
    )]
    Geo {
        /// A Hugging Face CLIP directory; repeat to compare models in one report.
        #[arg(long, required = true)]
        model: Vec<PathBuf>,
        /// Ignore a fine-tuned classifier head the model carries (head.safetensors) and rank
        /// every candidate zero-shot, by caption similarity.
        #[arg(long)]
        zero_shot: bool,
        /// A manifest with coordinates (IM2GPS3K's IMG_ID,LAT,LON works as it is).
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// YAML config (its `geo` section, and `data` when --manifest is not given).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Writes metrics.json, predictions.csv, report.md, error_curve.png and map.png here
        /// (one folder per model and a side-by-side report when comparing).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Evaluate only the first N samples.
        #[arg(long, value_parser = at_least_one::<usize>)]
        limit: Option<usize>,
        #[command(flatten)]
        rt: Runtime,
    },
    /// Zero-shot classification accuracy for any label set: per-class precision/recall,
    /// confusion matrix.
    #[command(
        after_help = "Example:\n  streetclip eval classify --model runs/demo/export --data photos/ --template \"A Street View photo in {}.\""
    )]
    Classify {
        #[arg(long, help = MODEL_HELP)]
        model: PathBuf,
        /// Ignore a fine-tuned classifier head the model carries (head.safetensors) and rank
        /// every candidate zero-shot, by caption similarity.
        #[arg(long)]
        zero_shot: bool,
        /// An ImageFolder directory (root/<class>/*.jpg) or a CSV/JSONL manifest.
        #[arg(long)]
        data: PathBuf,
        /// The manifest column holding the class.
        #[arg(long)]
        label_column: Option<String>,
        /// Caption template, `{}` is the class name (`_` read as a space); repeat to ensemble.
        #[arg(long = "template")]
        templates: Vec<String>,
        /// Writes metrics.json, predictions.csv, confusion.csv, confusion.png and report.md here.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        rt: Runtime,
    },
}

fn load_config(path: Option<&PathBuf>) -> Result<Config> {
    path.map_or_else(|| Ok(Config::default()), |p| Config::from_file(p))
}

// One arm per subcommand, each only turning arguments into a `commands::*` call and printing its
// result: long, but one flat table of what the CLI does, which splitting would scatter.
fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Bench(BenchCommand::Train {
            config,
            sets,
            steps,
            warmup,
            peak_tflops,
            data,
            json,
        }) => {
            let cfg = match &config {
                Some(path) => Config::from_file_with(path, &sets)?,
                None => Config::from_yaml_with("{}", &sets)?,
            };
            let args = streetclip::commands::bench::BenchArgs {
                steps,
                warmup,
                peak_tflops,
                data,
            };
            let result = streetclip::commands::bench::train(&cfg, &args)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&result)?);
            } else {
                print!("{}", result.text());
            }
        }
        Command::Geocells {
            manifest,
            min_samples,
            max_samples,
            seed,
            out,
        } => {
            let sizes = streetclip::geo::geocells::CellSizes {
                min_samples,
                max_samples,
                seed,
            };
            let (cells, without) = commands::geocells::from_manifest(&manifest, sizes)?;
            cells.write(&out, sizes)?;
            if without > 0 {
                eprintln!("{without} samples without coordinates left out");
            }
            print!("{}", cells.summary());
            eprintln!("wrote {}", out.display());
        }
        Command::Config(ConfigCommand::Defaults) => {
            print!("{}", streetclip::config::commented_defaults());
        }
        Command::Predict {
            model,
            labels,
            zero_shot,
            template,
            top_k,
            rt,
            json,
            images,
        } => {
            let clip = Pretrained::load(&model, streetclip::model::parse_device(&rt.device)?)?;
            let ranker = predict::Ranker::choose(&model, &clip, labels.as_deref(), zero_shot)?;
            let args = predict::PredictArgs {
                template,
                images,
                batch_size: rt.batch_size,
                top_k,
            };
            predict::print(&predict::run(&clip, &ranker, &args)?, json)?;
        }
        Command::Captions {
            manifest,
            shards,
            config,
            limit,
            json,
        } => {
            let mut cfg = match config {
                Some(path) => Config::from_file(&path)?,
                None => Config::default(),
            };
            if manifest.is_some() || shards.is_some() {
                cfg.data.manifest = manifest;
                cfg.data.shards = shards;
            }
            let (rows, report) = captions::run(&cfg, limit)?;
            captions::print(&rows, &report, json)?;
        }
        Command::Train {
            run,
            nproc_per_node,
            master_port,
        } => {
            // The config is checked before any worker starts.
            let (cfg, out) = run.resolve()?;
            if let Some(n) = nproc_per_node {
                // Each worker reruns this command line without the launcher's own options.
                return streetclip::dist::launch::run(n, &worker_args(), master_port);
            }
            let summary =
                streetclip::commands::train::run(&cfg, &cfg.to_yaml(), &out, &run.options())?;
            if streetclip::dist::DistEnv::from_env()?.rank == 0 {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            }
        }
        Command::Finetune {
            run,
            nproc_per_node,
            master_port,
        } => {
            let (cfg, out) = run.resolve()?;
            if let Some(n) = nproc_per_node {
                if cfg.finetune.method != [streetclip::config::Method::Geocells] {
                    anyhow::bail!("--nproc-per-node: only finetune.method geocells trains data-parallel; the classification methods run as one process");
                }
                return streetclip::dist::launch::run(n, &worker_args(), master_port);
            }
            streetclip::finetune::methods::run(&cfg, &cfg.to_yaml(), &out, &run.options())?;
            if streetclip::dist::DistEnv::from_env()?.rank == 0 {
                print!("{}", std::fs::read_to_string(out.join("comparison.md"))?);
            }
        }
        Command::Convert {
            from,
            out,
            activation,
        } => {
            let report = streetclip::commands::convert::run(&from, &out, activation)?;
            if let Some((act, from)) = report.activation {
                eprintln!("activation: {} ({from})", serde_json::to_value(act)?);
            }
            eprintln!("wrote {} ({} tensors)", out.display(), report.tensors);
        }
        Command::Export { checkpoint, out } => {
            streetclip::commands::export::run(&checkpoint, &out)?;
            eprintln!("wrote {}", out.display());
        }
        Command::Geolocate {
            model,
            zero_shot,
            config,
            sets,
            out,
            format,
            resume,
            top_k,
            countries,
            rt,
            json,
            images,
        } => {
            let mut cfg = match &config {
                Some(path) => Config::from_file_with(path, &sets)?,
                None => Config::from_yaml_with("{}", &sets)?,
            };
            cfg.geo.top_k = top_k.unwrap_or(cfg.geo.top_k);
            if let Some(list) = countries {
                cfg.geo.countries = Some(list.split(',').map(|c| c.trim().to_string()).collect());
            }
            let clip = Pretrained::load(&model, streetclip::model::parse_device(&rt.device)?)?;
            let geolocate = |images: &[PathBuf], on_batch: &mut dyn FnMut(&[_]) -> Result<()>| {
                let inputs = (images, rt.batch_size);
                commands::geo::geolocate(&model, &clip, zero_shot, &cfg, inputs, on_batch)
            };
            match out {
                Some(out) => {
                    let (mut file, done) =
                        commands::guesses_out::GuessFile::open(&out, format, resume)?;
                    let todo: Vec<PathBuf> = images
                        .into_iter()
                        .filter(|p| !done.contains(&p.display().to_string()))
                        .collect();
                    if !done.is_empty() {
                        eprintln!(
                            "{}: {} images already there, {} to go",
                            out.display(),
                            done.len(),
                            todo.len()
                        );
                    }
                    geolocate(&todo, &mut |rows| file.add(rows))?;
                    file.finish()?;
                }
                None => {
                    let mut guesses = Vec::new();
                    geolocate(&images, &mut |rows| {
                        guesses.extend_from_slice(rows);
                        Ok(())
                    })?;
                    commands::geo::print_guesses(&guesses, json)?;
                }
            }
        }
        Command::Eval(EvalCommand::Geo {
            model,
            zero_shot,
            manifest,
            config,
            out,
            limit,
            rt,
        }) => {
            let mut cfg = load_config(config.as_ref())?;
            if manifest.is_some() {
                cfg.data.manifest = manifest;
                cfg.data.shards = None;
            }
            if cfg.data.manifest.is_none() && cfg.data.shards.is_none() {
                anyhow::bail!("eval geo needs photos with coordinates: pass --manifest CSV/JSONL (IM2GPS3K's IMG_ID,LAT,LON works as it is), or a --config whose data.manifest or data.shards is set");
            }
            let device = streetclip::model::parse_device(&rt.device)?;
            let evals = commands::geo::eval_geo(
                &model,
                zero_shot,
                &cfg,
                out.as_deref(),
                limit,
                rt.batch_size,
                device,
            )?;
            commands::geo::print_metrics(&evals)?;
        }
        Command::Eval(EvalCommand::Classify {
            model,
            zero_shot,
            data,
            label_column,
            templates,
            out,
            rt,
        }) => {
            let data = streetclip::data::classes::Labelled::load(&data, label_column.as_deref())?;
            let clip = Pretrained::load(&model, streetclip::model::parse_device(&rt.device)?)?;
            let head = commands::classify::head(&model, &clip, zero_shot, !templates.is_empty())?;
            let templates = if templates.is_empty() {
                vec![commands::classify::DEFAULT_TEMPLATE.to_string()]
            } else {
                templates
            };
            let classifier = match &head {
                Some(head) => commands::classify::Classifier::Head(head),
                None => commands::classify::Classifier::ZeroShot {
                    templates: &templates,
                },
            };
            let (metrics, _) =
                commands::classify::run(&clip, &data, classifier, rt.batch_size, out.as_deref())?;
            println!("{}", serde_json::to_string_pretty(&metrics)?);
        }
        Command::SynthData {
            out,
            countries,
            cities_per_country,
            per_city,
            seed,
        } => {
            let args = streetclip::synth::SynthArgs {
                countries,
                cities_per_country,
                per_city,
                seed,
                ..Default::default()
            };
            let g = streetclip::geo::Gazetteer::bundled()?;
            let n = streetclip::synth::generate(&out, &args, g)?;
            eprintln!(
                "wrote {n} images and {}",
                out.join("manifest.csv").display()
            );
        }
        Command::Embed {
            model,
            images,
            texts,
            out,
            rt,
        } => {
            let clip = Pretrained::load(&model, streetclip::model::parse_device(&rt.device)?)?;
            let tensors = embed::run(
                &clip,
                &embed::EmbedArgs {
                    images,
                    texts,
                    batch_size: rt.batch_size,
                },
            )?;
            embed::write(&out, &tensors)?;
            let shapes: Vec<String> = tensors
                .iter()
                .map(|(n, t)| format!("{n} {:?}", t.size()))
                .collect();
            eprintln!("wrote {}: {}", out.display(), shapes.join(", "));
        }
    }
    Ok(())
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

/// The error and its causes on one line; a cause already quoted by the message before it is
/// not repeated (several libraries embed their source's text in their own).
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if !parts.last().is_some_and(|prev| prev.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {}", one_line(&e));
        // An interrupted run exits as the signal would have made it (130 for Ctrl-C).
        let code = e
            .downcast_ref::<streetclip::interrupt::Interrupted>()
            .map(|i| i.exit_code())
            .or_else(|| {
                e.downcast_ref::<streetclip::encode::NothingUsable>()
                    .map(|_| streetclip::encode::NothingUsable::EXIT_CODE)
            })
            .unwrap_or(1);
        std::process::exit(code);
    }
}

/// `--activation`: the names config.json uses (`quick_gelu`, `gelu`, `gelu_new`).
fn parse_activation(s: &str) -> Result<streetclip::model::Activation, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| format!("unknown activation `{s}`: use quick_gelu or gelu"))
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every flag and argument has a sentence of help, and every command an example.
    #[test]
    fn every_flag_is_described_and_every_command_has_an_example() {
        fn check(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" && arg.get_help().is_none() {
                    missing.push(format!("{path} {id}: no help"));
                }
            }
            let subcommands: Vec<_> = cmd.get_subcommands().collect();
            if subcommands.is_empty() {
                let example = cmd.get_after_help().map(|h| h.to_string());
                if !example.is_some_and(|h| h.contains(&format!("{path} "))) {
                    missing.push(format!("{path}: no example"));
                }
            }
            for sub in subcommands {
                check(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        check(&Cli::command(), "streetclip", &mut missing);
        assert!(missing.is_empty(), "{missing:#?}");
    }

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
