//! The training loop, read top to bottom: [`Trainer::new`] builds the model, optimizer, data
//! and sinks and resumes; [`Trainer::run`] repeats [`Trainer::step`] (micro-batches →
//! gradients in either accumulation mode → all-reduce → AdamW) and [`Trainer::after_step`]
//! (logging, validation, checkpoints) until a [`StopReason`]; [`Trainer::finish`] saves,
//! validates, exports and writes the summary. Rank 0 alone (`is_main`) writes anything.

use super::checkpoint::{self, TrainState};
use super::config_change::{self, DataFingerprint};
use super::logger::{MetricSink, Progress, TensorBoard};
use super::objective::Objective;
use super::optim::AdamW;
use super::step::{optimizer_step, MicroBatch, StepStats};
use super::validate::{validate, ValMetrics};
use crate::config::{Config, FreezeConfig, OnNonFinite, Precision};
use crate::data::loader::{Batch, Loader, LoaderConfig, Position};
use crate::data::{Dataset, Sample};
use crate::dist::{all_reduce_gradients, Dist, DistEnv};
use crate::formats::pretrained::Pretrained;
use crate::formats::weights;
use crate::geo::Gazetteer;
use crate::interrupt::{self, Interrupted};
use crate::model::{parse_device, ClipConfig};
use crate::seed::sample_seed;
use crate::shim::AutocastDtype;
use crate::text::Captioner;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub steps: u64,
    pub total_steps: u64,
    pub samples_seen: u64,
    pub samples_per_s: f64,
    pub final_loss: Option<f64>,
    pub skipped_steps: u64,
    pub skipped_samples: u64,
    pub train_samples: usize,
    pub val_samples: usize,
    pub validation: Option<ValMetrics>,
    pub stopped_by: StopReason,
    /// The Hugging Face directory written at the end of training (none when stopped early).
    pub export: Option<PathBuf>,
    /// The newest checkpoint: where a rerun resumes, and what `streetclip export` takes.
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
}

/// Why a run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum StopReason {
    /// Every configured step is done (the model is exported).
    EndOfTraining,
    /// `--max-steps` / `train.max_steps` reached before the end.
    MaxSteps { at: u64 },
    /// SIGINT/SIGTERM: state saved, the process exits with 128 + signal.
    Signal { signal: i32 },
    /// The loader ran dry before the last step (unreadable samples left batches short).
    DataExhausted,
}

/// Run options from the command line.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop after this many optimizer steps (the schedule still spans the whole run).
    pub max_steps: Option<u64>,
    /// Resume even when the config differs in settings that change the result.
    pub allow_config_change: bool,
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

/// The autocast `train.precision` asks for on `device` (`auto`: bf16 on CUDA, none on the CPU).
pub fn autocast_for(precision: Precision, device: tch::Device) -> Option<AutocastDtype> {
    match (precision, device.is_cuda()) {
        (Precision::Bf16, _) | (Precision::Auto, true) => Some(AutocastDtype::BFloat16),
        _ => None,
    }
}

