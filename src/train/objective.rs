//! What the towers are trained for. The trainer runs any objective: CLIP's contrastive loss
//! lives here; the classifier head of downstream fine-tuning implements the same trait in
//! `finetune/`, so this layer knows nothing above it.

use super::step::{accumulate_gradients, MicroBatch, StepStats};
use crate::config::Accumulation;
use crate::dist::Dist;
use crate::formats::pretrained::Pretrained;
use crate::model::ClipModel;
use crate::shim::AutocastDtype;
use anyhow::Result;

pub trait Objective {
    /// Adds the objective's own parameters to the model, before the optimizer is built.
    fn prepare(&mut self, _clip: &mut Pretrained) -> Result<()> {
        Ok(())
    }

    /// Parameters the objective never trains (locked whatever `train.freeze` says).
    fn unused(&self, _name: &str) -> bool {
        false
    }

    /// Leaves one step's gradients in the parameters. `samples` are the dataset indices of the
    /// step's rows (the micro-batches in order).
    fn accumulate(
        &self,
        model: &ClipModel,
        micro: &[MicroBatch],
        samples: &[usize],
        amp: Option<AutocastDtype>,
        dist: &Dist,
    ) -> Result<StepStats>;

    /// Whether the ranks' gradients are averaged (each rank's loss is its own mean) rather than
    /// summed (each rank holds its share of one global loss's gradient).
    fn averages_ranks(&self) -> bool;
}

/// CLIP's symmetric contrastive loss between images and their captions.
pub struct Contrastive {
    pub accumulation: Accumulation,
}

impl Objective for Contrastive {
    fn accumulate(
        &self,
        model: &ClipModel,
        micro: &[MicroBatch],
        _samples: &[usize],
        amp: Option<AutocastDtype>,
        dist: &Dist,
    ) -> Result<StepStats> {
        accumulate_gradients(model, micro, self.accumulation, amp, dist)
    }

    fn averages_ranks(&self) -> bool {
        self.accumulation == Accumulation::PerMicroBatch
    }
}
