//! WiSE-FT (Wortsman et al., 2022): the weight-space mix `(1 − α)·θ₀ + α·θ₁` of the initial and
//! the fine-tuned model, which keeps much of the initial model's robustness. At α = 0 and α = 1
//! the formula gives the two endpoints exactly.

use super::compare::WiseResult;
use super::head::ClassHead;
use super::task::{HeadFor, Task};
use crate::config::Method;
use crate::formats::pretrained::Pretrained;
use crate::formats::weights::named_tensors;
use anyhow::{bail, Result};
use std::path::Path;
use tch::Tensor;

/// Each `finetune.wise_ft` mix of the initial model (with its zero-shot head) and `tuned`, with
/// `head` set on it, scored and exported to `dir/export-wise-ALPHA`.
pub(super) fn mixes(
    task: &Task,
    (method, tuned, head): (Method, &Pretrained, HeadFor),
    dir: &Path,
) -> Result<Vec<WiseResult>> {
    let mut initial = task.initial_model()?;
    ClassHead::attach(&mut initial, task.names(), task.templates())?;
    // Copies: `initial`'s variables are overwritten by each mix.
    let theta0: Vec<(String, Tensor)> = named_tensors(&initial.model.vs)
        .into_iter()
        .map(|(n, t)| (n, t.detach().copy()))
        .collect();
    let theta1 = named_tensors(&tuned.model.vs);
    let mut mixes = Vec::new();
    for &alpha in &task.cfg.finetune.wise_ft {
        assign(&initial.model.vs, &interpolate(&theta0, &theta1, alpha)?)?;
        head(task, &mut initial)?;
        let (w, b) = task.classifier_of(&initial)?;
        let (val_accuracy, test) = task.score(&initial, &w, &b)?;
        let export = dir.join(format!("export-wise-{alpha}"));
        task.export(&initial, &export, method, Some(alpha))?;
        eprintln!(
            "finetune: {} WiSE-FT alpha {alpha}: test accuracy {:.1}%",
            method.name(),
            100.0 * test.metrics.accuracy
        );
        mixes.push(WiseResult {
            alpha,
            val_accuracy,
            test: test.metrics,
            export,
        });
    }
    Ok(mixes)
}

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
