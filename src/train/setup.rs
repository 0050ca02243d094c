//! Joining the job and building what a run trains: the device, the model, autocast, which
//! parameters train, the train/validation split.

use super::objective::Objective;
use super::param_groups::ParamGroups;
use crate::config::{Config, FreezeConfig, OptimConfig, Precision};
use crate::data::Sample;
use crate::dist::{Dist, DistEnv};
use crate::formats::pretrained::Pretrained;
use crate::model::{parse_device, ClipConfig, ClipModel};
use crate::seed::sample_seed;
use crate::shim::AutocastDtype;
use anyhow::{bail, Context, Result};

/// The configured device; in a multi-process run `cuda` means this worker's GPU, cuda:LOCAL_RANK.
fn device_for(cfg: &Config, env: &DistEnv) -> Result<tch::Device> {
    if env.is_distributed() && cfg.model.device == "cuda" {
        return parse_device(&format!("cuda:{}", env.local_rank))
            .context("model.device (cuda:LOCAL_RANK)");
    }
    parse_device(&cfg.model.device).context("model.device")
}

pub fn build_model(cfg: &Config, device: tch::Device) -> Result<Pretrained> {
    let m = &cfg.model;
    let clip = match (&m.init, &m.preset, &m.config) {
        (Some(dir), None, None) => Pretrained::load(dir, device),
        (None, Some(preset), None) => Pretrained::fresh(ClipConfig::preset(preset).context("model.preset")?, device),
        (None, None, Some(config)) => Pretrained::fresh(config.clone(), device),
        (None, None, None) => bail!("no model: set model.init (a Hugging Face CLIP directory), model.preset or model.config"),
        _ => bail!("set only one of model.init, model.preset and model.config"),
    }?;
    let mut clip = match m.image_size {
        Some(size) => clip.with_image_size(size)?,
        None => clip,
    };
    let (vision, text) = cfg.train.activation_checkpointing.towers();
    clip.model.set_activation_checkpointing(vision, text);
    if vision || text {
        return_large_blocks_to_the_system();
    }
    Ok(clip)
}

/// Serves every host allocation of 8 MiB or more with its own mapping, returned to the system
/// when freed. Checkpointing frees and re-allocates a block's activations for every block of
/// the backward pass; glibc's default threshold rises with each freed mapping (up to 32 MiB), so
/// those re-allocations came from its heap, which fragmented: ViT-B/16 at micro-batch 32 on the
/// CPU peaked at 5.3 GB resident with checkpointing against 3.8 GB with this (and 8.7 GB
/// without checkpointing, 8.1 with this). Process-wide; CUDA tensors are not affected.
fn return_large_blocks_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; a fixed threshold also stops the
    // dynamic adjustment.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
    }
}

/// What a run says at its start about how it trains: activation checkpointing when on, and the
/// optimizer's groups with their sizes and rates when `optim.groups` or `layer_decay` is set.
pub(super) fn memory_and_groups(
    model: &ClipModel,
    groups: &ParamGroups,
    optim: &OptimConfig,
) -> Vec<String> {
    let towers = match model.activation_checkpointing() {
        (true, true) => Some("both towers"),
        (true, false) => Some("the vision tower"),
        (false, true) => Some("the text tower"),
        (false, false) => None,
    };
    let mut lines: Vec<String> = towers
        .map(|t| format!("activation checkpointing: {t} (each block keeps only its input; its activations are recomputed in the backward pass)"))
        .into_iter()
        .collect();
    if !optim.groups.is_empty() || optim.layer_decay.is_some() {
        lines.extend(groups.describe(model, optim.lr));
    }
    lines
}

/// The autocast `train.precision` asks for on `device` (`auto`: bf16 on CUDA, none on the CPU).
pub fn autocast_for(precision: Precision, device: tch::Device) -> Option<AutocastDtype> {
    match (precision, device.is_cuda()) {
        (Precision::Bf16, _) | (Precision::Auto, true) => Some(AutocastDtype::BFloat16),
        _ => None,
    }
}

/// Locks parameters as `freeze` says, those in a group with `lr_scale: 0` and those the
/// objective never uses; returns how many remain trainable.
pub(super) fn apply_freeze(
    clip: &mut Pretrained,
    freeze: &FreezeConfig,
    groups: &ParamGroups,
    objective: &dyn Objective,
) -> usize {
    let (vision_layers, text_layers) = (
        clip.model.config.vision_config.num_hidden_layers as usize,
        clip.model.config.text_config.num_hidden_layers as usize,
    );
    let mut trainable = 0;
    for (name, var) in clip.model.vs.variables() {
        let vision = name.starts_with("vision_model") || name.starts_with("visual_projection");
        let text = name.starts_with("text_model") || name.starts_with("text_projection");
        let mut train =
            !(vision && freeze.vision || text && freeze.text || objective.unused(&name));
        if let (true, Some(n)) = (train, freeze.last_n_blocks) {
            let layers = if vision { vision_layers } else { text_layers };
            let block = name
                .split(".layers.")
                .nth(1)
                .and_then(|r| r.split('.').next())
                .and_then(|i| i.parse::<usize>().ok());
            // Embeddings and early blocks lock; the last n blocks, final norms, projections and
            // the temperature train.
            train = match block {
                Some(i) => i + n >= layers,
                None => !name.contains("embeddings") && !name.contains("pre_layrnorm"),
            };
        }
        train &= !groups.of(&name).frozen();
        let _ = var.set_requires_grad(train);
        trainable += usize::from(train);
    }
    trainable
}