/// Locks parameters as `freeze` says and those the objective never uses; returns how many
/// remain trainable.
fn apply_freeze(clip: &mut Pretrained, freeze: &FreezeConfig, objective: &dyn Objective) -> usize {
    let (vision_layers, text_layers) = (
        clip.model.config.vision_config.num_hidden_layers as usize,
        clip.model.config.text_config.num_hidden_layers as usize,
    );
    let mut trainable = 0;
    for (name, var) in clip.model.vs.variables() {
        let vision = name.starts_with("vision_model") || name.starts_with("visual_projection");
        let text = name.starts_with("text_model") || name.starts_with("text_projection");
        let mut train =
            !(vision && freeze.vision || text && freeze.text || objective.unused(&name));
        if let (true, Some(n)) = (train, freeze.last_n_blocks) {
            let layers = if vision { vision_layers } else { text_layers };
            let block = name
                .split(".layers.")
                .nth(1)
                .and_then(|r| r.split('.').next())
                .and_then(|i| i.parse::<usize>().ok());
            // Embeddings and early blocks lock; the last n blocks, final norms, projections and
            // the temperature train.
            train = match block {
                Some(i) => i + n >= layers,
                None => !name.contains("embeddings") && !name.contains("pre_layrnorm"),
            };
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
    /// Rank 0's background writer.
    writer: checkpoint::Writer,
    /// The step of the newest checkpoint (written or being written).
    last_step: u64,
}

impl Checkpoints<'_> {
    /// Every rank's loader position gathered to rank 0, which copies the state to host memory
    /// and writes it in the background. All ranks call this at the same steps.
    fn save(
        &mut self,
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
            let snapshot = checkpoint::Snapshot::take(&clip.model, opt, state, self.config_yaml)?;
            self.writer.submit(snapshot)?;
        }
        self.last_step = state.step;
        Ok(())
    }

    /// Waits until the newest checkpoint is on disk.
    fn wait(&mut self) -> Result<()> {
        self.writer.finish().map(|_| ())
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
pub fn split(samples: &[Sample], fraction: f64, seed: u64) -> (Vec<Sample>, Vec<Sample>) {
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

/// This process's place in the job and its device (torchrun, SLURM, or a single process).
pub fn join_job(cfg: &Config) -> Result<(DistEnv, Dist, tch::Device)> {
    let env = DistEnv::from_env()?;
    let device = device_for(cfg, &env)?;
    let dist = Dist::init(
        &env,
        cfg.dist.backend_for(device),
        device,
        cfg.dist.timeout(),
    )?;
    dist.start_heartbeat(&env, cfg.dist.heartbeat_timeout());
    Ok((env, dist, device))
}

/// One training run's fixed inputs.
pub struct Run<'a> {
    pub cfg: &'a Config,
    /// The resolved config, saved as is beside the run and in every checkpoint.
    pub config_yaml: &'a str,
    pub out: &'a Path,
    pub options: &'a RunOptions,
    pub env: &'a DistEnv,
    pub dist: &'a Dist,
    pub device: tch::Device,
}

impl Run<'_> {
    /// Trains on `train_samples` for `objective` (validating on `val_samples`,
    /// geolocation-style, when there are any). Returns the summary and the trained model.
    pub fn train(
        &self,
        train_samples: Vec<Sample>,
        val_samples: Vec<Sample>,
        objective: &mut dyn Objective,
    ) -> Result<(Summary, Pretrained)> {
        let mut trainer = Trainer::new(self, train_samples, val_samples, objective)?;
        if trainer.state.step >= trainer.stop_at {
            return trainer.nothing_to_do();
        }
        let reason = trainer.run()?;
        trainer.finish(reason)
    }
}

/// `train.profile`: the steps this process profiles (after the warm-up step) and where the trace
/// goes.
struct Profiling {
    /// Profiling starts when `state.step` is `from` and stops when it reaches `to`.
    from: u64,
    to: u64,
    active: bool,
    path: PathBuf,
}

/// A batch from the loader and its micro-batches, already on their way to the device.
struct Staged {
    batch: Batch,
    micro: Vec<MicroBatch>,
}

/// A step whose update is queued on the device, not yet known to have been finite.
struct Queued {
    stats: StepStats,
    found_inf: Tensor,
    grad_norm: Tensor,
    lr: f64,
}

/// A completed step's numbers, still on the device until the next log point reads them.
struct StepRecord {
    step: u64,
    lr: f64,
    /// Samples per second since the run (or resume) started, taken on the host.
    rate: f64,
    stats: StepStats,
    grad_norm: Tensor,
    logit_scale: Tensor,
}

/// The held-out samples and what scoring them needs.
struct Validation {
    samples: Vec<Sample>,
    captioner: Arc<Captioner>,
}

/// A run in progress.
struct Trainer<'a> {
    run: &'a Run<'a>,
    objective: &'a dyn Objective,
    clip: Pretrained,
    opt: AdamW,
    params: Vec<(String, Tensor)>,
    state: TrainState,
    checkpoints: Checkpoints<'a>,
    loader: Option<Loader>,
    validation: Validation,
    /// Only on the main rank.
    tensorboard: Option<TensorBoard>,
    progress: Progress,
    amp: Option<AutocastDtype>,
    steps_per_epoch: u64,
    total_steps: u64,
    stop_at: u64,
    train_samples: usize,
    /// Completed steps whose numbers are still on the device (read at the next log point).
    pending: Vec<StepRecord>,
    last_loss: Option<f64>,
    last_validation: Option<ValMetrics>,
    started: (Instant, u64),
    profiling: Option<Profiling>,
    /// Held for the whole run by the main rank: one writer per run directory.
    _lock: Option<std::fs::File>,
}

