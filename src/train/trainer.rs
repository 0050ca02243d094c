//! The training loop. [`Trainer::new`] builds the model, optimizer, data and sinks and resumes
//! (the pieces in `setup`, `run_dir`, `batches`); [`Trainer::run`] is the loop, every step's
//! actions in view — stop check, next batch, learning rate, accumulated gradients, the ranks'
//! reduction, clipping and AdamW, the overlapped fetch, the one host read, then logging,
//! validation and checkpoints when due — until a [`StopReason`]; [`Trainer::finish`] saves,
//! validates, exports and writes the summary. Rank 0 alone (`is_main`) writes anything.

use super::batches::{micro_batches, start_loader};
use super::checkpoint::{self, TrainState};
use super::config_change::DataFingerprint;
use super::logger::{MetricSink, Progress, TensorBoard};
use super::objective::Objective;
use super::optim::AdamW;
use super::param_groups::ParamGroups;
use super::run_dir::{lock_run_dir, resume, Checkpoints};
use super::setup::{apply_freeze, autocast_for, build_model, memory_and_groups};
use super::step::{optimizer_step, MicroBatch, StepStats};
use super::summary::{Best, RunOptions, StopReason, Summary, BEST_DIR, BEST_SUMMARY};
use super::validate::{validate, ValMetrics};
use crate::config::{Config, KeepBest, OnNonFinite};
use crate::data::loader::{Batch, Loader};
use crate::data::Sample;
use crate::dist::{all_reduce_gradients, Dist, DistEnv};
use crate::formats::pretrained::Pretrained;
use crate::formats::weights;
use crate::geo::Gazetteer;
use crate::interrupt::{self, Interrupted};
use crate::shim::AutocastDtype;
use crate::text::Captioner;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::{Kind, Tensor};

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

/// A completed step's numbers, still on the device until the next log point reads them.
struct StepRecord {
    step: u64,
    lr: f64,
    /// Samples per second since the run (or resume) started, taken on the host.
    rate: f64,
    stats: StepStats,
    grad_norm: Tensor,
    logit_scale: Tensor,
    /// Seconds the step waited for the loader, and the share of its wall time that was.
    data_wait: (f64, f64),
}

/// The wall time of the step in progress and how much of it went waiting for data.
struct StepClock {
    began: Instant,
    waited: std::time::Duration,
}

impl StepClock {
    fn start() -> Self {
        Self {
            began: Instant::now(),
            waited: std::time::Duration::ZERO,
        }
    }

