//! One optimizer step's gradients over several micro-batches, in either accumulation mode,
//! and the update itself.

use super::loss::{clip_loss, pair_accuracy};
use super::optim::{clip_grad_norm, AdamW};
use crate::config::Accumulation;
use crate::dist::Dist;
use crate::model::{cut_after_pooled, ClipModel};
use crate::shim::{maybe_autocast, AutocastDtype};
use anyhow::Result;
use tch::{Device, Kind, Tensor};

pub struct MicroBatch {
    pub pixel_values: Tensor,
    pub input_ids: Tensor,
    /// None when every text attends to all its tokens (the causal mask alone suffices).
    pub attention_mask: Option<Tensor>,
}

impl MicroBatch {
    /// Pixels and texts copied to `device` by `to_device`, the texts first cut after the last
    /// pooled position (`model::cut_after_pooled`; its length is read here, on the host).
    pub fn new(
        pixel_values: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        eos_token_id: i64,
        to_device: impl Fn(&Tensor) -> Tensor,
    ) -> Self {
        let (ids, mask) = cut_after_pooled(input_ids, attention_mask, eos_token_id);
        Self {
            pixel_values: to_device(pixel_values),
            input_ids: to_device(&ids),
            attention_mask: mask.as_ref().map(&to_device),
        }
    }
}

/// A step's loss and accuracy as float64 scalars on the device. Reading one waits for the GPU
/// to finish the step, so the trainer reads them once per `train.log_every`, not per step.
#[derive(Debug)]
pub struct StepStats {
    pub loss: Tensor,
    /// In-batch image→text retrieval accuracy (or a classifier's) over what the loss saw.
    pub accuracy: Tensor,
}

impl StepStats {
    pub fn zeros(device: Device) -> Self {
        let zero = || Tensor::zeros([], (Kind::Double, device));
        Self {
            loss: zero(),
            accuracy: zero(),
        }
    }

    /// One micro-batch's share (`1 / n`) of the step's loss and accuracy, added in float64.
    pub fn add(&mut self, loss: &Tensor, accuracy: &Tensor, n: f64) {
        let share = |t: &Tensor| t.detach().to_kind(Kind::Double) / n;
        let _ = self.loss.g_add_(&share(loss));
        let _ = self.accuracy.g_add_(&share(accuracy));
    }

    /// 1 where the loss is not finite, else 0: the float scalar the fused AdamW kernel reads
    /// to leave the parameters untouched, on the device.
    pub fn found_inf(&self) -> Tensor {
        self.loss.isfinite().logical_not().to_kind(Kind::Float)
    }
}

/// The towers' features as training computes them (`ClipModel::training_features`), under
/// autocast in `amp` when given (fp32 master weights; features and everything after them —
/// normalisation, logits, loss — in fp32).
fn features(
    model: &ClipModel,
    m: &MicroBatch,
    amp: Option<AutocastDtype>,
) -> Result<(Tensor, Tensor)> {
    let (i, t) = maybe_autocast(m.pixel_values.device(), amp, || {
        model.training_features(&m.pixel_values, &m.input_ids, m.attention_mask.as_ref())
    })?;
    // A no-op without autocast (the features are fp32 already).
    Ok((i.to_kind(Kind::Float), t.to_kind(Kind::Float)))
}