impl<'a> Trainer<'a> {
    fn new(
        run: &'a Run<'a>,
        train_samples: Vec<Sample>,
        val_samples: Vec<Sample>,
        objective: &'a mut dyn Objective,
    ) -> Result<Self> {
        let (cfg, t, dist) = (run.cfg, &run.cfg.train, run.dist);
        let lock = if dist.is_main() {
            Some(lock_run_dir(run.out)?)
        } else {
            None
        };
        // A fresh model's initial weights come from libtorch's generator.
        tch::manual_seed(t.seed as i64);
        let mut clip = build_model(cfg, run.device)?;
        objective.prepare(&mut clip)?;
        if apply_freeze(&mut clip, &t.freeze, objective) == 0 {
            bail!("train.freeze leaves no parameter to train");
        }
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
        let total_steps = steps_per_epoch
            .checked_mul(t.epochs)
            .filter(|&n| n <= crate::config::MAX_STEPS)
            .with_context(|| format!("train.epochs = {} x {steps_per_epoch} steps per epoch is more than {} steps: lower train.epochs", t.epochs, crate::config::MAX_STEPS))?;
        let stop_at = run
            .options
            .max_steps
            .or(t.max_steps)
            .unwrap_or(total_steps)
            .min(total_steps);
        let mut opt = AdamW::new(&clip.model.vs, &cfg.optim);
        let root = run.out.join("checkpoints");
        if dist.is_main() {
            checkpoint::remove_partial(&root);
        }
        let data = DataFingerprint::of(&train_samples, &val_samples);
        let state = resume(run, &root, &mut clip, &mut opt, data)?;
        let checkpoints = Checkpoints {
            writer: checkpoint::Writer::new(root.clone(), t.keep_checkpoints),
            root,
            config_yaml: run.config_yaml,
            last_step: state.step,
        };
        if dist.world_size > 1 {
            // Identical starting weights everywhere, fresh or resumed.
            let tensors: Vec<Tensor> = weights::named_tensors(&clip.model.vs)
                .into_iter()
                .map(|(_, t)| t)
                .collect();
            dist.broadcast_tensors(&tensors)
                .context("broadcasting rank 0's parameters")?;
            if dist.is_main() {
                eprintln!(
                    "data parallel: {} ranks ({}), global batch {} = {} x {} x {}",
                    dist.world_size,
                    run.env.launcher,
                    dist.world_size * step_size,
                    dist.world_size,
                    t.grad_accum_steps,
                    t.micro_batch_size
                );
            }
        }
        let captioner = Arc::new(Captioner::new(&cfg.captions)?);
        let train_count = train_samples.len();
        let loader = (state.step < stop_at)
            .then(|| start_loader(cfg, dist, train_samples, &captioner, &clip, state.position))
            .transpose()?;
        let tensorboard = if dist.is_main() {
            Some(TensorBoard::new(&run.out.join("tensorboard"))?)
        } else {
            None
        };
        let progress = if dist.is_main() {
            Progress::new(total_steps, state.step)
        } else {
            Progress::quiet()
        };
        let amp = autocast_for(t.precision, run.device);
        interrupt::install();
        let profiling = (t.profile > 0).then(|| Profiling {
            from: state.step + 1,
            to: state.step + 1 + t.profile,
            active: false,
            path: run
                .out
                .join("profile")
                .join(format!("trace-rank{}.json", dist.rank)),
        });
        Ok(Self {
            profiling,
            run,
            objective,
            params: weights::named_tensors(&clip.model.vs),
            clip,
            opt,
            started: (Instant::now(), state.samples_seen),
            state,
            checkpoints,
            loader,
            validation: Validation {
                samples: val_samples,
                captioner,
            },
            tensorboard,
            progress,
            amp,
            steps_per_epoch,
            total_steps,
            stop_at,
            train_samples: train_count,
            pending: Vec::new(),
            last_loss: None,
            last_validation: None,
            _lock: lock,
        })
    }

