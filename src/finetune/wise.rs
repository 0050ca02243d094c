//! WiSE-FT (Wortsman et al., 2022): the weight-space mix `(1 − α)·θ₀ + α·θ₁` of the initial and
//! the fine-tuned model, which keeps much of the initial model's robustness. At α = 0 and α = 1
//! the formula gives the two endpoints exactly.

use anyhow::{bail, Result};
use tch::Tensor;

pub fn interpolate(
    initial: &[(String, Tensor)],
    tuned: &[(String, Tensor)],
    alpha: f64,
) -> Result<Vec<(String, Tensor)>> {
    if !(0.0..=1.0).contains(&alpha) {
        bail!("finetune.wise_ft: alpha {alpha} must be in [0, 1]");
    }
    if initial.len() != tuned.len() {
        bail!(
            "WiSE-FT: the initial model has {} tensors, the fine-tuned one {}",
            initial.len(),
            tuned.len()
        );
    }
    initial
        .iter()
        .zip(tuned)
        .map(|((a, x), (b, y))| {
            if a != b || x.size() != y.size() {
                bail!(
                    "WiSE-FT: tensor {a} {:?} does not match {b} {:?}",
                    x.size(),
                    y.size()
                );
            }
            Ok((
                a.clone(),
                tch::no_grad(|| x.to_device(y.device()) * (1.0 - alpha) + y * alpha),
            ))
        })
        .collect()
}

/// Copies `tensors` into the same-named variables of `vs`.
pub fn assign(vs: &tch::nn::VarStore, tensors: &[(String, Tensor)]) -> Result<()> {
    let vars = vs.variables();
    tch::no_grad(|| {
        for (name, t) in tensors {
            let Some(v) = vars.get(name) else {
                bail!("WiSE-FT: no variable {name}")
            };
            v.shallow_clone().copy_(t);
        }
        Ok(())
    })
}
