//! The parallel loader: a deterministic, resumable stream of (pixels, caption) batches.
//!
//! Each epoch's order is a seeded permutation of the whole dataset, the same on every rank. The
//! order is cut into global batches of `w × batch_size`; rank `r` of `w` takes the `r`-th
//! `batch_size` block of each (the order truncated to whole global batches, so ranks see equally
//! many samples). A global batch — and each micro-batch within it — is thus the same samples
//! however many ranks share it. A background thread
//! decodes and preprocesses each batch on a pool of worker threads and keeps up to `prefetch`
//! batches ready. Every batch carries the position after it, so a checkpoint that stores it
//! resumes exactly where the run stopped.

use super::dataset::{AugmentConfig, Dataset, OnError};
use super::decode::decode;
use super::preprocess::PreprocessConfig;
use crate::seed::sample_seed;
use crate::text::Captioner;
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Decode threads (0: one per core).
    pub workers: usize,
    pub prefetch: usize,
    pub seed: u64,
    pub shuffle: bool,
    pub rank: usize,
    pub world_size: usize,
    pub on_error: OnError,
    /// Leave out an epoch's last, incomplete batch (training) or keep it (evaluation).
    pub drop_last: bool,
    pub augment: AugmentConfig,
    /// Stop after this many epochs (None: go on until dropped).
    pub epochs: Option<u64>,
}

/// Where a rank is in the data: the epoch, and the next position in its share of that epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub index: usize,
}

#[derive(Debug)]
pub struct Batch {
    /// `[B, 3, H, W]` row-major.
    pub pixels: Pixels,
    pub captions: Vec<String>,
    /// Dataset indices of the samples.
    pub samples: Vec<usize>,
    pub epoch: u64,
    /// Where to resume after this batch.
    pub next: Position,
    /// Samples left out while making this batch (`origin: why`).
    pub skipped: Vec<String>,
}

/// A batch's pixels (a slice through `Deref`). Dropped, the buffer goes back to its loader for
/// a later batch: a new one per batch (43 MB at 336 px × 32) costs its page faults and zeroing
/// every time, a third of a core's time at two decode threads.
pub struct Pixels {
    data: Vec<f32>,
    pool: std::sync::Weak<BufferPool>,
}

impl std::ops::Deref for Pixels {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.data
    }
}

impl std::fmt::Debug for Pixels {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "Pixels({} floats)", self.data.len())
    }
}

impl PartialEq for Pixels {
    fn eq(&self, other: &Self) -> bool {
        self.data == other.data
    }
}

impl Drop for Pixels {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.put(std::mem::take(&mut self.data));
        }
    }
}

/// Batch buffers given back, for reuse (at most `keep` of them).
struct BufferPool {
    free: Mutex<Vec<Vec<f32>>>,
    keep: usize,
}

impl BufferPool {
    /// A buffer of `len` floats: a returned one (its old contents are overwritten, every slot
    /// being written whole), or a new one.
    fn take(&self, len: usize) -> Vec<f32> {
        let reused = self.free.lock().expect("not poisoned").pop();
        let mut buffer = reused.unwrap_or_default();
        buffer.resize(len, 0.0);
        buffer
    }

    fn put(&self, buffer: Vec<f32>) {
        let mut free = self.free.lock().expect("not poisoned");
        if free.len() < self.keep {
            free.push(buffer);
        }
    }
}

/// This rank's share of an epoch, in order: block `rank` of every `world_size × block` run.
pub fn epoch_order(
    n: usize,
    seed: u64,
    epoch: u64,
    shuffle: bool,
    rank: usize,
    world_size: usize,
    block: usize,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(sample_seed(
            seed,
            epoch,
            u64::MAX,
        )));
    }
    if world_size == 1 {
        return order;
    }
    let global = world_size * block;
    order.truncate(n / global * global);
    order
        .chunks(block)
        .skip(rank)
        .step_by(world_size)
        .flatten()
        .copied()
        .collect()
}

