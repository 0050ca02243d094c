//! A classification fine-tuning run's shared state — config, split, device, process group — and
//! what every method does with it: embed a split, score a linear classifier, export with
//! `head.json`, train (for the methods that do).

use super::compare::MethodResult;
use super::head::{ClassHead, HEAD_INFO};
use super::split::Splits;
use super::wise;
use crate::config::{Config, Method};
use crate::data::classes::LabelledImage;
use crate::data::places::Place;
use crate::data::{ImageRef, Sample};
use crate::dist::{Dist, DistEnv};
use crate::eval::classification::{class_metrics, most_probable, ClassMetrics};
use crate::formats::pretrained::Pretrained;
use crate::formats::tensor_io::write_atomic;
use crate::train::objective::Objective;
use crate::train::setup::build_model;
use crate::train::summary::RunOptions;
use crate::train::trainer::Run;
use anyhow::Result;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// A classifier on the test split: its metrics and each image's (class, probability).
pub(super) struct TestResult {
    pub metrics: ClassMetrics,
    pub predictions: Vec<(usize, f64)>,
}

pub(super) fn classes_of(predictions: &[(usize, f64)]) -> Vec<usize> {
    predictions.iter().map(|p| p.0).collect()
}

/// One `finetune` invocation: its config, split, device and process group, shared by the
/// methods it runs in turn.
pub(super) struct Task<'a> {
    pub cfg: &'a Config,
    pub config_yaml: &'a str,
    pub options: &'a RunOptions,
    pub splits: Splits,
    pub device: tch::Device,
    pub env: DistEnv,
    pub dist: Dist,
}

/// What a method that trains sets on the trained (and on each WiSE-FT mixed) model before it
/// is scored: nothing, or a head derived from it.
pub(super) type HeadFor = fn(&Task, &mut Pretrained) -> Result<()>;

impl Task<'_> {
    pub fn names(&self) -> &[String] {
        &self.splits.caption_names
    }

    pub fn templates(&self) -> &[String] {
        &self.cfg.finetune.templates
    }

    /// L2-normalised image embeddings `[n, d]` of `items`.
    pub fn embed(&self, clip: &Pretrained, items: &[LabelledImage]) -> Result<Tensor> {
        let paths: Vec<PathBuf> = items.iter().map(|i| i.path.clone()).collect();
        crate::encode::Encoder::new(clip, self.cfg.train.micro_batch_size).files(&paths)
    }

    /// Predicted classes of `items` and their probabilities under the linear classifier
    /// `(weight, bias)`.
    pub fn predict(
        &self,
        clip: &Pretrained,
        weight: &Tensor,
        bias: &Tensor,
        items: &[LabelledImage],
    ) -> Result<Vec<(usize, f64)>> {
        let logits = tch::no_grad(|| {
            self.embed(clip, items).map(|x| {
                x.linear(
                    &weight.to_kind(Kind::Float).to_device(x.device()),
                    Some(&bias.to_kind(Kind::Float).to_device(x.device())),
                )
            })
        })?;
        most_probable(&logits.softmax(-1, Kind::Double))
    }

    pub fn truth(items: &[LabelledImage]) -> Vec<usize> {
        items.iter().map(|i| i.class).collect()
    }

    /// Validation accuracy, and the test split's metrics and predictions, of a linear classifier.
    pub fn score(
        &self,
        clip: &Pretrained,
        weight: &Tensor,
        bias: &Tensor,
    ) -> Result<(Option<f64>, TestResult)> {
        let s = &self.splits;
        let val = if s.val.is_empty() {
            None
        } else {
            let guesses = self.predict(clip, weight, bias, &s.val)?;
            Some(class_metrics(&s.classes, &Self::truth(&s.val), &classes_of(&guesses)).accuracy)
        };
        let test = self.predict(clip, weight, bias, &s.test)?;
        Ok((val, self.test_result(test)))
    }

    pub fn test_result(&self, predictions: Vec<(usize, f64)>) -> TestResult {
        let s = &self.splits;
        let metrics = class_metrics(&s.classes, &Self::truth(&s.test), &classes_of(&predictions));
        TestResult {
            metrics,
            predictions,
        }
    }

    /// Writes `clip` (with its head) as a Hugging Face directory plus `head.json`.
    pub fn export(
        &self,
        clip: &Pretrained,
        dir: &Path,
        method: Method,
        alpha: Option<f64>,
    ) -> Result<()> {
        let info = serde_json::json!({
            "method": method.name(),
            "classes": self.splits.classes,
            "caption_names": self.splits.caption_names,
            "templates": self.templates(),
            "input": "L2-normalised CLIP image embeddings (CLIPModel image_embeds); logits = head.weight @ x + head.bias",
            "wise_ft_alpha": alpha,
        });
        clip.save_with(dir, |dir| {
            write_atomic(&dir.join(HEAD_INFO), &serde_json::to_vec_pretty(&info)?)
        })
    }

    pub fn result(
        &self,
        method: Method,
        val_accuracy: Option<f64>,
        test: TestResult,
        export: PathBuf,
    ) -> MethodResult {
        let s = &self.splits;
        MethodResult {
            method,
            classes: s.classes.clone(),
            train_images: s.train.len(),
            val_images: s.val.len(),
            val_accuracy,
            test: test.metrics,
            chosen_c: None,
            wise_ft: vec![],
            export,
            training: None,
            test_predictions: test.predictions,
        }
    }

    /// The model every method starts from (a fresh one drawn with the run's seed, as the trainer does).
    pub fn initial_model(&self) -> Result<Pretrained> {
        tch::manual_seed(self.cfg.train.seed as i64);
        build_model(self.cfg, self.device)
    }

    /// Training samples whose captions are the class names through the templates (cycled).
    pub fn samples(&self) -> Vec<Sample> {
        let templates = self.templates();
        self.splits
            .train
            .iter()
            .enumerate()
            .map(|(i, item)| Sample {
                image: ImageRef::File(item.path.clone()),
                place: Place {
                    caption: Some(
                        templates[i % templates.len()].replace("{}", &self.names()[item.class]),
                    ),
                    ..Place::default()
                },
                origin: item.path.display().to_string(),
            })
            .collect()
    }

    /// The linear classifier a (fine-tuned) model is evaluated with: its head, or the
    /// zero-shot classifier of its text tower.
    pub fn classifier_of(&self, clip: &Pretrained) -> Result<(Tensor, Tensor)> {
        match ClassHead::of(clip) {
            Some(h) => Ok(h.parameters()),
            None => ClassHead::zero_shot(clip, self.names(), self.templates()),
        }
    }

    /// Trains `objective` on the training split's class captions into `dir`, sets `head` on
    /// the result, scores and exports it, then its WiSE-FT mixes with the initial model.
    pub fn fine_tune(
        &self,
        (method, objective, head): (Method, &mut dyn Objective, HeadFor),
        dir: &Path,
    ) -> Result<MethodResult> {
        let run = Run {
            cfg: self.cfg,
            config_yaml: self.config_yaml,
            out: dir,
            options: self.options,
            env: &self.env,
            dist: &self.dist,
            device: self.device,
        };
        let (summary, mut tuned) = run.train(self.samples(), vec![], objective)?;
        head(self, &mut tuned)?;
        let (w, b) = self.classifier_of(&tuned)?;
        let (val, test) = self.score(&tuned, &w, &b)?;
        self.export(&tuned, &dir.join("export"), method, None)?;
        Ok(MethodResult {
            wise_ft: wise::mixes(self, (method, &tuned, head), dir)?,
            training: Some(summary),
            ..self.result(method, val, test, dir.join("export"))
        })
    }
}
