//! The model behind `serve`: one thread owns it and answers images in dynamic batches —
//! requests wait in a bounded queue, the thread takes up to `max_batch` images (or what came
//! within `max_wait` of the first), runs one forward pass for all of them on the model's
//! device and splits the answers back. Images are decoded by the requests before they queue,
//! so a bad image never reaches a batch.

use super::ApiError;
use crate::config::Config;
use crate::data::preprocess::PreprocessConfig;
use crate::encode::Encoder;
use crate::eval::geo_model::{GeoModel, Locator};
use crate::eval::geolocate::Guess;
use crate::eval::ranker::Ranker;
use crate::eval::ranking::Ranked;
use crate::formats::pretrained::{ExportedHead, Pretrained};
use crate::geo::Gazetteer;
use crate::model::clip::normalize;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};
use tokio::sync::oneshot;

/// Zero-shot rankings kept (labels + template → their text embeddings) before the oldest go.
const RANKERS_KEPT: usize = 64;

/// What to do with one image.
#[derive(Debug, Clone, PartialEq)]
pub enum Task {
    Geolocate,
    /// `labels` (zero-shot, filled into `template`) or the export's head when `None`.
    Predict {
        labels: Option<Vec<String>>,
        template: String,
        zero_shot: bool,
        top_k: usize,
    },
    /// The image tower's projection, not normalised (`embed`'s `image_embeds`).
    Embed,
}

/// One image's answer.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Answer {
    Guess(Box<Guess>),
    Ranking(Vec<Ranked>),
    Embedding(Vec<f32>),
}

pub type Reply<T> = oneshot::Sender<Result<T, ApiError>>;
/// Where a queued job's answer arrives.
pub type Pending<T> = oneshot::Receiver<Result<T, ApiError>>;

/// One image waiting for the model.
struct ImageJob {
    task: Task,
    /// Preprocessed CHW pixels.
    pixels: Vec<f32>,
    reply: Reply<Answer>,
}

enum Job {
    Image(ImageJob),
    /// The text tower's projections (`embed`'s `text_embeds`) of texts.
    Texts {
        texts: Vec<String>,
        reply: Reply<Vec<Vec<f32>>>,
    },
}

/// How the engine batches.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    pub max_batch: usize,
    pub max_wait: Duration,
    /// Images that may wait; beyond, a request is refused (503) rather than queued.
    pub queue: usize,
}

/// Counts a client can read at `/healthz`.
#[derive(Default, Debug)]
pub struct Stats {
    pub images: AtomicU64,
    pub batches: AtomicU64,
    /// Batches that held more than one image.
    pub shared_batches: AtomicU64,
    pub largest_batch: AtomicU64,
    pub refused_full: AtomicU64,
}

/// The handle requests use.
#[derive(Clone)]
pub struct Engine {
    jobs: SyncSender<Job>,
    pub preprocess: Arc<PreprocessConfig>,
    /// `GET /v1/model`'s answer.
    pub info: Arc<serde_json::Value>,
    pub stats: Arc<Stats>,
}

impl Engine {
    /// Starts the thread that owns `clip` (loaded from `model_dir`) and answers with `cfg`'s
    /// geolocation settings; returns once it is ready (text embeddings of the candidates made).
    pub fn start(
        clip: Pretrained,
        model_dir: PathBuf,
        cfg: Config,
        batching: Batching,
    ) -> Result<Self> {
        let (jobs, queue) = std::sync::mpsc::sync_channel(batching.queue);
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let stats = Arc::new(Stats::default());
        let preprocess = Arc::new(clip.preprocess.clone());
        let worker_stats = stats.clone();
        std::thread::Builder::new()
            .name("streetclip-engine".into())
            .spawn(move || {
                let worker = Worker::new(&clip, &model_dir, &cfg, batching, worker_stats);
                let worker = match worker {
                    Ok(w) => w,
                    Err(e) => return drop(ready_tx.send(Err(e))),
                };
                let text = match worker.geo.text_encoder(&clip, cfg.geo.cache) {
                    Ok(t) => t,
                    Err(e) => return drop(ready_tx.send(Err(e))),
                };
                let g = Gazetteer::bundled();
                let locators = g.and_then(|g| worker.geo.locators(text.as_ref(), g, &cfg.geo));
                match locators {
                    Ok(locators) => {
                        let _ = ready_tx.send(Ok(worker.info()));
                        worker.serve(queue, &locators[0].1);
                    }
                    Err(e) => drop(ready_tx.send(Err(e))),
                }
            })?;
        let info = ready
            .recv()
            .context("the model thread stopped while starting")??;
        Ok(Self {
            jobs,
            preprocess,
            info: Arc::new(info),
            stats,
        })
    }