    /// Steps until something stops the run. Every rank takes the same decisions.
    fn run(&mut self) -> Result<StopReason> {
        // The next batch, fetched while the current step runs (`Some(None)`: the data ran out).
        let mut staged: Option<Option<Staged>> = None;
        loop {
            if self.state.step >= self.stop_at {
                return Ok(if self.stop_at < self.total_steps {
                    StopReason::MaxSteps { at: self.stop_at }
                } else {
                    StopReason::EndOfTraining
                });
            }
            // Whichever rank got the signal, all stop at the same step.
            if self.run.dist.any(interrupt::received().is_some())? {
                return Ok(StopReason::Signal {
                    signal: interrupt::received().unwrap_or(libc::SIGTERM),
                });
            }
            let next = match staged.take() {
                Some(next) => next,
                None => self.fetch()?,
            };
            let Some(current) = next else {
                return Ok(StopReason::DataExhausted);
            };
            let dropped = self
                .loader
                .as_ref()
                .expect("started")
                .take_dropped_skips(current.batch.epoch);
            self.count_skips(&dropped);
            self.count_skips(&current.batch.skipped);
            self.profile(false)?;
            let queued = self.queue_step(&current)?;
            // The next batch's tokenising and host-to-device copies overlap this step's kernels.
            if self.state.step + 1 < self.stop_at {
                staged = Some(self.fetch()?);
            }
            let record = self.finish_step(queued, &current.batch)?;
            self.after_step(record)?;
        }
    }

    /// Starts or stops `train.profile`'s profiler when its steps begin or end (`end`: the run
    /// stops, so a profile in progress is written now).
    fn profile(&mut self, end: bool) -> Result<()> {
        let Some(p) = self.profiling.as_mut() else {
            return Ok(());
        };
        let step = self.state.step;
        if !p.active && !end && step == p.from {
            crate::shim::profiler_start(self.run.device)?;
            p.active = true;
        } else if p.active && (end || step >= p.to) {
            if let Some(dir) = p.path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            crate::shim::profiler_stop(&p.path)?;
            let line = format!(
                "profile of steps {}..{step} written to {} (open it in https://ui.perfetto.dev)",
                p.from + 1,
                p.path.display()
            );
            self.progress.println(&line);
            self.profiling = None;
        }
        Ok(())
    }

    /// The loader's next batch as micro-batches on their way to the device; None when the data
    /// ran out. Ranks run out together (their shares are equally long) but agree anyway: a rank
    /// that stopped alone would leave the others waiting in a collective.
    fn fetch(&mut self) -> Result<Option<Staged>> {
        let batch = self.loader.as_mut().expect("started").next();
        if self.run.dist.any(batch.is_none())? {
            return Ok(None);
        }
        let batch = batch.expect("checked above")?;
        let micro = self.micro_batches(&batch)?;
        Ok(Some(Staged { batch, micro }))
    }

