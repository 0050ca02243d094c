//! AdamW, owned by the project so its state can be checkpointed; the update itself is
//! libtorch's fused AdamW kernel (`torch.optim.AdamW(fused=True)`) through the C++ shim.

use crate::shim::{fused_adamw, AdamWStep};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

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

/// Parameters that are not decayed: biases, LayerNorm weights, the class and position
/// embeddings and the temperature (as open_clip and most CLIP fine-tuning recipes).
pub fn decays(name: &str) -> bool {
    let exempt = name.ends_with(".bias")
        || name.contains("layer_norm")
        || name.contains("layernorm")
        || name.contains("pre_layrnorm")
        || name.ends_with("class_embedding")
        || name.contains("position_embedding")
        || name == "logit_scale";
    !exempt
}

struct Slot {
    name: String,
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// The step count as the fused kernel reads it (a float scalar on the parameter's device).
    step: Tensor,
    decay: bool,
}

pub struct AdamW {
    slots: Vec<Slot>,
    pub step: u64,
    betas: [f64; 2],
    eps: f64,
    weight_decay: f64,
}

impl AdamW {
    /// Over the trainable variables of `vs` (frozen ones are left out), sorted by name.
    pub fn new(vs: &nn::VarStore, cfg: &OptimConfig) -> Self {
        let mut vars: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let slots = vars
            .into_iter()
            .map(|(name, param)| Slot {
                decay: decays(&name),
                exp_avg: param.zeros_like(),
                exp_avg_sq: param.zeros_like(),
                step: Tensor::zeros([], (tch::Kind::Float, param.device())),
                name,
                param,
            })
            .collect();
        Self {
            slots,
            step: 0,
            betas: cfg.betas,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
        }
    }

    /// One update with learning rate `lr` from the gradients in the parameters (those without
    /// a gradient are left alone, as torch does).
    pub fn step(&mut self, lr: f64) -> anyhow::Result<()> {
        self.step += 1;
        for decay in [true, false] {
            let slots: Vec<&mut Slot> = self
                .slots
                .iter_mut()
                .filter(|s| s.decay == decay && s.param.grad().defined())
                .collect();
            if slots.is_empty() {
                continue;
            }
            let mut lists: [Vec<Tensor>; 5] = Default::default();
            for s in slots {
                let _ = s.step.fill_(self.step as f64);
                for (list, t) in lists.iter_mut().zip([
                    &s.param,
                    &s.param.grad(),
                    &s.exp_avg,
                    &s.exp_avg_sq,
                    &s.step,
                ]) {
                    list.push(t.shallow_clone());
                }
            }
            let h = AdamWStep {
                lr,
                betas: self.betas,
                weight_decay: if decay { self.weight_decay } else { 0.0 },
                eps: self.eps,
            };
            tch::no_grad(|| fused_adamw(&lists[0], &lists[1], &lists[2], &lists[3], &lists[4], h))?;
        }
        Ok(())
    }

    pub fn zero_grad(&mut self) {
        for s in &mut self.slots {
            s.param.zero_grad();
        }
    }

    /// `exp_avg.NAME`, `exp_avg_sq.NAME` for every parameter, for checkpoints.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.slots
            .iter()
            .flat_map(|s| {
                [
                    (format!("exp_avg.{}", s.name), s.exp_avg.shallow_clone()),
                    (
                        format!("exp_avg_sq.{}", s.name),
                        s.exp_avg_sq.shallow_clone(),
                    ),
                ]
            })
            .collect()
    }

    /// Restores moments saved by `state` (and the step count).
    pub fn load_state(
        &mut self,
        state: &std::collections::HashMap<String, Tensor>,
        step: u64,
    ) -> anyhow::Result<()> {
        tch::no_grad(|| {
            for s in &mut self.slots {
                for (prefix, t) in [
                    ("exp_avg", &mut s.exp_avg),
                    ("exp_avg_sq", &mut s.exp_avg_sq),
                ] {
                    let key = format!("{prefix}.{}", s.name);
                    let saved = state
                        .get(&key)
                        .ok_or_else(|| anyhow::anyhow!("optimizer state has no `{key}`"))?;
                    if saved.size() != t.size() {
                        bail!(
                            "optimizer state `{key}` has shape {:?}, the parameter {:?}",
                            saved.size(),
                            t.size()
                        );
                    }
                    t.copy_(&saved.to_device(t.device()));
                }
            }
            Ok::<_, anyhow::Error>(())
        })?;
        self.step = step;
        Ok(())
    }

    pub fn parameters(&self) -> impl Iterator<Item = &Tensor> {
        self.slots.iter().map(|s| &s.param)
    }
}

/// `torch.nn.utils.clip_grad_norm_`: scales all gradients so their global L2 norm is at most
/// `max_norm`; returns the norm before clipping.
pub fn clip_grad_norm<'a>(params: impl Iterator<Item = &'a Tensor>, max_norm: Option<f64>) -> f64 {
    let grads: Vec<Tensor> = params.map(|p| p.grad()).filter(|g| g.defined()).collect();
    if grads.is_empty() {
        return 0.0;
    }
    let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
    let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
    if let Some(max) = max_norm {
        let coef = (max / (total + 1e-6)).min(1.0);
        if coef < 1.0 {
            tch::no_grad(|| {
                for mut g in grads {
                    let _ = g.g_mul_scalar_(coef);
                }
            });
        }
    }
    total
}