    /// `(seconds waited, share of the step's wall time)`, and the clock restarted.
    fn lap(&mut self) -> (f64, f64) {
        let (waited, total) = (
            self.waited.as_secs_f64(),
            self.began.elapsed().as_secs_f64(),
        );
        *self = Self::start();
        (waited, (waited / total.max(1e-9)).min(1.0))
    }
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

/// How many steps a run has: per epoch (per rank), in all, and where this invocation stops.
struct Schedule {
    steps_per_epoch: u64,
    total_steps: u64,
    stop_at: u64,
}

impl Schedule {
    fn of(run: &Run, train_samples: usize) -> Result<Self> {
        let (t, world) = (&run.cfg.train, run.dist.world_size);
        // Per rank; the step's global batch is world_size times this.
        let step_size = t.micro_batch_size * t.grad_accum_steps;
        let steps_per_epoch = (train_samples / world / step_size) as u64;
        if steps_per_epoch == 0 {
            bail!(
                "{train_samples} training samples are fewer than one step's batch ({world} ranks x {} x {})",
                t.micro_batch_size,
                t.grad_accum_steps
            );
        }
        let max = crate::config::MAX_STEPS;
        let total_steps = steps_per_epoch
            .checked_mul(t.epochs)
            .filter(|&n| n <= max)
            .with_context(|| format!("train.epochs = {} x {steps_per_epoch} steps per epoch is more than {max} steps: lower train.epochs", t.epochs))?;
        let requested = run.options.max_steps.or(t.max_steps);
        let stop_at = requested.unwrap_or(total_steps).min(total_steps);
        Ok(Self {
            steps_per_epoch,
            total_steps,
            stop_at,
        })
    }
}

/// The run's model, prepared for its objective, with the parameters `train.freeze` or a
/// frozen `optim.groups` entry locks (and those the objective never uses) not requiring
/// gradients, and every parameter's optimizer group. A fresh model's initial weights come from
/// libtorch's generator, seeded by `train.seed`.
fn trainable_model(run: &Run, objective: &mut dyn Objective) -> Result<(Pretrained, ParamGroups)> {
    let t = &run.cfg.train;
    tch::manual_seed(t.seed as i64);
    let mut clip = build_model(run.cfg, run.device)?;
    objective.prepare(&mut clip)?;
    let groups = ParamGroups::resolve(&clip.model, &run.cfg.optim)?;
    if apply_freeze(&mut clip, &t.freeze, &groups, objective) == 0 {
        bail!("train.freeze and optim.groups leave no parameter to train");
    }
    Ok((clip, groups))
}

/// Rank 0's weights on every rank, fresh or resumed, and the job's shape said once.
fn same_weights_on_every_rank(run: &Run, clip: &Pretrained, progress: &Progress) -> Result<()> {
    let (t, dist) = (&run.cfg.train, run.dist);
    if dist.world_size == 1 {
        return Ok(());
    }
    let tensors: Vec<Tensor> = weights::named_tensors(&clip.model.vs)
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    dist.broadcast_tensors(&tensors)
        .context("broadcasting rank 0's parameters")?;
    progress.println(&format!(
        "data parallel: {} ranks ({}), global batch {} = {} x {} x {}",
        dist.world_size,
        run.env.launcher,
        dist.world_size * t.micro_batch_size * t.grad_accum_steps,
        dist.world_size,
        t.grad_accum_steps,
        t.micro_batch_size
    ));
    Ok(())
}

impl Profiling {
    /// `train.profile`'s steps after the warm-up step of this invocation, if profiling is on.
    fn of(run: &Run, step: u64) -> Option<Self> {
        let profile = run.cfg.train.profile;
        let trace = format!("trace-rank{}.json", run.dist.rank);
        (profile > 0).then(|| Profiling {
            from: step + 1,
            to: step + 1 + profile,
            active: false,
            path: run.out.join("profile").join(trace),
        })
    }
}

impl<'a> Trainer<'a> {
    fn new(
        run: &'a Run<'a>,
        train_samples: Vec<Sample>,
        val_samples: Vec<Sample>,
        objective: &'a mut dyn Objective,
    ) -> Result<Self> {
        let (cfg, t, dist) = (run.cfg, &run.cfg.train, run.dist);
        let lock = dist.is_main().then(|| lock_run_dir(run.out)).transpose()?;
        let (mut clip, groups) = trainable_model(run, objective)?;
        let schedule = Schedule::of(run, train_samples.len())?;
        let mut opt = AdamW::new(&clip.model.vs, &cfg.optim, &groups);
        let root = run.out.join("checkpoints");
        let data = DataFingerprint::of(&train_samples, &val_samples);
        let (state, said) = resume(run, &root, &mut clip, &mut opt, data)?;
        let progress = match dist.is_main() {
            true => Progress::new(schedule.total_steps, state.step),
            false => Progress::quiet(),
        };
        for line in said
            .iter()
            .chain(&memory_and_groups(&clip.model, &groups, &cfg.optim))
        {
            progress.println(line);
        }
        let checkpoints = Checkpoints {
            writer: checkpoint::Writer::new(root.clone(), t.keep_checkpoints),
            root,
            config_yaml: run.config_yaml,
            last_step: state.step,
        };
        same_weights_on_every_rank(run, &clip, &progress)?;
        let captioner = Arc::new(Captioner::new(&cfg.captions)?);
        let train_count = train_samples.len();
        let loader = (state.step < schedule.stop_at)
            .then(|| start_loader(cfg, dist, train_samples, &captioner, &clip, state.position))
            .transpose()?;
        let tensorboard = dist
            .is_main()
            .then(|| TensorBoard::new(&run.out.join("tensorboard")))
            .transpose()?;
        interrupt::install();
        Ok(Self {
            profiling: Profiling::of(run, state.step),
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
            amp: autocast_for(t.precision, run.device),
            steps_per_epoch: schedule.steps_per_epoch,
            total_steps: schedule.total_steps,
            stop_at: schedule.stop_at,
            train_samples: train_count,
            pending: Vec::new(),
            last_loss: None,
            last_validation: None,
            _lock: lock,
        })
    }