    /// Queues one image; `Err` at once when the queue is full.
    pub fn image(&self, task: Task, pixels: Vec<f32>) -> Result<Pending<Answer>, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::Image(ImageJob {
            task,
            pixels,
            reply,
        }))?;
        Ok(answer)
    }

    /// Queues texts to embed.
    pub fn texts(&self, texts: Vec<String>) -> Result<Pending<Vec<Vec<f32>>>, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::Texts { texts, reply })?;
        Ok(answer)
    }

    fn send(&self, job: Job) -> Result<(), ApiError> {
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.stats.refused_full.fetch_add(1, Ordering::Relaxed);
                Err(ApiError::busy())
            }
            Err(TrySendError::Disconnected(_)) => Err(ApiError::internal(
                "the model thread has stopped; restart the server",
            )),
        }
    }
}

/// The thread's state: the model, how it geolocates and ranks, and the rankers asked for.
struct Worker<'a> {
    clip: &'a Pretrained,
    cfg: &'a Config,
    model_dir: &'a std::path::Path,
    batching: Batching,
    stats: Arc<Stats>,
    geo: GeoModel,
    /// The export's classifier head, when it has one.
    head: Option<Ranker>,
    rankers: std::cell::RefCell<HashMap<(Vec<String>, String), Ranker>>,
}

impl<'a> Worker<'a> {
    fn new(
        clip: &'a Pretrained,
        model_dir: &'a std::path::Path,
        cfg: &'a Config,
        batching: Batching,
        stats: Arc<Stats>,
    ) -> Result<Self> {
        let geo = GeoModel::read(model_dir, clip, false, &cfg.geo)?;
        let head =
            ExportedHead::read(model_dir, clip.model.config.projection_dim)?.map(Ranker::Head);
        Ok(Self {
            clip,
            cfg,
            model_dir,
            batching,
            stats,
            geo,
            head,
            rankers: Default::default(),
        })
    }

    /// What is loaded, for `GET /v1/model`.
    fn info(&self) -> serde_json::Value {
        let c = &self.clip.model.config;
        let (kind, cells) = match &self.geo {
            GeoModel::Geocells(m) => ("geocells", Some(m.cells.len())),
            GeoModel::Hierarchical(Some(_)) => ("hierarchical with a country head", None),
            GeoModel::Hierarchical(None) => ("hierarchical zero-shot", None),
        };
        serde_json::json!({
            "model": self.model_dir,
            "device": match self.clip.device() {
                tch::Device::Cuda(i) => format!("cuda:{i}"),
                _ => "cpu".into(),
            },
            "architecture": {
                "image_size": c.vision_config.image_size,
                "patch_size": c.vision_config.patch_size,
                "vision_layers": c.vision_config.num_hidden_layers,
                "vision_width": c.vision_config.hidden_size,
                "text_layers": c.text_config.num_hidden_layers,
                "text_width": c.text_config.hidden_size,
                "projection_dim": c.projection_dim,
            },
            "preprocessing": self.clip.preprocess,
            "geolocation": kind,
            "geocells": cells,
            "head_classes": self.head.as_ref().map(|h| h.names()),
            "top_k": self.cfg.geo.top_k,
            "batching": {
                "max_batch": self.batching.max_batch,
                "max_wait_ms": self.batching.max_wait.as_millis() as u64,
                "queue": self.batching.queue,
            },
        })
    }

