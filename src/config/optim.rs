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
