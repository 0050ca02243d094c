//! AdamW, owned by the project so its state can be checkpointed; the update itself is
//! libtorch's fused AdamW kernel (`torch.optim.AdamW(fused=True)`) through the C++ shim.

use crate::config::OptimConfig;
use crate::shim::{fused_adamw, AdamWStep};
use anyhow::bail;
use tch::{nn, Tensor};

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
