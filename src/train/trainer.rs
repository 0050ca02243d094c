//! The training loop: data → micro-batches → gradients (either accumulation mode) → AdamW,
//! with logging, validation, checkpoints, exact resume and the final HF export.

use super::checkpoint::{self, TrainState};
use super::logger::{MetricSink, Progress, TensorBoard};
use super::optim::AdamW;
use super::step::{accumulate_gradients, optimizer_step, Accumulation, MicroBatch};
use super::validate::{validate, ValMetrics};
use crate::commands::parse_device;
use crate::config::{Config, FreezeConfig, OnNonFinite, Precision};
use crate::data::loader::{Loader, LoaderConfig, Position};
use crate::data::{Dataset, Sample};
use crate::dist::{all_reduce_gradients, Dist, DistEnv};
use crate::finetune::head::ClassHead;
use crate::geo::Gazetteer;
use crate::model::weights;
use crate::model::ClipConfig;
use crate::pretrained::Pretrained;
use crate::seed::sample_seed;
use crate::shim::AutocastDtype;
use crate::text::Captioner;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tch::Tensor;

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub steps: u64,
    pub total_steps: u64,
    pub samples_seen: u64,
    pub samples_per_s: f64,
    pub final_loss: f64,
    pub skipped_steps: u64,
    pub skipped_samples: u64,
    pub train_samples: usize,
    pub val_samples: usize,
    pub validation: Option<ValMetrics>,
    pub stopped_by: String,
    pub export: Option<PathBuf>,
}

/// Set by SIGINT/SIGTERM: the loop saves a checkpoint and stops at the next step.
fn stop_flag() -> &'static AtomicBool {
    static FLAG: OnceLock<AtomicBool> = OnceLock::new();
    FLAG.get_or_init(|| {
        let _ = ctrlc::set_handler(|| stop_flag().store(true, Ordering::SeqCst));
        AtomicBool::new(false)
    })
}

/// The configured device; in a multi-process run `cuda` means this worker's GPU, cuda:LOCAL_RANK.
fn device_for(cfg: &Config, env: &DistEnv) -> Result<tch::Device> {
    if env.is_distributed() && cfg.model.device == "cuda" {
        return parse_device(&format!("cuda:{}", env.local_rank))
            .context("model.device (cuda:LOCAL_RANK)");
    }
    parse_device(&cfg.model.device).context("model.device")
}

pub fn build_model(cfg: &Config, device: tch::Device) -> Result<Pretrained> {
    let m = &cfg.model;
    match (&m.init, &m.preset, &m.config) {
        (Some(dir), None, None) => Pretrained::load(dir, device),
        (None, Some(preset), None) => Pretrained::fresh(ClipConfig::preset(preset).context("model.preset")?, device),
        (None, None, Some(config)) => Pretrained::fresh(config.clone(), device),
        (None, None, None) => bail!("no model: set model.init (a Hugging Face CLIP directory), model.preset or model.config"),
        _ => bail!("set only one of model.init, model.preset and model.config"),
    }
}

/// Locks parameters as `freeze` says; returns how many remain trainable.
fn apply_freeze(clip: &mut Pretrained, freeze: &FreezeConfig) -> usize {
    let (vision_layers, text_layers) = (
        clip.model.config.vision_config.num_hidden_layers as usize,
        clip.model.config.text_config.num_hidden_layers as usize,
    );
    let mut trainable = 0;
    for (name, var) in clip.model.vs.variables() {
        let vision = name.starts_with("vision_model") || name.starts_with("visual_projection");
        let text = name.starts_with("text_model") || name.starts_with("text_projection");
        let mut train = !(vision && freeze.vision || text && freeze.text);
        if let (true, Some(n)) = (train, freeze.last_n_blocks) {
            let layers = if vision { vision_layers } else { text_layers };
            let block = name
                .split(".layers.")
                .nth(1)
                .and_then(|r| r.split('.').next())
                .and_then(|i| i.parse::<usize>().ok());
            // Embeddings and early blocks lock; the last n blocks, final norms, projections and
            // the temperature train.
            let late = match block {
                Some(i) => i + n >= layers,
                None => !name.contains("embeddings") && !name.contains("pre_layrnorm"),
            };
            train = late;
        }
        let _ = var.set_requires_grad(train);
        trainable += usize::from(train);
    }
    trainable
}