    /// Queues one optimizer step on the device: gradients, the ranks' reduction, clipping and
    /// the update, which the fused kernel cancels by itself when the loss is not finite.
    fn queue_step(&mut self, staged: &Staged) -> Result<Queued> {
        let dist = self.run.dist;
        let mut stats = self.objective.accumulate(
            &self.clip.model,
            &staged.micro,
            &staged.batch.samples,
            self.amp,
            dist,
        )?;
        if dist.world_size > 1 {
            all_reduce_gradients(
                dist,
                &self.params,
                self.objective.averages_ranks(),
                &["logit_scale"],
            )?;
            // The same loss on every rank, so they agree on skipping a non-finite step.
            let both = dist.mean_over_ranks(&Tensor::stack(&[&stats.loss, &stats.accuracy], 0))?;
            (stats.loss, stats.accuracy) = (both.get(0), both.get(1));
        }
        let found_inf = stats.found_inf();
        let lr = self.run.cfg.optim.lr_at(self.state.step, self.total_steps);
        let grad_norm = optimizer_step(
            &self.clip.model,
            &mut self.opt,
            lr,
            self.run.cfg.optim.max_grad_norm,
            Some(&found_inf),
        )?;
        Ok(Queued {
            stats,
            found_inf,
            grad_norm,
            lr,
        })
    }

    /// The step's one host read (was the loss finite?) and its bookkeeping; `None` when a
    /// non-finite loss skipped it (its batch is used up and the schedule moves on, as with
    /// PyTorch's GradScaler; the weights and AdamW's count stay).
    fn finish_step(&mut self, q: Queued, batch: &Batch) -> Result<Option<StepRecord>> {
        let (dist, t) = (self.run.dist, &self.run.cfg.train);
        if q.found_inf.double_value(&[]) != 0.0 {
            self.opt.undo_count();
            let loss = q.stats.loss.double_value(&[]);
            if t.on_nonfinite == OnNonFinite::Stop {
                self.save_checkpoint()?;
                self.checkpoints.wait()?;
                bail!("loss became {loss} at step {}; state before it saved in {} (lower optim.lr, or set train.on_nonfinite: skip)", self.state.step + 1, self.checkpoints.root.display());
            }
            self.state.skipped_steps += 1;
            self.state.step += 1;
            self.state.position = batch.next;
            let line = format!(
                "step {}: loss is {loss}; step skipped ({} so far)",
                self.state.step, self.state.skipped_steps
            );
            self.progress.println(&line);
            return Ok(None);
        }
        self.state.step += 1;
        self.state.samples_seen += (batch.samples.len() * dist.world_size) as u64;
        self.state.position = batch.next;
        Ok(Some(StepRecord {
            step: self.state.step,
            lr: q.lr,
            rate: (self.state.samples_seen - self.started.1) as f64
                / self.started.0.elapsed().as_secs_f64(),
            stats: q.stats,
            grad_norm: q.grad_norm,
            logit_scale: tch::no_grad(|| self.clip.model.logit_scale().exp()),
        }))
    }

    fn micro_batches(&self, batch: &Batch) -> Result<Vec<MicroBatch>> {
        let micro = self.run.cfg.train.micro_batch_size;
        micro_batches(&self.clip, batch, micro, self.run.device)
    }

    /// Logging, periodic validation and checkpoints after a step (`None`: a skipped one).
    fn after_step(&mut self, record: Option<StepRecord>) -> Result<()> {
        let t = &self.run.cfg.train;
        let step = self.state.step;
        self.pending.extend(record);
        self.progress.advance(step);
        if step.is_multiple_of(t.log_every) || step == self.stop_at {
            self.log_pending(true)?;
        }
        if t.eval_every > 0 && step.is_multiple_of(t.eval_every) {
            self.validate()?;
        }
        // An epoch end adds a checkpoint only when the newest is checkpoint_every steps old: a
        // short epoch should not stall on writes (they go on in the background, but the host
        // copy of the state still waits for the device).
        let epoch_end = step.is_multiple_of(self.steps_per_epoch)
            && step >= self.checkpoints.last_step + t.checkpoint_every;
        if step.is_multiple_of(t.checkpoint_every) || epoch_end {
            self.save_checkpoint()?;
        }
        Ok(())
    }