pub struct Loader {
    rx: Receiver<Result<Batch>>,
    /// Samples skipped while making a partial batch that `drop_last` dropped.
    dropped_skips: Arc<Mutex<Vec<(u64, String)>>>,
    stop: Arc<AtomicBool>,
    worker: Option<std::thread::JoinHandle<()>>,
}

struct Producer {
    data: Arc<Dataset>,
    captioner: Arc<Captioner>,
    pre: PreprocessConfig,
    cfg: LoaderConfig,
    pool: rayon::ThreadPool,
    buffers: Arc<BufferPool>,
    dropped_skips: Arc<Mutex<Vec<(u64, String)>>>,
}

impl Loader {
    pub fn start(
        data: Arc<Dataset>,
        captioner: Arc<Captioner>,
        pre: PreprocessConfig,
        cfg: LoaderConfig,
        from: Position,
    ) -> Result<Self> {
        if cfg.batch_size == 0 || cfg.world_size == 0 || cfg.rank >= cfg.world_size {
            bail!(
                "loader: batch size {} and rank {} of {} are not valid",
                cfg.batch_size,
                cfg.rank,
                cfg.world_size
            );
        }
        if data.samples.len() < cfg.world_size * cfg.batch_size
            && (cfg.drop_last || cfg.world_size > 1)
        {
            bail!(
                "{} samples are too few for batches of {} on {} rank(s)",
                data.samples.len(),
                cfg.batch_size,
                cfg.world_size
            );
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.workers)
            .thread_name(|i| format!("decode-{i}"))
            .build()?;
        let (tx, rx) = sync_channel(cfg.prefetch.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let producer = Producer {
            data,
            captioner,
            pre,
            buffers: Arc::new(BufferPool {
                free: Mutex::default(),
                // Those waiting in the channel, the one the consumer holds, one being made.
                keep: cfg.prefetch.max(1) + 2,
            }),
            cfg,
            pool,
            dropped_skips: Default::default(),
        };
        let dropped_skips = producer.dropped_skips.clone();
        let flag = stop.clone();
        let worker = std::thread::Builder::new()
            .name("loader".into())
            .spawn(move || producer.run(from, &tx, &flag))?;
        Ok(Self {
            rx,
            dropped_skips,
            stop,
            worker: Some(worker),
        })
    }
}

impl Loader {
    /// Skipped samples that no batch reported (they fell in the partial batch `drop_last`
    /// dropped at the end of an epoch before `epoch`), taken once each. The producer runs ahead
    /// of the consumer, so later epochs' are kept until the consumer gets there.
    pub fn take_dropped_skips(&self, before_epoch: u64) -> Vec<String> {
        let mut dropped = self.dropped_skips.lock().expect("not poisoned");
        let (now, later) = std::mem::take(&mut *dropped)
            .into_iter()
            .partition(|(e, _)| *e < before_epoch);
        *dropped = later;
        now.into_iter().map(|(_, s)| s).collect()
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Self::Item> {
        self.rx.recv().ok()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Unblock a producer waiting on a full channel, then wait for it.
        while self.rx.try_recv().is_ok() {}
        if let Some(w) = self.worker.take() {
            drop(std::mem::replace(&mut self.rx, sync_channel(1).1));
            let _ = w.join();
        }
    }
}

/// The text of a caught panic.
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl Producer {
    fn run(&self, from: Position, tx: &SyncSender<Result<Batch>>, stop: &AtomicBool) {
        let mut pos = from;
        while self.cfg.epochs.is_none_or(|e| pos.epoch < e) {
            let c = &self.cfg;
            let order = epoch_order(
                self.data.samples.len(),
                c.seed,
                pos.epoch,
                c.shuffle,
                c.rank,
                c.world_size,
                c.batch_size,
            );
            while pos.index < order.len() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                // A panic while decoding (a bug, or a decoder's) is an error the trainer reports,
                // not a silent end of the data.
                let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.batch(&order, pos)
                }))
                .unwrap_or_else(|panic| {
                    Err(anyhow::anyhow!(
                        "the data loader crashed: {}",
                        panic_message(&panic)
                    ))
                });
                match made {
                    Ok(Some(batch)) => {
                        pos = batch.next;
                        if tx.send(Ok(batch)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
            pos = Position {
                epoch: pos.epoch + 1,
                index: 0,
            };
        }
    }

    /// The next full batch from `pos` (or the last partial one when kept); None at epoch end.
    /// Each worker writes its image straight into the batch's slot for it.
    fn batch(&self, order: &[usize], pos: Position) -> Result<Option<Batch>> {
        let want = self.cfg.batch_size;
        let per = self.pre.output_len();
        let mut pixels = self.buffers.take(want * per);
        let (mut captions, mut samples, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
        let mut next = pos.index;
        while samples.len() < want && next < order.len() {
            let take = (want - samples.len()).min(order.len() - next);
            let chosen = &order[next..next + take];
            let first = samples.len();
            let slots = &mut pixels[first * per..(first + take) * per];
            let results: Vec<Result<String>> = self.pool.install(|| {
                use rayon::prelude::*;
                chosen
                    .par_iter()
                    .zip(slots.par_chunks_mut(per))
                    .map(|(&i, slot)| self.sample(i, pos.epoch, slot))
                    .collect()
            });
            for ((slot, &i), r) in (first..).zip(chosen).zip(results) {
                match r {
                    Ok(caption) => {
                        // A skipped sample before this one left its slot free.
                        let to = samples.len();
                        if slot != to {
                            pixels.copy_within(slot * per..(slot + 1) * per, to * per);
                        }
                        captions.push(caption);
                        samples.push(i);
                    }
                    Err(e) if self.cfg.on_error == OnError::Skip => {
                        skipped.push(format!("{}: {e:#}", self.data.samples[i].origin))
                    }
                    Err(e) => bail!(
                        "{}: {e:#} (set data.on_error: skip to leave such samples out)",
                        self.data.samples[i].origin
                    ),
                }
            }
            next += take;
        }
        pixels.truncate(samples.len() * per);
        if samples.is_empty() || (samples.len() < want && self.cfg.drop_last) {
            // No batch carries these skips: the consumer still has to count them.
            let mut dropped = self.dropped_skips.lock().expect("not poisoned");
            dropped.extend(skipped.into_iter().map(|s| (pos.epoch, s)));
            self.buffers.put(pixels);
            return Ok(None);
        }
        Ok(Some(Batch {
            pixels: Pixels {
                data: pixels,
                pool: Arc::downgrade(&self.buffers),
            },
            captions,
            samples,
            epoch: pos.epoch,
            next: Position {
                epoch: pos.epoch,
                index: next,
            },
            skipped,
        }))
    }

    /// Sample `i`'s caption; its pixels go to `out`.
    fn sample(&self, i: usize, epoch: u64, out: &mut [f32]) -> Result<String> {
        let s = &self.data.samples[i];
        let caption = match &s.place.caption {
            Some(c) => c.clone(),
            None => match self.captioner.caption(&s.place.names, epoch, i as u64) {
                Some(c) => c,
                None => bail!("the caption template needs a name this sample does not have"),
            },
        };
        let bytes = s.image.read()?;
        let cannot = || format!("cannot decode image {}", s.image);
        let aug = &self.cfg.augment;
        let mut rng = ChaCha8Rng::seed_from_u64(sample_seed(self.cfg.seed, epoch, i as u64));
        match aug.random_resized_crop {
            Some(scale) => {
                let img = decode(&bytes).with_context(cannot)?;
                self.pre.apply_random_crop(&img, scale, &mut rng, out)?
            }
            None => self.pre.apply_bytes(&bytes, out).with_context(cannot)?,
        };
        if aug.hflip > 0.0 && rand::RngExt::random_bool(&mut rng, aug.hflip) {
            self.pre.hflip(out);
        }
        Ok(caption)
    }
}