/// Where and how checkpoints are written.
struct Checkpoints<'a> {
    root: PathBuf,
    config_yaml: &'a str,
    keep: usize,
}

impl Checkpoints<'_> {
    /// Every rank's loader position gathered to rank 0, which writes the checkpoint. All ranks
    /// call this at the same steps.
    fn save(
        &self,
        dist: &Dist,
        clip: &Pretrained,
        opt: &AdamW,
        state: &mut TrainState,
    ) -> Result<()> {
        if dist.world_size > 1 {
            let mine =
                Tensor::from_slice(&[state.position.epoch as i64, state.position.index as i64])
                    .view([1, 2]);
            let all = Vec::<i64>::try_from(dist.all_gather(&mine.to(clip.device()))?.view([-1]))?;
            state.rank_positions = all
                .chunks(2)
                .map(|p| Position {
                    epoch: p[0] as u64,
                    index: p[1] as usize,
                })
                .collect();
        }
        if dist.is_main() {
            checkpoint::save(
                &self.root,
                &clip.model,
                opt,
                state,
                self.config_yaml,
                self.keep,
            )?;
        }
        Ok(())
    }
}

/// This rank's loader position in a resumed run. With the world size it was saved with, its own;
/// otherwise rank 0's position in the data, re-expressed in this world's shares (exact unless
/// samples were skipped).
fn resume_position(state: &TrainState, dist: &Dist) -> Position {
    let saved_world = state.rank_positions.len().max(1);
    if saved_world == dist.world_size {
        return state
            .rank_positions
            .get(dist.rank)
            .copied()
            .unwrap_or(state.position);
    }
    let global = state.position.index * saved_world;
    if dist.is_main() {
        eprintln!("resuming a {saved_world}-rank run on {} ranks: each continues at sample {} of its share", dist.world_size, global / dist.world_size);
    }
    Position {
        epoch: state.position.epoch,
        index: global / dist.world_size,
    }
}

/// Train / validation split by a seeded per-sample draw (stable when the data grows).
fn split(samples: &[Sample], fraction: f64, seed: u64) -> (Vec<Sample>, Vec<Sample>) {
    let (mut train, mut val) = (vec![], vec![]);
    for (i, s) in samples.iter().enumerate() {
        let u = sample_seed(seed, u64::MAX - 1, i as u64) as f64 / u64::MAX as f64;
        if u < fraction {
            val.push(s.clone())
        } else {
            train.push(s.clone())
        }
    }
    (train, val)
}

/// What the towers are trained for.
pub enum Objective {
    /// CLIP's contrastive loss between images and their captions.
    Contrastive,
    /// Cross-entropy of a linear head on the normalised image embeddings, the head initialised
    /// as the zero-shot classifier of `names` through `templates`; `labels[i]` is the class of
    /// training sample `i`.
    Classify {
        names: Vec<String>,
        templates: Vec<String>,
        labels: Vec<i64>,
    },
}

/// This process's place in the job and its device (torchrun, SLURM, or a single process).
pub fn join(cfg: &Config) -> Result<(DistEnv, Dist, tch::Device)> {
    let env = DistEnv::from_env()?;
    let device = device_for(cfg, &env)?;
    let dist = Dist::init(
        &env,
        cfg.dist.backend_for(device)?,
        device,
        cfg.dist.timeout(),
    )?;
    Ok((env, dist, device))
}

/// Trains as `cfg` says into `out` (resuming from its newest checkpoint), stopping after
/// `max_steps` optimizer steps when given. `config_yaml` is the resolved config, saved as is.
/// Under torchrun, SLURM or `--nproc-per-node`, this process is one rank of a data-parallel job:
/// the global batch is world × grad_accum_steps × micro_batch_size; rank 0 alone logs,
/// validates, checkpoints and exports.
pub fn train(
    cfg: &Config,
    config_yaml: &str,
    out: &Path,
    max_steps: Option<u64>,
) -> Result<Summary> {
    let t = &cfg.train;
    if !(0.0..1.0).contains(&t.val_fraction) {
        bail!("train.val_fraction = {} must be in [0, 1)", t.val_fraction);
    }
    let (env, dist, device) = join(cfg)?;
    let g = Gazetteer::bundled()?;
    // Rank 0 first: it draws synthetic data when the config asks for it.
    if !dist.is_main() {
        dist.barrier()
            .context("waiting for rank 0 to prepare the data")?;
    }
    let (data, report) = Dataset::load(&cfg.data, &g)?;
    if dist.is_main() {
        eprintln!("data: {}", report.summary());
        dist.barrier()?;
    }
    let (train_samples, val_samples) = split(&data.samples, t.val_fraction, t.seed);
    let run = Run {
        cfg,
        config_yaml,
        out,
        max_steps,
        env: &env,
        dist: &dist,
        device,
    };
    Ok(run
        .train(train_samples, val_samples, &Objective::Contrastive)?
        .0)
}

