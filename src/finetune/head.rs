//! A linear classification head on CLIP's normalised image embeddings, kept in the model's
//! VarStore (`classifier_head.weight`, `classifier_head.bias`) so the optimizer, checkpoints,
//! resume, data parallelism and WiSE-FT treat it like every other weight. Exports write it
//! beside the Hugging Face model as `head.safetensors` + `head.json`, never into
//! `model.safetensors` (which `CLIPModel.from_pretrained` must read without unexpected keys).

use crate::dist::Dist;
use crate::eval::text::class_text_embeddings;
use crate::formats::pretrained::Pretrained;
use crate::model::ClipModel;
use crate::shim::AutocastDtype;
use crate::train::loss::{accuracy, soft_cross_entropy};
use crate::train::objective::Objective;
use crate::train::step::{MicroBatch, StepStats};
use anyhow::{Context, Result};
use tch::{nn, Kind, Tensor};

pub use crate::formats::pretrained::{split_head, HEAD_FILE, HEAD_INFO, HEAD_PREFIX as PREFIX};

pub struct ClassHead {
    weight: Tensor,
    bias: Tensor,
}

impl ClassHead {
    /// The zero-shot classifier as a linear layer on normalised image embeddings: the
    /// class-caption embeddings times CLIP's temperature, no bias.
    pub fn zero_shot(
        clip: &Pretrained,
        names: &[String],
        templates: &[String],
    ) -> Result<(Tensor, Tensor)> {
        let text = class_text_embeddings(clip, names, templates)?;
        let scale = clip.model.logit_scale().exp().double_value(&[]);
        let k = text.size()[0];
        Ok((
            text * scale,
            Tensor::zeros([k], (Kind::Float, tch::Device::Cpu)),
        ))
    }

    /// Adds the head to `clip`'s variables with the given values (`[K, d]`, `[K]`).
    pub fn attach_with(clip: &mut Pretrained, weight: &Tensor, bias: &Tensor) -> Self {
        let (k, d) = (weight.size()[0], weight.size()[1]);
        let root = clip.model.vs.root() / PREFIX;
        let w = root.var("weight", &[k, d], nn::Init::Const(0.0));
        let b = root.var("bias", &[k], nn::Init::Const(0.0));
        tch::no_grad(|| {
            w.shallow_clone().copy_(&weight.to_kind(Kind::Float));
            b.shallow_clone().copy_(&bias.to_kind(Kind::Float));
        });
        Self { weight: w, bias: b }
    }

    /// Adds the head initialised as the zero-shot classifier, so before training it predicts
    /// exactly what zero-shot classification does.
    pub fn attach(clip: &mut Pretrained, names: &[String], templates: &[String]) -> Result<Self> {
        let (w, b) = Self::zero_shot(clip, names, templates)?;
        Ok(Self::attach_with(clip, &w, &b))
    }

    /// The head `clip` carries, if any.
    pub fn of(clip: &Pretrained) -> Option<Self> {
        let vars = clip.model.vs.variables();
        Some(Self {
            weight: vars.get(&format!("{PREFIX}.weight"))?.shallow_clone(),
            bias: vars.get(&format!("{PREFIX}.bias"))?.shallow_clone(),
        })
    }

    /// Copies of `(weight, bias)`.
    pub fn parameters(&self) -> (Tensor, Tensor) {
        (self.weight.detach().copy(), self.bias.detach().copy())
    }

    /// Class logits `[B, K]` for normalised image embeddings `[B, d]`.
    pub fn logits(&self, image_embeds: &Tensor) -> Tensor {
        image_embeds.linear(&self.weight, Some(&self.bias))
    }

    /// Cross-entropy over the step's micro-batches (each micro-batch's mean, averaged), its
    /// gradients left in the parameters: against `labels` `[B]`, or against the distributions
    /// `soft` `[B, K]` when given (`labels` then only score the accuracy).
    pub fn accumulate_gradients(
        &self,
        model: &ClipModel,
        micro: &[MicroBatch],
        labels: &Tensor,
        soft: Option<&Tensor>,
        amp: Option<AutocastDtype>,
    ) -> Result<StepStats> {
        let n = micro.len() as f64;
        let mut stats = StepStats::zeros(labels.device());
        let mut offset = 0;
        for m in micro {
            let b = m.pixel_values.size()[0];
            let features = crate::shim::maybe_autocast(m.pixel_values.device(), amp, || {
                model.training_image_features(&m.pixel_values)
            })?
            .to_kind(Kind::Float);
            let logits = self.logits(&crate::model::normalize(&features));
            let y = labels.narrow(0, offset, b);
            let loss = match soft {
                None => logits.cross_entropy_for_logits(&y),
                Some(targets) => soft_cross_entropy(&logits, &targets.narrow(0, offset, b)),
            };
            (&loss / n).backward();
            stats.add(&loss, &accuracy(&logits, &y), n);
            offset += b;
        }
        Ok(stats)
    }
}

/// What a head objective trains against, row by row of the training set.
pub trait HeadTargets {
    /// For the dataset rows `samples`, on `device`: class labels `[B]` (the accuracy's, and the
    /// loss's unless distributions are given) and optionally distributions `[B, K]` to train
    /// against instead.
    fn targets(&self, samples: &[usize], device: tch::Device) -> (Tensor, Option<Tensor>);
}

/// Each training sample's class.
pub struct ClassLabels(pub Vec<i64>);

impl HeadTargets for ClassLabels {
    fn targets(&self, samples: &[usize], device: tch::Device) -> (Tensor, Option<Tensor>) {
        let labels = samples.iter().map(|&i| self.0[i]).collect::<Vec<_>>();
        (Tensor::from_slice(&labels).to(device), None)
    }
}

/// Cross-entropy of a [`ClassHead`] on the image embeddings against `T`'s targets, the head
/// initialised as the zero-shot classifier of `names` through `templates`. The text tower and
/// the temperature take no part.
pub struct HeadObjective<T> {
    names: Vec<String>,
    templates: Vec<String>,
    targets: T,
    head: Option<ClassHead>,
}

/// The `classifier` method's objective.
pub type Classifier = HeadObjective<ClassLabels>;

impl<T> HeadObjective<T> {
    pub fn new(names: Vec<String>, templates: Vec<String>, targets: T) -> Self {
        Self {
            names,
            templates,
            targets,
            head: None,
        }
    }
}

impl<T: HeadTargets> Objective for HeadObjective<T> {
    fn prepare(&mut self, clip: &mut Pretrained) -> Result<()> {
        self.head = Some(ClassHead::attach(clip, &self.names, &self.templates)?);
        Ok(())
    }

    fn unused(&self, name: &str) -> bool {
        name.starts_with("text_") || name == "logit_scale"
    }

    fn accumulate(
        &self,
        model: &ClipModel,
        micro: &[MicroBatch],
        samples: &[usize],
        amp: Option<AutocastDtype>,
        _dist: &Dist,
    ) -> Result<StepStats> {
        let head = self
            .head
            .as_ref()
            .context("HeadObjective::prepare was not called")?;
        let (labels, soft) = self
            .targets
            .targets(samples, micro[0].pixel_values.device());
        head.accumulate_gradients(model, micro, &labels, soft.as_ref(), amp)
    }

    fn averages_ranks(&self) -> bool {
        true
    }
}