/// Train / validation split by a seeded per-sample draw (stable when the data grows).
pub fn split(samples: &[Sample], fraction: f64, seed: u64) -> (Vec<Sample>, Vec<Sample>) {
    let (mut train, mut val) = (vec![], vec![]);
    for (i, s) in samples.iter().enumerate() {
        let u = sample_seed(seed, u64::MAX - 1, i as u64) as f64 / u64::MAX as f64;
        if u < fraction {
            val.push(s.clone())
        } else {
            train.push(s.clone())
        }
    }
    (train, val)
}

/// This process's place in the job and its device (torchrun, SLURM, or a single process).
pub fn join_job(cfg: &Config) -> Result<(DistEnv, Dist, tch::Device)> {
    let env = DistEnv::from_env()?;
    let device = device_for(cfg, &env)?;
    let dist = Dist::init(
        &env,
        cfg.dist.backend_for(device),
        device,
        cfg.dist.timeout(),
    )?;
    dist.start_heartbeat(&env, cfg.dist.heartbeat_timeout());
    Ok((env, dist, device))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{ImageRef, Sample};
    use crate::train::objective::Contrastive;

    fn tiny() -> Pretrained {
        let config: ClipConfig = serde_json::from_value(serde_json::json!({
            "projection_dim": 8,
            "text_config": {"vocab_size": 49408, "hidden_size": 8, "intermediate_size": 16,
                "num_hidden_layers": 3, "num_attention_heads": 2, "max_position_embeddings": 77},
            "vision_config": {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 3,
                "num_attention_heads": 2, "image_size": 16, "patch_size": 8},
        }))
        .unwrap();
        Pretrained::fresh(config, tch::Device::Cpu).unwrap()
    }

    fn trainable(clip: &Pretrained) -> Vec<String> {
        let mut names: Vec<String> = clip
            .model
            .vs
            .variables()
            .into_iter()
            .filter(|(_, v)| v.requires_grad())
            .map(|(n, _)| n)
            .collect();
        names.sort();
        names
    }

    #[test]
    fn freezing_locks_a_tower_or_all_but_its_last_blocks() {
        let objective = Contrastive {
            accumulation: Default::default(),
        };
        let mut clip = tiny();
        let all = clip.model.vs.variables().len();
        let vision = FreezeConfig {
            vision: true,
            ..Default::default()
        };
        let groups = ParamGroups::resolve(&clip.model, &Default::default()).unwrap();
        let left = apply_freeze(&mut clip, &vision, &groups, &objective);
        let names = trainable(&clip);
        assert_eq!(left, names.len());
        assert!(left < all && names.iter().all(|n| !n.starts_with("vision_model")));
        assert!(names.iter().any(|n| n.starts_with("text_model")));
        let last_block = FreezeConfig {
            last_n_blocks: Some(1),
            ..Default::default()
        };
        apply_freeze(&mut clip, &last_block, &groups, &objective);
        for name in trainable(&clip) {
            let block = name.split(".layers.").nth(1);
            assert!(
                block.is_none_or(|b| b.starts_with("2.")),
                "{name}: only the last of 3 blocks trains"
            );
            assert!(
                !name.contains("embeddings") && !name.contains("pre_layrnorm"),
                "{name}"
            );
        }
        assert!(trainable(&clip).contains(&"logit_scale".to_string()));
    }

    #[test]
    fn the_split_is_seeded_per_sample_and_stable_as_the_data_grows() {
        let samples: Vec<Sample> = (0..400)
            .map(|i| Sample {
                image: ImageRef::File(format!("{i}.jpg").into()),
                place: Default::default(),
                origin: format!("row {i}"),
            })
            .collect();
        let names = |v: &[Sample]| v.iter().map(|s| s.origin.clone()).collect::<Vec<_>>();
        let (train, val) = split(&samples, 0.25, 7);
        assert_eq!(train.len() + val.len(), 400);
        assert!((60..140).contains(&val.len()), "{} of 400", val.len());
        let (_, val_again) = split(&samples, 0.25, 7);
        assert_eq!(names(&val), names(&val_again));
        // The first 300 samples fall on the same side when 100 more follow them.
        let (_, val_of_300) = split(&samples[..300], 0.25, 7);
        let first_300: Vec<String> = names(&val)
            .into_iter()
            .filter(|o| o[4..].parse::<usize>().unwrap() < 300)
            .collect();
        assert_eq!(names(&val_of_300), first_300);
        assert_ne!(
            names(&split(&samples, 0.25, 8).1),
            names(&val),
            "another seed"
        );
        assert_eq!(split(&samples, 0.0, 7).1.len(), 0);
    }
}
