//! AdamW, owned by the project so its state can be checkpointed; the update itself is
//! libtorch's fused AdamW kernel (`torch.optim.AdamW(fused=True)`) through the C++ shim.

use super::param_groups::ParamGroups;
use crate::config::OptimConfig;
use crate::shim::{foreach_mul_, foreach_norm, fused_adamw, set_grads_to_none, AdamWStep};
use anyhow::bail;
use tch::{nn, Kind, Tensor};

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
    /// The parameter's learning rate as a multiple of the step's (`optim.groups`, layer decay).
    lr_scale: f64,
    weight_decay: f64,
}

pub struct AdamW {
    slots: Vec<Slot>,
    pub step: u64,
    /// The step count as the fused kernel reads it: one float scalar on the parameters' device,
    /// shared by every parameter (one fill per step, not one per parameter).
    step_tensor: Tensor,
    /// The distinct (lr scale, weight decay) pairs of the slots: one fused kernel call each.
    groups: Vec<(f64, f64)>,
    betas: [f64; 2],
    eps: f64,
}

impl AdamW {
    /// Over the trainable variables of `vs` (frozen ones are left out), sorted by name, each
    /// with the learning-rate scale and weight decay `groups` assigns it.
    pub fn new(vs: &nn::VarStore, cfg: &OptimConfig, groups: &ParamGroups) -> Self {
        let mut vars: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let device = vars.first().map_or(tch::Device::Cpu, |(_, p)| p.device());
        let slots = vars
            .into_iter()
            .map(|(name, param)| Slot {
                lr_scale: groups.of(&name).lr_scale,
                weight_decay: groups.of(&name).weight_decay,
                exp_avg: param.zeros_like(),
                exp_avg_sq: param.zeros_like(),
                name,
                param,
            })
            .collect::<Vec<Slot>>();
        let mut groups: Vec<(f64, f64)> = vec![];
        for s in &slots {
            if !groups.contains(&(s.lr_scale, s.weight_decay)) {
                groups.push((s.lr_scale, s.weight_decay));
            }
        }
        Self {
            slots,
            groups,
            step: 0,
            step_tensor: Tensor::zeros([], (Kind::Float, device)),
            betas: cfg.betas,
            eps: cfg.eps,
        }
    }

    /// One update with learning rate `lr` (times each parameter's scale) from the gradients in
    /// the parameters (those without a gradient are left alone, as torch does): one fused
    /// kernel per param group, i.e. per distinct (scale, weight decay). Where `found_inf` (a
    /// float scalar on the device) holds 1 the kernel changes nothing; the caller then calls
    /// `undo_count`.
    pub fn step(&mut self, lr: f64, found_inf: Option<&Tensor>) -> anyhow::Result<()> {
        self.step += 1;
        let _ = self.step_tensor.fill_(self.step as f64);
        for &(lr_scale, weight_decay) in &self.groups {
            let slots: Vec<&Slot> = self
                .slots
                .iter()
                .filter(|s| (s.lr_scale, s.weight_decay) == (lr_scale, weight_decay))
                .filter(|s| s.param.grad().defined())
                .collect();
            if slots.is_empty() {
                continue;
            }
            let mut lists: [Vec<Tensor>; 5] = Default::default();
            for s in slots {
                for (list, t) in lists.iter_mut().zip([
                    &s.param,
                    &s.param.grad(),
                    &s.exp_avg,
                    &s.exp_avg_sq,
                    &self.step_tensor,
                ]) {
                    list.push(t.shallow_clone());
                }
            }
            let h = AdamWStep {
                lr: lr * lr_scale,
                betas: self.betas,
                weight_decay,
                eps: self.eps,
            };
            let [p, g, m, v, s] = &lists;
            tch::no_grad(|| fused_adamw(p, g, m, v, s, found_inf, h))?;
        }
        Ok(())
    }

    /// Takes back the count of a step whose update `found_inf` cancelled.
    pub fn undo_count(&mut self) {
        self.step -= 1;
    }

    /// Drops every gradient (`zero_grad(set_to_none=True)`).
    pub fn zero_grad(&mut self) {
        let params: Vec<Tensor> = self.slots.iter().map(|s| s.param.shallow_clone()).collect();
        set_grads_to_none(&params);
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

/// `torch.nn.utils.clip_grad_norm_` without a host synchronisation: scales all gradients so
/// their global L2 norm is at most `max_norm`; returns the norm before clipping as a float
/// scalar on the device. The scale is computed in float64 and rounded once to float32 (torch
/// computes it in float32; the two differ by at most one ulp), and applied with one foreach
/// multiply (by exactly 1 when the norm is under the limit).
pub fn clip_grad_norm<'a>(
    params: impl Iterator<Item = &'a Tensor>,
    max_norm: Option<f64>,
) -> anyhow::Result<Tensor> {
    let grads: Vec<Tensor> = params.map(|p| p.grad()).filter(|g| g.defined()).collect();
    let Some(first) = grads.first() else {
        return Ok(Tensor::zeros([], (Kind::Float, tch::Device::Cpu)));
    };
    let device = first.device();
    let total = Tensor::stack(&foreach_norm(&grads, 2.0)?, 0).norm();
    if let Some(max) = max_norm {
        let coef = tch::no_grad(|| {
            let max = Tensor::full([], max, (Kind::Double, device));
            (max / (total.to_kind(Kind::Double) + 1e-6))
                .clamp_max(1.0)
                .to_kind(Kind::Float)
        });
        tch::no_grad(|| foreach_mul_(&grads, &coef))?;
    }
    Ok(total)
}
