//! `optim.groups` and `optim.layer_decay`: each parameter's learning-rate scale and weight
//! decay, as `torch.optim.AdamW` param groups would hold them.

use super::optim::decays;
use crate::config::{OptimConfig, ParamGroup};
use crate::model::ClipModel;
use anyhow::{bail, Result};
use std::collections::HashMap;

/// What one parameter trains with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Assignment {
    /// The configured group it belongs to (`None`: no group names it).
    pub group: Option<usize>,
    /// Its learning rate as a multiple of the scheduled one (group scale x layer decay).
    pub lr_scale: f64,
    /// Its decoupled weight decay (0 for the parameters that are never decayed).
    pub weight_decay: f64,
}

impl Assignment {
    /// A group with `lr_scale: 0`: never updated, so not trained at all.
    pub fn frozen(&self) -> bool {
        self.lr_scale == 0.0
    }
}

/// Every parameter's assignment, by weight name.
#[derive(Debug, Clone)]
pub struct ParamGroups {
    by_name: HashMap<String, Assignment>,
    groups: Vec<ParamGroup>,
    layer_decay: Option<f64>,
}

impl ParamGroups {
    /// Assigns every variable of `model` (fine-tuning heads included) by `optim`'s groups and
    /// layer decay. A group entry that names no parameter is an error (a typo would otherwise
    /// silently train at the default rate), but for `head`.
    pub fn resolve(model: &ClipModel, optim: &OptimConfig) -> Result<Self> {
        let names: Vec<String> = model.vs.variables().into_keys().collect();
        for (i, g) in optim.groups.iter().enumerate() {
            // `head` may name nothing: fine-tuning compares methods of which only some add one.
            for p in g.params.iter().filter(|p| *p != "head") {
                if !names.iter().any(|n| names_param(p, n)) {
                    bail!("optim.groups[{i}].params: `{p}` names no parameter of this model (use vision, text, projections, logit_scale, head, or a glob over Hugging Face weight names such as vision_model.encoder.layers.1?.*)");
                }
            }
        }
        let depth = |tower: &str| match tower {
            "vision_model" => model.config.vision_config.num_hidden_layers,
            _ => model.config.text_config.num_hidden_layers,
        };
        let by_name = names
            .into_iter()
            .map(|name| {
                let group = optim
                    .groups
                    .iter()
                    .position(|g| g.params.iter().any(|p| names_param(p, &name)));
                let configured = group.map(|i| &optim.groups[i]);
                let layer_scale = match (optim.layer_decay, layer_of(&name)) {
                    (Some(decay), Some((tower, layer))) => {
                        decay.powi((depth(tower) + 1 - layer) as i32)
                    }
                    _ => 1.0,
                };
                let weight_decay = match decays(&name) {
                    true => configured
                        .and_then(|g| g.weight_decay)
                        .unwrap_or(optim.weight_decay),
                    false => 0.0,
                };
                let assignment = Assignment {
                    group,
                    lr_scale: configured.map_or(1.0, |g| g.lr_scale) * layer_scale,
                    weight_decay,
                };
                (name, assignment)
            })
            .collect();
        Ok(Self {
            by_name,
            groups: optim.groups.clone(),
            layer_decay: optim.layer_decay,
        })
    }

    /// The assignment of the weight `name` (a variable of the model it was resolved for).
    pub fn of(&self, name: &str) -> Assignment {
        self.by_name[name]
    }

    /// One line per configured group (and the rest) with the trainable parameters it holds,
    /// their peak learning rates and weight decay, for the start of a run.
    pub fn describe(&self, model: &ClipModel, lr: f64) -> Vec<String> {
        let vars = model.vs.variables();
        let mut lines = vec![];
        for group in (0..self.groups.len()).map(Some).chain([None]) {
            let members: Vec<(&String, &Assignment)> = self
                .by_name
                .iter()
                .filter(|(_, a)| a.group == group)
                .collect();
            if members.is_empty() {
                continue;
            }
            let label = match group {
                Some(i) => format!("group {i} [{}]", self.groups[i].params.join(", ")),
                None => "the rest".to_string(),
            };
            let count: i64 = members.iter().map(|(n, _)| vars[*n].numel() as i64).sum();
            if members.iter().all(|(_, a)| a.frozen()) {
                lines.push(format!(
                    "optim {label}: {count} parameters, frozen (lr_scale 0)"
                ));
                continue;
            }
            let trainable = members
                .iter()
                .filter(|(n, _)| vars[*n].requires_grad())
                .map(|(n, _)| vars[*n].numel() as i64)
                .sum::<i64>();
            let lrs = members.iter().map(|(_, a)| lr * a.lr_scale);
            let (low, high) = lrs.fold((f64::MAX, 0.0f64), |(l, h), x| (l.min(x), h.max(x)));
            let decays = members.iter().map(|(_, a)| a.weight_decay);
            let wd = decays.fold(0.0f64, f64::max);
            let lr_text = match (low == high, self.layer_decay) {
                (true, _) => format!("lr {high:.3e}"),
                (false, Some(d)) => format!("lr {low:.3e} .. {high:.3e} (layer decay {d})"),
                (false, None) => format!("lr {low:.3e} .. {high:.3e}"),
            };
            let wd_text = match wd > 0.0 {
                true => format!("weight decay {wd} (0 for biases, norms, embeddings, temperature)"),
                false => "weight decay 0".to_string(),
            };
            lines.push(format!(
                "optim {label}: {trainable} of {count} parameters trainable, {lr_text}, {wd_text}"
            ));
        }
        lines
    }
}

/// Whether the `optim.groups` entry `pattern` names the weight `name`.
fn names_param(pattern: &str, name: &str) -> bool {
    let tower = |prefix: &str| name.starts_with(prefix);
    match pattern {
        "vision" => tower("vision_model."),
        "text" => tower("text_model."),
        "projections" => tower("visual_projection.") || tower("text_projection."),
        "logit_scale" => name == "logit_scale",
        "head" => !is_clip_weight(name),
        glob => glob::Pattern::new(glob).is_ok_and(|p| p.matches(name)),
    }
}

/// A weight of `CLIPModel` itself (not one fine-tuning added).
fn is_clip_weight(name: &str) -> bool {
    [
        "vision_model.",
        "text_model.",
        "visual_projection.",
        "text_projection.",
    ]
    .iter()
    .any(|p| name.starts_with(p))
        || name == "logit_scale"
}

/// The tower and layer id layer decay uses (BEiT's `get_layer_id_for_vit`): 0 for the
/// embeddings (and the vision tower's pre-norm), i + 1 for block i. None for what follows the
/// blocks and for weights outside the towers (projections, temperature, heads): the full rate.
fn layer_of(name: &str) -> Option<(&str, i64)> {
    let (tower, rest) = name.split_once('.')?;
    if tower != "vision_model" && tower != "text_model" {
        return None;
    }
    if let Some(block) = rest.strip_prefix("encoder.layers.") {
        let i: i64 = block.split('.').next()?.parse().ok()?;
        return Some((tower, i + 1));
    }
    match rest.starts_with("embeddings.") || rest.starts_with("pre_layrnorm.") {
        true => Some((tower, 0)),
        false => None,
    }
}