    /// Reads the pending steps' numbers from the device in one transfer, writes each step's
    /// TensorBoard scalars and shows the newest (printed as a line when `print`).
    fn log_pending(&mut self, print: bool) -> Result<()> {
        let records = std::mem::take(&mut self.pending);
        if let Some(newest) = records.last() {
            // Stacked on the device, then one copy to the host (one wait for the device).
            let device = self.run.device;
            let scalars: Vec<Tensor> = records
                .iter()
                .flat_map(|r| {
                    [
                        &r.stats.loss,
                        &r.stats.accuracy,
                        &r.grad_norm,
                        &r.logit_scale,
                    ]
                    .map(|t| t.to_kind(Kind::Double).to_device(device))
                })
                .collect();
            let values =
                Vec::<f64>::try_from(Tensor::stack(&scalars, 0).to_device(tch::Device::Cpu))?;
            for (r, v) in records.iter().zip(values.chunks(4)) {
                let [loss, accuracy, grad_norm, scale] = [v[0], v[1], v[2], v[3]];
                if let Some(tb) = self.tensorboard.as_mut() {
                    for (tag, value) in [
                        ("train/loss", loss),
                        ("train/lr", r.lr),
                        ("train/logit_scale", scale),
                        ("train/grad_norm", grad_norm),
                        ("train/samples_per_s", r.rate),
                        ("train/batch_accuracy", accuracy),
                    ] {
                        tb.scalar(tag, value, r.step);
                    }
                }
                self.last_loss = Some(loss);
            }
            let v = &values[values.len() - 4..];
            let line = format!(
                "loss {:.4} acc {:.3} lr {:.2e} {:.1} samples/s",
                v[0], v[1], newest.lr, newest.rate
            );
            self.progress
                .update(newest.step, self.total_steps, &line, print);
        }
        if let Some(tb) = self.tensorboard.as_mut() {
            tb.flush();
        }
        Ok(())
    }

    /// Scores the held-out samples (main rank; no-op without any).
    fn validate(&mut self) -> Result<()> {
        let v = &self.validation;
        if !self.run.dist.is_main() || v.samples.is_empty() {
            return Ok(());
        }
        let cfg = self.run.cfg;
        let m = validate(
            &self.clip,
            &v.samples,
            &v.captioner,
            Gazetteer::bundled()?,
            &cfg.geo.country_prompts,
            cfg.train.micro_batch_size,
            cfg.data.on_error,
        )?;
        if let Some(tb) = self.tensorboard.as_mut() {
            m.log(tb, self.state.step);
        }
        self.progress
            .println(&format!("step {}: {}", self.state.step, m.line()));
        self.last_validation = Some(m);
        Ok(())
    }

    fn save_checkpoint(&mut self) -> Result<()> {
        self.log_pending(false)?;
        self.checkpoints
            .save(self.run.dist, &self.clip, &self.opt, &mut self.state)
    }

    /// Counts and reports samples the loader left out.
    fn count_skips(&mut self, skipped: &[String]) {
        self.state.skipped_samples += skipped.len() as u64;
        for s in skipped {
            self.progress
                .println(&format!("rank {}: skipped {s}", self.run.dist.rank));
        }
    }

    /// Saves, validates and exports as `reason` allows, writes the summary; a signal or a
    /// short data set is an error after that (non-zero exit).
    fn finish(mut self, reason: StopReason) -> Result<(Summary, Pretrained)> {
        self.profile(true)?;
        let loader = self.loader.take().expect("started");
        let dropped = loader.take_dropped_skips(u64::MAX);
        drop(loader);
        self.count_skips(&dropped);
        self.save_checkpoint()?;
        self.checkpoints.wait()?;
        let summary = self.conclude(reason)?;
        // Nobody leaves while rank 0 still writes: a launcher would read an early exit as the end.
        self.run.dist.final_barrier()?;
        match reason {
            StopReason::Signal { signal } => Err(Interrupted { signal }.into()),
            StopReason::DataExhausted => bail!(
                "the data ran out at step {} of {}: {} unreadable samples (listed above) left too few for full batches; fix or remove them and rerun to resume (state saved in {})",
                self.state.step, self.total_steps, self.state.skipped_samples, self.checkpoints.root.display()
            ),
            _ => Ok((summary, self.clip)),
        }
    }