/// One training run's fixed inputs.
pub struct Run<'a> {
    pub cfg: &'a Config,
    pub config_yaml: &'a str,
    pub out: &'a Path,
    pub max_steps: Option<u64>,
    pub env: &'a DistEnv,
    pub dist: &'a Dist,
    pub device: tch::Device,
}

impl Run<'_> {
    /// Trains on `train_samples` for `objective` (validating on `val_samples`, geolocation-style,
    /// when there are any). Returns the summary and the trained model.
    pub fn train(
        &self,
        train_samples: Vec<Sample>,
        val_samples: Vec<Sample>,
        objective: &Objective,
    ) -> Result<(Summary, Pretrained)> {
        let Run {
            cfg,
            config_yaml,
            out,
            max_steps,
            env,
            dist,
            device,
        } = *self;
        let t = &cfg.train;
        if t.micro_batch_size == 0 || t.grad_accum_steps == 0 || t.epochs == 0 {
            bail!("train.micro_batch_size, train.grad_accum_steps and train.epochs must be at least 1");
        }
        let main = dist.is_main();
        if main {
            std::fs::create_dir_all(out)
                .with_context(|| format!("cannot create run directory {}", out.display()))?;
            crate::tensor_io::write_atomic(&out.join("config.yaml"), config_yaml.as_bytes())?;
        }
        let stop = stop_flag();

        // A fresh model's initial weights come from libtorch's generator.
        tch::manual_seed(t.seed as i64);
        let mut clip = build_model(cfg, device)?;
        let head = match objective {
            Objective::Contrastive => None,
            Objective::Classify {
                names, templates, ..
            } => Some(ClassHead::attach(&mut clip, names, templates)?),
        };
        let trainable = apply_freeze(&mut clip, &t.freeze);
        if head.is_some() {
            // The text tower and the temperature take no part in the classifier's loss.
            for (name, var) in clip.model.vs.variables() {
                if name.starts_with("text_") || name == "logit_scale" {
                    let _ = var.set_requires_grad(false);
                }
            }
        }
        if trainable == 0 {
            bail!("train.freeze leaves no parameter to train");
        }
        let g = Gazetteer::bundled()?;
        // Per rank; the step's global batch is world_size times this.
        let step_size = t.micro_batch_size * t.grad_accum_steps;
        let steps_per_epoch = (train_samples.len() / dist.world_size / step_size) as u64;
        if steps_per_epoch == 0 {
            bail!(
                "{} training samples are fewer than one step's batch ({} ranks x {} x {})",
                train_samples.len(),
                dist.world_size,
                t.micro_batch_size,
                t.grad_accum_steps
            );
        }
        let total_steps = steps_per_epoch * t.epochs;
        let stop_at = max_steps
            .or(t.max_steps)
            .unwrap_or(total_steps)
            .min(total_steps);
        let captioner = Arc::new(Captioner::new(&cfg.captions)?);
        let mut opt = AdamW::new(&clip.model.vs, &cfg.optim);

        let ckpt_root = out.join("checkpoints");
        let checkpoints = Checkpoints {
            root: ckpt_root.clone(),
            config_yaml,
            keep: t.keep_checkpoints,
        };
        let mut state = TrainState::default();
        if let Some(last) = checkpoint::list(&ckpt_root).pop() {
            state = checkpoint::load(&last, &mut clip.model, &mut opt)?;
            if main {
                eprintln!("resuming from {} (step {})", last.display(), state.step);
            }
            state.position = resume_position(&state, dist);
        }
        if dist.world_size > 1 {
            // Identical starting weights everywhere, fresh or resumed.
            dist.broadcast_tensors(
                &weights::named_tensors(&clip.model.vs)
                    .into_iter()
                    .map(|(_, t)| t)
                    .collect::<Vec<_>>(),
            )
            .context("broadcasting rank 0's parameters")?;
            if main {
                eprintln!(
                    "data parallel: {} ranks ({}), global batch {} = {} x {} x {}",
                    dist.world_size,
                    env.launcher,
                    dist.world_size * step_size,
                    dist.world_size,
                    t.grad_accum_steps,
                    t.micro_batch_size
                );
            }
        }
        let mut tb = if main {
            Some(TensorBoard::new(&out.join("tensorboard"))?)
        } else {
            None
        };
        let amp = match (t.precision, device.is_cuda()) {
            (Precision::Bf16, _) | (Precision::Auto, true) => Some(AutocastDtype::BFloat16),
            _ => None,
        };
        let train_set = Arc::new(Dataset {
            samples: train_samples,
        });
        let loader_cfg = LoaderConfig {
            batch_size: step_size,
            workers: cfg.data.workers,
            prefetch: cfg.data.prefetch,
            seed: t.seed,
            shuffle: true,
            rank: dist.rank,
            world_size: dist.world_size,
            on_error: cfg.data.on_error,
            drop_last: true,
            augment: cfg.data.augment.clone(),
            epochs: Some(t.epochs),
        };
        let (h, w) = clip.preprocess.output_size();
        let mut loader = Loader::start(
            train_set.clone(),
            captioner.clone(),
            clip.preprocess.clone(),
            loader_cfg,
            state.position,
        )?;
        let progress = if main {
            Progress::new(total_steps, state.step)
        } else {
            Progress::quiet()
        };
        let params = weights::named_tensors(&clip.model.vs);
        let (start, start_samples) = (Instant::now(), state.samples_seen);
        let mut last_loss = f64::NAN;
        let mut validation = None;
        let mut stopped_by = "end of training".to_string();

        while state.step < stop_at {
            // Every rank stops at the same step, whichever got the signal.
            if dist.any(stop.load(Ordering::SeqCst))? {
                stopped_by = "signal".into();
                break;
            }
            let batch = loader.next();
            // Ranks run out of data together (their shares are equally long), but agree anyway: a
            // rank that stopped alone would leave the others waiting in a collective.
            if dist.any(batch.is_none())? {
                break;
            }
            let batch = batch.expect("checked above")?;
            state.skipped_samples += batch.skipped.len() as u64;
            for s in &batch.skipped {
                eprintln!("rank {}: skipped {s}", dist.rank);
            }
            let n = batch.samples.len() as i64;
            let pixels = Tensor::from_slice(&batch.pixels).view([n, 3, h as i64, w as i64]);
            let (ids, mask) = clip.tokenize(&batch.captions)?;
            let micro: Vec<MicroBatch> = (0..n)
                .step_by(t.micro_batch_size)
                .map(|s| {
                    let b = (t.micro_batch_size as i64).min(n - s);
                    MicroBatch {
                        pixel_values: pixels.narrow(0, s, b).to(device),
                        input_ids: ids.narrow(0, s, b).to(device),
                        attention_mask: mask.narrow(0, s, b).to(device),
                    }
                })
                .collect();
            let (mut stats, mean_of_ranks) = match &objective {
                Objective::Contrastive => (
                    accumulate_gradients(&clip.model, &micro, t.accumulation, amp, dist)?,
                    t.accumulation == Accumulation::PerMicroBatch,
                ),
                Objective::Classify { labels, .. } => {
                    let batch_labels = Tensor::from_slice(
                        &batch.samples.iter().map(|&i| labels[i]).collect::<Vec<_>>(),
                    )
                    .to(device);
                    let head = head.as_ref().expect("attached for Classify");
                    (
                        head.accumulate_gradients(&clip.model, &micro, &batch_labels, amp),
                        true,
                    )
                }
            };
            if dist.world_size > 1 {
                all_reduce_gradients(dist, &params, mean_of_ranks, &["logit_scale"])?;
                // The same loss on every rank, so they agree on skipping a non-finite step.
                (stats.loss, stats.accuracy) = dist.mean2(stats.loss, stats.accuracy)?;
            }
            if !stats.loss.is_finite() {
                match t.on_nonfinite {
                    OnNonFinite::Skip => {
                        opt.zero_grad();
                        state.skipped_steps += 1;
                        state.position = batch.next;
                        progress.println(&format!(
                            "step {}: loss is {}; step skipped ({} so far)",
                            state.step + 1,
                            stats.loss,
                            state.skipped_steps
                        ));
                        continue;
                    }
                    OnNonFinite::Stop => {
                        opt.zero_grad();
                        checkpoints.save(dist, &clip, &opt, &mut state)?;
                        bail!("loss became {} at step {}; state before it saved in {} (lower optim.lr, or set train.on_nonfinite: skip)", stats.loss, state.step + 1, ckpt_root.display());
                    }
                }
            }
            let lr = cfg.optim.lr_at(state.step, total_steps);
            let grad_norm = optimizer_step(&clip.model, &mut opt, lr, cfg.optim.max_grad_norm)?;
            state.step += 1;
            state.samples_seen += (n as u64) * dist.world_size as u64;
            state.position = batch.next;
            last_loss = stats.loss;

            let rate = (state.samples_seen - start_samples) as f64 / start.elapsed().as_secs_f64();
            let scale = clip.model.logit_scale().exp().double_value(&[]);
            if let Some(tb) = tb.as_mut() {
                for (tag, v) in [
                    ("train/loss", stats.loss),
                    ("train/lr", lr),
                    ("train/logit_scale", scale),
                    ("train/grad_norm", grad_norm),
                    ("train/samples_per_s", rate),
                    ("train/batch_accuracy", stats.accuracy),
                ] {
                    tb.scalar(tag, v, state.step);
                }
            }
            let log_now = state.step % t.log_every.max(1) == 0 || state.step == stop_at;
            progress.update(
                state.step,
                total_steps,
                &format!(
                    "loss {:.4} acc {:.3} lr {lr:.2e} {rate:.1} samples/s",
                    stats.loss, stats.accuracy
                ),
                log_now,
            );

            let epoch_end = state.step % steps_per_epoch == 0;
            if let (true, Some(tb)) = (
                t.eval_every > 0 && state.step % t.eval_every == 0 && !val_samples.is_empty(),
                tb.as_mut(),
            ) {
                let m = validate(&clip, &val_samples, &captioner, &g, t.micro_batch_size)?;
                m.log(tb, state.step);
                progress.println(&format!("step {}: {}", state.step, m.line()));
                validation = Some(m);
            }
            if epoch_end || state.step % t.checkpoint_every.max(1) == 0 {
                checkpoints.save(dist, &clip, &opt, &mut state)?;
            }
            if let Some(tb) = tb.as_mut() {
                tb.flush();
            }
        }
        drop(loader);
        if state.step < stop_at && stopped_by == "end of training" {
            stopped_by = "data exhausted".into();
        } else if state.step == stop_at && stop_at < total_steps {
            stopped_by = format!("max steps ({stop_at})");
        }
        let mut export = None;
        checkpoints.save(dist, &clip, &opt, &mut state)?;
        if let Some(tb) = tb.as_mut() {
            if stopped_by != "signal" {
                if !val_samples.is_empty() {
                    let m = validate(&clip, &val_samples, &captioner, &g, t.micro_batch_size)?;
                    m.log(tb, state.step);
                    eprintln!("validation: {}", m.line());
                    validation = Some(m);
                }
                if state.step == total_steps {
                    clip.save(&out.join("export"))?;
                    export = Some(out.join("export"));
                }
            }
            tb.flush();
        }
        let elapsed = start.elapsed().as_secs_f64();
        let summary = Summary {
            steps: state.step,
            total_steps,
            samples_seen: state.samples_seen,
            samples_per_s: (state.samples_seen - start_samples) as f64 / elapsed.max(1e-9),
            final_loss: last_loss,
            skipped_steps: state.skipped_steps,
            skipped_samples: state.skipped_samples,
            train_samples: train_set.samples.len(),
            val_samples: val_samples.len(),
            validation,
            stopped_by,
            export,
        };
        if main {
            crate::tensor_io::write_atomic(
                &out.join("summary.json"),
                &serde_json::to_vec_pretty(&summary)?,
            )?;
        }
        // Nobody leaves while rank 0 still writes: a launcher would read an early exit as the end.
        dist.barrier()?;
        Ok((summary, clip))
    }
}