    /// Answers jobs until every handle is gone.
    fn serve(&self, queue: Receiver<Job>, locator: &Locator) {
        while let Some(batch) = self.gather(&queue) {
            // A panic (a bug) fails this batch's requests (their replies are dropped: 500),
            // not the server.
            let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.answer(batch, locator)
            }));
            if answered.is_err() {
                eprintln!(
                    "streetclip serve: the model failed on a batch (a bug); its requests got 500"
                );
            }
        }
    }

    /// The next batch: the first job, then what comes within `max_wait` up to `max_batch`
    /// images. Texts are answered as they come. `None` when the queue is closed.
    fn gather(&self, queue: &Receiver<Job>) -> Option<Vec<ImageJob>> {
        let mut batch = vec![];
        let mut deadline: Option<Instant> = None;
        while batch.len() < self.batching.max_batch {
            let job = match deadline {
                None => queue.recv().ok()?,
                Some(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    match queue.recv_timeout(left) {
                        Ok(job) => job,
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) if batch.is_empty() => return None,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            match job {
                Job::Image(job) => {
                    deadline.get_or_insert(Instant::now() + self.batching.max_wait);
                    batch.push(job);
                }
                Job::Texts { texts, reply } => {
                    let _ = reply.send(self.texts(&texts).map_err(ApiError::from_model));
                }
            }
        }
        Some(batch)
    }

    fn texts(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let encoder = Encoder::new(self.clip, self.batching.max_batch);
        let features = encoder.text_features(texts)?.2;
        Ok(Vec::<Vec<f32>>::try_from(features.to_kind(Kind::Float))?)
    }

    /// One forward pass for the batch's images, then each image's answer to its request.
    fn answer(&self, batch: Vec<ImageJob>, locator: &Locator) {
        let n = batch.len() as u64;
        self.stats.images.fetch_add(n, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.largest_batch.fetch_max(n, Ordering::Relaxed);
        if n > 1 {
            self.stats.shared_batches.fetch_add(1, Ordering::Relaxed);
        }
        let (h, w) = self.clip.preprocess.output_size();
        let planes: Vec<f32> = batch
            .iter()
            .flat_map(|job| job.pixels.iter().copied())
            .collect();
        let pixels = Tensor::from_slice(&planes).view([n as i64, 3, h as i64, w as i64]);
        let encoder = Encoder::new(self.clip, self.batching.max_batch);
        let features = encoder.image_features(&pixels);
        let embeddings = normalize(&features);
        if !bool::try_from(embeddings.isfinite().all()).unwrap_or(false) {
            for ImageJob { reply, .. } in batch {
                let _ = reply.send(Err(ApiError::internal("the model gives non-finite image embeddings (NaN or infinity): its weights are damaged; re-export or re-download it")));
            }
            return;
        }
        let rows = |want: &dyn Fn(&Task) -> bool| -> Vec<i64> {
            (0..batch.len())
                .filter(|&i| want(&batch[i].task))
                .map(|i| i as i64)
                .collect()
        };
        let mut answers: Vec<Option<Result<Answer, ApiError>>> =
            (0..batch.len()).map(|_| None).collect();
        let located = rows(&|t| *t == Task::Geolocate);
        if !located.is_empty() {
            let images = embeddings.index_select(0, &Tensor::from_slice(&located));
            match locator.locate(&images) {
                Ok(guesses) => {
                    for (&i, guess) in located.iter().zip(guesses) {
                        answers[i as usize] = Some(Ok(Answer::Guess(Box::new(guess))));
                    }
                }
                Err(e) => {
                    let error = ApiError::from_model(e);
                    for &i in &located {
                        answers[i as usize] = Some(Err(error.clone()));
                    }
                }
            }
        }
        for (i, ImageJob { task, .. }) in batch.iter().enumerate() {
            match task {
                Task::Geolocate => {}
                Task::Embed => {
                    let row = Vec::<f32>::try_from(features.get(i as i64).to_kind(Kind::Float));
                    answers[i] = Some(
                        row.map(Answer::Embedding)
                            .map_err(|e| ApiError::from_model(e.into())),
                    );
                }
                Task::Predict { .. } => {
                    answers[i] = Some(self.rank(task, &embeddings.narrow(0, i as i64, 1)));
                }
            }
        }
        for (ImageJob { reply, .. }, answer) in batch.into_iter().zip(answers) {
            let _ = reply.send(answer.expect("every task answered"));
        }
    }

    /// One image's ranking `[1, d]` for a predict task.
    fn rank(&self, task: &Task, image: &Tensor) -> Result<Answer, ApiError> {
        let Task::Predict {
            labels,
            template,
            zero_shot,
            top_k,
        } = task
        else {
            unreachable!("rank is for predict tasks")
        };
        let rank = |r: &Ranker| {
            r.rank(self.clip, image, *top_k)
                .map(|mut v| Answer::Ranking(v.remove(0)))
                .map_err(ApiError::from_model)
        };
        match (&self.head, labels) {
            (Some(head), Some(_)) if !zero_shot => Err(ApiError::bad_request(format!(
                "the model carries a fine-tuned classifier over {} classes ({}): omit `labels` to use it, or add zero_shot=true to rank the labels by caption similarity",
                head.names().len(),
                head.names().join(", ")
            ))),
            (Some(head), None) if !zero_shot => rank(head),
            (_, None) => Err(ApiError::bad_request(
                "`labels` is required: the model has no fine-tuned classifier head, so give the labels to rank, e.g. ?labels=France,Japan,Brazil",
            )),
            (_, Some(labels)) => {
                let key = (labels.clone(), template.clone());
                let mut rankers = self.rankers.borrow_mut();
                if !rankers.contains_key(&key) {
                    let encoder = Encoder::new(self.clip, self.batching.max_batch);
                    let ranker = Ranker::labels(&encoder, labels.clone(), template)
                        .map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
                    if rankers.len() >= RANKERS_KEPT {
                        rankers.clear();
                    }
                    rankers.insert(key.clone(), ranker);
                }
                rank(&rankers[&key])
            }
        }
    }
}