/// Leaves the step's gradients in the model's parameters (added to what is there). With
/// several ranks, `full_batch` makes one loss over every rank's pairs: features are
/// all-gathered (without a graph) and this rank's own are spliced in with one, so its gradient
/// is its share of the global loss's (the caller sums shares over the ranks).
pub fn accumulate_gradients(
    model: &ClipModel,
    micro: &[MicroBatch],
    mode: Accumulation,
    amp: Option<AutocastDtype>,
    dist: &Dist,
) -> Result<StepStats> {
    match mode {
        Accumulation::PerMicroBatch => {
            let mut stats = StepStats::zeros(micro[0].pixel_values.device());
            let n = micro.len() as f64;
            for m in micro {
                let (image, text) = features(model, m, amp)?;
                let out = model.logits(&image, &text);
                let loss = clip_loss(&out.logits_per_text);
                (&loss / n).backward();
                stats.add(&loss, &pair_accuracy(&out.logits_per_image.detach()), n);
            }
            Ok(stats)
        }
        Accumulation::FullBatch if micro.len() == 1 => {
            // The step's rows are one micro-batch: one forward with its graph gives the
            // full-batch gradient directly (the passes below exist to fit many micro-batches).
            let (image, text) = features(model, &micro[0], amp)?;
            let (image_all, text_all) = (splice_global(dist, &image)?, splice_global(dist, &text)?);
            let out = model.logits(&image_all, &text_all);
            let loss = clip_loss(&out.logits_per_text);
            loss.backward();
            let mut stats = StepStats::zeros(loss.device());
            stats.add(&loss, &pair_accuracy(&out.logits_per_image.detach()), 1.0);
            Ok(stats)
        }
        Accumulation::FullBatch => {
            // 1. Features of every micro-batch without a graph.
            let (images, texts): (Vec<Tensor>, Vec<Tensor>) = tch::no_grad(|| {
                micro
                    .iter()
                    .map(|m| features(model, m, amp))
                    .collect::<Result<Vec<_>>>()
            })?
            .into_iter()
            .unzip();
            // 2. The loss over all pairs, differentiated with respect to the cached features
            //    (and logit_scale, whose gradient is complete after this backward).
            let image_own = Tensor::cat(&images, 0).set_requires_grad(true);
            let text_own = Tensor::cat(&texts, 0).set_requires_grad(true);
            let (image_all, text_all) = (
                splice_global(dist, &image_own)?,
                splice_global(dist, &text_own)?,
            );
            let out = model.logits(&image_all, &text_all);
            let loss = clip_loss(&out.logits_per_text);
            loss.backward();
            let mut stats = StepStats::zeros(loss.device());
            stats.add(&loss, &pair_accuracy(&out.logits_per_image.detach()), 1.0);
            // 3. Each micro-batch again with a graph, back-propagating its share of those
            //    feature gradients: the chain rule gives exactly the full-batch gradient.
            let (image_grad, text_grad) = (image_own.grad(), text_own.grad());
            let mut offset = 0;
            for m in micro {
                let b = m.pixel_values.size()[0];
                let (image, text) = features(model, m, amp)?;
                let surrogate = (image * image_grad.narrow(0, offset, b)).sum(Kind::Float)
                    + (text * text_grad.narrow(0, offset, b)).sum(Kind::Float);
                surrogate.backward();
                offset += b;
            }
            Ok(stats)
        }
    }
}

/// Every rank's rows of `own` in rank order, with this rank's block being `own` itself (so
/// gradients flow to it) and the others constants. Every rank holds the same number of rows.
fn splice_global(dist: &Dist, own: &Tensor) -> Result<Tensor> {
    if dist.world_size == 1 {
        return Ok(own.shallow_clone());
    }
    let all = dist.all_gather(&own.detach())?;
    let n = own.size()[0];
    let before = all.narrow(0, 0, n * dist.rank as i64);
    let after = all.narrow(
        0,
        n * (dist.rank as i64 + 1),
        n * (dist.world_size - dist.rank - 1) as i64,
    );
    Ok(Tensor::cat(&[before, own.shallow_clone(), after], 0))
}

/// Clips, updates, clamps the temperature (≤ 100, as CLIP), drops the gradients, all queued
/// without waiting for the device. Returns the gradient norm before clipping (on the device).
/// Where `found_inf` holds 1 the update changes nothing (the caller then calls
/// `opt.undo_count()`).
pub fn optimizer_step(
    model: &ClipModel,
    opt: &mut AdamW,
    lr: f64,
    max_grad_norm: Option<f64>,
    found_inf: Option<&Tensor>,
) -> anyhow::Result<Tensor> {
    let norm = clip_grad_norm(opt.parameters(), max_grad_norm)?;
    opt.step(lr, found_inf)?;
    tch::no_grad(|| {
        let _ = model.logit_scale().shallow_clone().clamp_(0.0, 100f64.ln());
    });
    opt.zero_grad();
    Ok(norm)
}