    /// Steps until something stops the run, as nanoGPT's loop reads. Every rank takes the same
    /// decisions.
    fn run(&mut self) -> Result<StopReason> {
        let (cfg, dist) = (self.run.cfg, self.run.dist);
        let mut clock = StepClock::start();
        let mut next = self.fetch(&mut clock)?;
        loop {
            if let Some(reason) = self.stop_reason()? {
                return Ok(reason);
            }
            let Some(current) = next.take() else {
                return Ok(StopReason::DataExhausted);
            };
            self.count_skips(&current.batch);
            self.profile(false)?;
            let lr = cfg.optim.lr_at(self.state.step, self.total_steps);
            // Gradients of the whole batch (either accumulation mode), then the ranks' mean.
            let mut stats = self.objective.accumulate(
                &self.clip.model,
                &current.micro,
                &current.batch.samples,
                self.amp,
                dist,
            )?;
            self.reduce_over_ranks(&mut stats)?;
            // Clipping and AdamW, which the fused kernel cancels by itself for a non-finite loss.
            let found_inf = stats.found_inf();
            let max_norm = cfg.optim.max_grad_norm;
            let grad_norm = optimizer_step(
                &self.clip.model,
                &mut self.opt,
                lr,
                max_norm,
                Some(&found_inf),
            )?;
            // The next batch's tokenising and host-to-device copies overlap this step's kernels.
            if self.state.step + 1 < self.stop_at {
                next = self.fetch(&mut clock)?;
            }
            // The step's one host read: was the loss finite?
            if found_inf.double_value(&[]) != 0.0 {
                self.skip_step(&stats, &current.batch)?;
                clock.lap();
            } else {
                self.count_step(&current.batch);
                let logit_scale = tch::no_grad(|| self.clip.model.logit_scale().exp());
                let (step, rate) = (self.state.step, self.rate());
                self.pending.push(StepRecord {
                    step,
                    lr,
                    rate,
                    stats,
                    grad_norm,
                    logit_scale,
                    data_wait: clock.lap(),
                });
            }
            self.log_validate_checkpoint_when_due()?;
        }
    }

    /// Why to stop before the next step, if anything says so: the configured or requested last
    /// step, or a signal on any rank (all stop at the same step).
    fn stop_reason(&self) -> Result<Option<StopReason>> {
        if self.state.step >= self.stop_at {
            return Ok(Some(match self.stop_at < self.total_steps {
                true => StopReason::MaxSteps { at: self.stop_at },
                false => StopReason::EndOfTraining,
            }));
        }
        if self.run.dist.any(interrupt::received().is_some())? {
            let signal = interrupt::received().unwrap_or(libc::SIGTERM);
            return Ok(Some(StopReason::Signal { signal }));
        }
        Ok(None)
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
    /// that stopped alone would leave the others waiting in a collective. The time it blocks
    /// waiting for the loader counts on `clock`.
    fn fetch(&mut self, clock: &mut StepClock) -> Result<Option<Staged>> {
        let waiting = Instant::now();
        let batch = self.loader.as_mut().and_then(Loader::next);
        clock.waited += waiting.elapsed();
        if self.run.dist.any(batch.is_none())? {
            return Ok(None);
        }
        let batch = batch.expect("checked above")?;
        let micro = self.run.cfg.train.micro_batch_size;
        let micro = micro_batches(&self.clip, &batch, micro, self.run.device)?;
        Ok(Some(Staged { batch, micro }))
    }

    /// The ranks' gradients averaged (or summed, as the objective says) and the same loss on
    /// every rank, so that they agree on skipping a non-finite step.
    fn reduce_over_ranks(&self, stats: &mut StepStats) -> Result<()> {
        let dist = self.run.dist;
        if dist.world_size == 1 {
            return Ok(());
        }
        let averages = self.objective.averages_ranks();
        all_reduce_gradients(dist, &self.params, averages, &["logit_scale"])?;
        let both = dist.mean_over_ranks(&Tensor::stack(&[&stats.loss, &stats.accuracy], 0))?;
        (stats.loss, stats.accuracy) = (both.get(0), both.get(1));
        Ok(())
    }

    /// A non-finite loss: the state before it saved and an error (`on_nonfinite: stop`), or the
    /// step counted as skipped — its batch is used up and the schedule moves on, as with
    /// PyTorch's GradScaler; the weights and AdamW's count stay.
    fn skip_step(&mut self, stats: &StepStats, batch: &Batch) -> Result<()> {
        self.opt.undo_count();
        let loss = stats.loss.double_value(&[]);
        if self.run.cfg.train.on_nonfinite == OnNonFinite::Stop {
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
        Ok(())
    }

    /// A finished step in the run's state: its number, the samples seen, where the data goes on.
    fn count_step(&mut self, batch: &Batch) {
        self.state.step += 1;
        let world = self.run.dist.world_size;
        self.state.samples_seen += (batch.samples.len() * world) as u64;
        self.state.position = batch.next;
    }

    /// Samples per second since the run (or resume) started, taken on the host.
    fn rate(&self) -> f64 {
        let (since, samples) = self.started;
        (self.state.samples_seen - samples) as f64 / since.elapsed().as_secs_f64()
    }

    /// Logging, periodic validation and checkpoints after a step, when each is due.
    fn log_validate_checkpoint_when_due(&mut self) -> Result<()> {
        let t = &self.run.cfg.train;
        let step = self.state.step;
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
                        ("time/data_wait_s", r.data_wait.0),
                        ("time/data_wait_share", r.data_wait.1),
                    ] {
                        tb.scalar(tag, value, r.step);
                    }
                }
                self.last_loss = Some(loss);
            }
            let v = &values[values.len() - 4..];
            let line = format!(
                "loss {:.4} acc {:.3} lr {:.2e} {:.1} samples/s, {:.0}% waiting for data",
                v[0],
                v[1],
                newest.lr,
                newest.rate,
                100.0 * newest.data_wait.1
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
            &|line| self.progress.println(line),
        )?;
        if let Some(tb) = self.tensorboard.as_mut() {
            m.log(tb, self.state.step);
        }
        self.progress
            .println(&format!("step {}: {}", self.state.step, m.line()));
        if let Some(keep) = cfg.train.keep_best {
            self.keep_if_best(keep, &m)?;
        }
        self.last_validation = Some(m);
        Ok(())
    }

