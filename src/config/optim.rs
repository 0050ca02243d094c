//! The `optim` section: AdamW's hyperparameters and the learning-rate schedule.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// Peak learning rate (after warmup).
    pub lr: f64,
    /// AdamW's beta1, beta2 (moment decay rates).
    pub betas: [f64; 2],
    /// AdamW's epsilon (added to the root of the second moment).
    pub eps: f64,
    /// Decoupled weight decay; biases, LayerNorm weights, the class and position embeddings and
    /// the temperature are not decayed.
    pub weight_decay: f64,
    /// The learning rate after warmup, over the run's optimizer steps.
    pub schedule: Schedule,
    /// Linear warmup, in optimizer steps.
    pub warmup_steps: u64,
    /// Clip gradients to this global L2 norm (none when absent).
    pub max_grad_norm: Option<f64>,
    /// Parameter groups, each with its own learning rate and weight decay; a parameter belongs
    /// to the first group that names it (the rest: scale 1, `weight_decay`). Each entry:
    /// params (vision, text, projections, logit_scale, head, or globs over Hugging Face weight
    /// names such as "vision_model.encoder.layers.1?.*"), lr_scale (x lr; 0 freezes the group),
    /// weight_decay (default: the one above). E.g. [{params: [text], lr_scale: 0}].
    pub groups: Vec<ParamGroup>,
    /// Layer-wise learning-rate decay (BEiT/ELECTRA fine-tuning), e.g. 0.75: in each tower,
    /// block i (from 0) of n trains at lr x decay^(n - i), the embeddings at decay^(n + 1), what
    /// follows the last block (final norm, projection, temperature, a fine-tuning head) at the
    /// full rate; multiplied with the groups' scales. null: off.
    pub layer_decay: Option<f64>,
}

/// One entry of `optim.groups`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParamGroup {
    /// Which parameters: `vision`, `text` (a tower), `projections`, `logit_scale`, `head` (what
    /// fine-tuning adds to CLIP), or globs over Hugging Face weight names
    /// (`vision_model.encoder.layers.1?.*`).
    pub params: Vec<String>,
    /// The group's learning rate as a multiple of `optim.lr` (the schedule scales it too); 0
    /// freezes the group.
    #[serde(default = "one")]
    pub lr_scale: f64,
    /// The group's decoupled weight decay (default: `optim.weight_decay`). Biases, LayerNorm
    /// weights, the class and position embeddings and the temperature are never decayed.
    #[serde(default)]
    pub weight_decay: Option<f64>,
}

fn one() -> f64 {
    1.0
}

impl Default for OptimConfig {
    /// StreetCLIP's: lr 1e-6; betas, eps and weight decay of the authors' PIGEON pretraining.
    fn default() -> Self {
        Self {
            lr: 1e-6,
            betas: [0.9, 0.98],
            eps: 1e-6,
            weight_decay: 0.001,
            schedule: Schedule::Linear,
            warmup_steps: 0,
            max_grad_norm: Some(1.0),
            groups: vec![],
            layer_decay: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// The peak rate throughout.
    Constant,
    /// Linear decay from the peak to 0 at the last step (the HF Trainer default StreetCLIP used).
    Linear,
    /// Half a cosine from the peak to 0.
    Cosine,
}

impl OptimConfig {
    /// Ranges in which AdamW is defined (a NaN or negative rate would poison the weights).
    pub fn validate(&self) -> Result<()> {
        let finite_nonneg = |key: &str, v: f64| {
            if !(v.is_finite() && v >= 0.0) {
                bail!("optim.{key} = {v}: it must be a finite number >= 0");
            }
            Ok(())
        };
        finite_nonneg("lr", self.lr)?;
        finite_nonneg("weight_decay", self.weight_decay)?;
        if !(self.eps.is_finite() && self.eps > 0.0) {
            bail!("optim.eps = {}: it must be a finite number > 0", self.eps);
        }
        for (i, b) in self.betas.iter().enumerate() {
            if !(0.0..1.0).contains(b) {
                bail!("optim.betas[{i}] = {b}: each beta must be in [0, 1)");
            }
        }
        for (i, g) in self.groups.iter().enumerate() {
            finite_nonneg(&format!("groups[{i}].lr_scale"), g.lr_scale)?;
            if let Some(wd) = g.weight_decay {
                finite_nonneg(&format!("groups[{i}].weight_decay"), wd)?;
            }
            if g.params.is_empty() {
                bail!("optim.groups[{i}].params is empty: name the parameters the group holds (vision, text, projections, logit_scale, head, or globs over weight names)");
            }
            for p in &g.params {
                if let Err(e) = glob::Pattern::new(p) {
                    bail!("optim.groups[{i}].params: `{p}` is not a valid glob ({e})");
                }
            }
        }
        if let Some(d) = self.layer_decay {
            if !(d > 0.0 && d <= 1.0) {
                bail!(
                    "optim.layer_decay = {d}: it must be in (0, 1] (e.g. 0.75), or absent for none"
                );
            }
        }
        if let Some(n) = self.max_grad_norm {
            if !(n.is_finite() && n > 0.0) {
                bail!("optim.max_grad_norm = {n}: it must be a finite number > 0 (or absent for no clipping)");
            }
        }
        Ok(())
    }

    /// The learning rate for `step` (0-based) of `total`: linear warmup, then the schedule.
    /// Defined by the configured total, so a run stopped early follows the same curve.
    pub fn lr_at(&self, step: u64, total: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        self.lr
            * match self.schedule {
                Schedule::Constant => 1.0,
                Schedule::Linear => 1.0 - progress,
                Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
            }
    }
}