    /// Validates and exports as `reason` allows and writes `summary.json` (rank 0).
    fn conclude(&mut self, reason: StopReason) -> Result<Summary> {
        let main = self.run.dist.is_main();
        let mut export = None;
        if matches!(
            reason,
            StopReason::EndOfTraining | StopReason::MaxSteps { .. }
        ) {
            self.validate()?;
            if let Some(m) = &self.last_validation {
                eprintln!("validation: {}", m.line());
            }
            if reason == StopReason::EndOfTraining && main {
                self.clip.save(&self.run.out.join("export"))?;
                export = Some(self.run.out.join("export"));
            }
        }
        let checkpoint = checkpoint::list(&self.checkpoints.root).pop();
        if let (StopReason::MaxSteps { at }, true, Some(dir)) = (reason, main, &checkpoint) {
            eprintln!(
                "stopped at step {at} of {} (max steps): not exported; `streetclip export --checkpoint {} --out DIR` exports it, and rerunning without --max-steps resumes",
                self.total_steps,
                dir.display()
            );
        }
        let summary = Summary {
            checkpoint,
            ..self.summary(reason, export)
        };
        if main {
            crate::formats::tensor_io::write_atomic(
                &self.run.out.join("summary.json"),
                &serde_json::to_vec_pretty(&summary)?,
            )?;
        }
        Ok(summary)
    }

    fn summary(&self, stopped_by: StopReason, export: Option<PathBuf>) -> Summary {
        let elapsed = self.started.0.elapsed().as_secs_f64();
        Summary {
            steps: self.state.step,
            total_steps: self.total_steps,
            samples_seen: self.state.samples_seen,
            samples_per_s: (self.state.samples_seen - self.started.1) as f64 / elapsed.max(1e-9),
            final_loss: self.last_loss,
            skipped_steps: self.state.skipped_steps,
            skipped_samples: self.state.skipped_samples,
            train_samples: self.train_samples,
            val_samples: self.validation.samples.len(),
            validation: self.last_validation.clone(),
            stopped_by,
            export,
            checkpoint: None,
        }
    }