    /// Exports the weights as RUN_DIR/best/ (with best/summary.json) when `m` beats the best
    /// validation so far (or is the first under this `keep_best`).
    fn keep_if_best(&mut self, keep: KeepBest, m: &ValMetrics) -> Result<()> {
        let value = Best::value_in(&keep, m);
        let beats = match &self.state.best {
            Some(best) if best.keep_best == keep => keep.mode.better(value, best.value),
            _ => true,
        };
        if !beats || !value.is_finite() {
            return Ok(());
        }
        let best = Best {
            keep_best: keep,
            value,
            step: self.state.step,
        };
        let dir = self.run.out.join(BEST_DIR);
        let summary = serde_json::to_vec_pretty(&best)?;
        self.clip.save_with_files(&dir, &[BEST_SUMMARY], |d| {
            crate::formats::tensor_io::write_atomic(&d.join(BEST_SUMMARY), &summary)
        })?;
        self.state.best = Some(best);
        self.progress.println(&format!(
            "step {}: the best {:?} so far ({value:.4}): exported to {}",
            best.step,
            keep.metric,
            dir.display()
        ));
        Ok(())
    }

    fn save_checkpoint(&mut self) -> Result<()> {
        self.log_pending(false)?;
        self.checkpoints
            .save(self.run.dist, &self.clip, &self.opt, &mut self.state)
    }

    /// Counts and reports the samples the loader left out of `batch`, and those of a dropped
    /// last partial batch of its epoch.
    fn count_skips(&mut self, batch: &Batch) {
        let dropped = self
            .loader
            .as_ref()
            .map(|l| l.take_dropped_skips(batch.epoch));
        self.report_skips(&dropped.unwrap_or_default());
        self.report_skips(&batch.skipped);
    }

    /// Counts and reports samples the loader left out.
    fn report_skips(&mut self, skipped: &[String]) {
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
        if let Some(loader) = self.loader.take() {
            let dropped = loader.take_dropped_skips(u64::MAX);
            drop(loader);
            self.report_skips(&dropped);
        }
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
                self.progress.println(&format!("validation: {}", m.line()));
            }
            if reason == StopReason::EndOfTraining && main {
                self.clip.save(&self.run.out.join("export"))?;
                export = Some(self.run.out.join("export"));
            }
        }
        let checkpoint = checkpoint::list(&self.checkpoints.root).pop();
        if let (StopReason::MaxSteps { at }, Some(dir)) = (reason, &checkpoint) {
            self.progress.println(&format!(
                "stopped at step {at} of {} (max steps): not exported; `streetclip export --checkpoint {} --out DIR` exports it, and rerunning without --max-steps resumes",
                self.total_steps,
                dir.display()
            ));
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
            best: self.state.best,
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
        let summary = match (incomplete, previous) {
            (Some(why), _) => {
                self.progress.println(&format!("{} finished training at step {} but {why}: exporting it again from its final checkpoint", out.display(), self.state.step));
                self.conclude(StopReason::EndOfTraining)?
            }
            (None, previous) => {
                self.progress.println(&format!("{} is already at step {} of {} (stopping at {}): nothing to train; its summary.json and export are complete and left as they are", out.display(), self.state.step, self.total_steps, self.stop_at));
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