    /// A rerun of a run already at its stopping step: nothing is trained. A finished run is
    /// recognised by its complete export and its summary; when either is missing or incomplete
    /// (the run was killed or ran out of disk while writing them) both are written again from
    /// the final checkpoint. Otherwise nothing is rewritten.
    fn nothing_to_do(mut self) -> Result<(Summary, Pretrained)> {
        let out = self.run.out;
        let finished = self.state.step >= self.total_steps;
        let previous: Option<Summary> = std::fs::read(out.join("summary.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let incomplete = match &previous {
            _ if !finished => None,
            Some(s) if s.stopped_by == StopReason::EndOfTraining => {
                Pretrained::check_export(&out.join("export"))
                    .err()
                    .map(|e| format!("its export is incomplete ({e:#})"))
            }
            _ => Some("its summary.json is missing or does not record the end of training".into()),
        };
        let main = self.run.dist.is_main();
        let summary = match (incomplete, previous) {
            (Some(why), _) => {
                if main {
                    eprintln!("{} finished training at step {} but {why}: exporting it again from its final checkpoint", out.display(), self.state.step);
                }
                self.conclude(StopReason::EndOfTraining)?
            }
            (None, previous) => {
                if main {
                    eprintln!("{} is already at step {} of {} (stopping at {}): nothing to train; its summary.json and export are complete and left as they are", out.display(), self.state.step, self.total_steps, self.stop_at);
                }
                let reason = match finished {
                    true => StopReason::EndOfTraining,
                    false => StopReason::MaxSteps {
                        at: self.state.step,
                    },
                };
                previous.unwrap_or_else(|| self.summary(reason, None))
            }
        };
        self.run.dist.final_barrier()?;
        Ok((summary, self.clip))
    }
}

/// A loader batch as micro-batches of `micro` rows on `device` (tokenised here).
pub fn micro_batches(
    clip: &Pretrained,
    batch: &Batch,
    micro: usize,
    device: tch::Device,
) -> Result<Vec<MicroBatch>> {
    let (h, w) = clip.preprocess.output_size();
    let n = batch.samples.len() as i64;
    let pixels = Tensor::from_slice(&batch.pixels[..]).view([n, 3, h as i64, w as i64]);
    let (ids, mask) = clip.tokenize(&batch.captions)?;
    let size = micro as i64;
    Ok((0..n)
        .step_by(micro)
        .map(|s| {
            let b = size.min(n - s);
            MicroBatch {
                pixel_values: to_device(&pixels.narrow(0, s, b), device),
                input_ids: to_device(&ids.narrow(0, s, b), device),
                attention_mask: to_device(&mask.narrow(0, s, b), device),
            }
        })
        .collect())
}

/// `t` on `device`; to a GPU through pinned host memory, copied without blocking the host (the
/// copy is ordered before the kernels that read it on the same stream).
fn to_device(t: &Tensor, device: tch::Device) -> Tensor {
    if device.is_cuda() {
        t.pin_memory(device)
            .to_device_(device, t.kind(), true, false)
    } else {
        t.to_device(device)
    }
}

/// Locks `out` for this process (created if needed) until the returned file is dropped or the
/// process dies: two runs writing one directory would mix their checkpoints.
fn lock_run_dir(out: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create run directory {}", out.display()))?;
    let path = out.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if file.try_lock().is_err() {
        bail!("run directory {} is in use by another streetclip process: wait for it to end (or stop it), or choose another --out", out.display());
    }
    Ok(file)
}

/// Restores the newest usable checkpoint under `root`; refuses a config that changed the
/// result since, unless allowed; writes the run's config.yaml (with any accepted changes).
fn resume(
    run: &Run,
    root: &Path,
    clip: &mut Pretrained,
    opt: &mut AdamW,
    data: DataFingerprint,
) -> Result<TrainState> {
    let mut notes = vec![];
    let allowed = run.options.allow_config_change;
    let state = match checkpoint::resume(root, &mut clip.model, opt)? {
        None => TrainState::default(),
        Some((dir, mut state)) => {
            let saved = std::fs::read_to_string(dir.join("config.yaml"))
                .with_context(|| format!("checkpoint {} has no config.yaml", dir.display()))?;
            let changes = config_change::result_changes(&saved, run.config_yaml)?;
            notes.extend(config_change::check(&changes, allowed, state.step)?);
            notes.extend(config_change::check_data(
                state.data.as_ref(),
                &data,
                allowed,
                state.step,
            )?);
            if run.dist.is_main() {
                eprintln!("resuming from {} (step {})", dir.display(), state.step);
                for n in &notes {
                    eprintln!("{n}");
                }
            }
            state.position = resume_position(&state, run.dist);
            state
        }
    };
    let state = TrainState {
        data: Some(data),
        ..state
    };
    if run.dist.is_main() {
        let mut text = run.config_yaml.to_string();
        for n in notes {
            text.push_str(&format!("# {n}\n"));
        }
        crate::formats::tensor_io::write_atomic(&run.out.join("config.yaml"), text.as_bytes())?;
    }
    Ok(state)
}

/// The training loader of `cfg` for this rank, from `from`.
pub fn start_loader(
    cfg: &Config,
    dist: &Dist,
    samples: Vec<Sample>,
    captioner: &Arc<Captioner>,
    clip: &Pretrained,
    from: Position,
) -> Result<Loader> {
    let t = &cfg.train;
    let loader_cfg = LoaderConfig {
        batch_size: t.micro_batch_size * t.grad_accum_steps,
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
    Loader::start(
        Arc::new(Dataset { samples }),
        captioner.clone(),
        clip.preprocess.clone(),
        loader_cfg,
        from,
    )
}
