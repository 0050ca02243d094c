//! The YAML run configuration. Unknown keys and wrong types are errors that name the key and
//! the line; every section has defaults, so a config only states what differs; `--set
//! key.sub=value` overrides any key from the command line.

use crate::data::dataset::DataConfig;
use crate::model::ClipConfig;
use crate::text::CaptionConfig;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_yaml::Value;
use std::path::{Path, PathBuf};

mod dist;
mod finetune;
mod geo;
mod optim;
mod reference;
pub use dist::{BackendChoice, DistConfig};
pub use finetune::{FinetuneConfig, GeocellsConfig, Method};
pub use geo::{GeoConfig, RefineConfig};
pub use optim::{OptimConfig, ParamGroup, Schedule};
pub use reference::commented_defaults;

/// The largest count (candidates, samples per cell, steps between logs, ...) a config key or a
/// flag accepts: far above any real use, far below where a size could overflow.
pub const MAX_COUNT: u64 = 1_000_000;
/// The largest batch (images per forward pass, micro-batch) a config key or a flag accepts.
pub const MAX_BATCH: u64 = 65_536;
/// The longest duration, in seconds, a timeout accepts (30 days).
pub const MAX_SECONDS: u64 = 30 * 24 * 3600;
/// Total training steps (epochs × steps per epoch) at most: 2^53, so every step count is exact
/// as a float in logs and schedules.
pub const MAX_STEPS: u64 = 1 << 53;

/// `key = v` when `v <= max`, else an error naming the key and the limit.
pub fn at_most(key: &str, v: u64, max: u64) -> Result<()> {
    if v > max {
        bail!("{key} = {v}: at most {max}");
    }
    Ok(())
}

/// Nodes a config document may expand to (anchors and aliases included).
const MAX_YAML_NODES: usize = 100_000;
/// Parts of a `--set` key (`train.freeze.vision` has three; no config key has more than four).
const MAX_KEY_PARTS: usize = 8;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The model to train or evaluate: a Hugging Face directory, or a fresh one from a preset.
    pub model: ModelConfig,
    /// The images and their labels: a manifest or WebDataset shards, and how to read them.
    pub data: DataConfig,
    /// How place labels become the synthetic captions CLIP trains on.
    pub captions: CaptionConfig,
    /// Batch shape, length, checkpoints, validation and precision of a training run.
    pub train: TrainConfig,
    /// AdamW and its learning-rate schedule.
    pub optim: OptimConfig,
    /// Zero-shot geolocation (`geolocate`, `eval geo`, validation): prompts and candidates.
    pub geo: GeoConfig,
    /// Data-parallel training (`train --nproc-per-node N`, or torchrun-style environment).
    pub dist: DistConfig,
    /// Downstream classification fine-tuning (`streetclip finetune`).
    pub finetune: FinetuneConfig,
}

/// Where the model comes from: a Hugging Face directory, or a fresh one from a config/preset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// A Hugging Face CLIP directory (e.g. a local copy of openai/clip-vit-large-patch14-336), a
    /// hub id (`org/name`) found in the local Hugging Face cache, an OpenAI TorchScript archive
    /// (`ViT-L-14-336px.pt`), or an OpenAI / open_clip state dict or hub directory.
    pub init: Option<PathBuf>,
    /// A randomly initialised model of this preset ("ViT-B/32", ..., "ViT-L/14-336").
    pub preset: Option<String>,
    /// A randomly initialised model of this HF `CLIPConfig` (inline).
    // Its keys are transformers' names; any other key is an error (`strict_clip_config`).
    #[serde(deserialize_with = "strict_clip_config")]
    #[schemars(with = "Option<ClipConfig>")]
    pub config: Option<ClipConfig>,
    /// cpu, cuda, cuda:N.
    pub device: String,
    /// Train at this image size (pixels) a model made for another: the vision position
    /// embeddings are resized over the patch grid (bicubic, as open_clip's resize_pos_embed)
    /// and the export's preprocessing resizes and crops to it; null: the model's own size.
    pub image_size: Option<u32>,
}

/// An inline `model.config`: unlike a `config.json` from the hub (which carries keys of other
/// transformers versions), a key written here that CLIPConfig does not have is a typo, refused.
fn strict_clip_config<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<ClipConfig>, D::Error> {
    let mut unknown = Vec::new();
    let config: Option<ClipConfig> =
        serde_ignored::deserialize(d, |path| unknown.push(path.to_string()))?;
    if !unknown.is_empty() {
        return Err(serde::de::Error::custom(format!(
            "model.config: unknown key {} (the keys are transformers' CLIPConfig names: text_config, vision_config, projection_dim, logit_scale_init_value, initializer_factor and their fields, e.g. num_hidden_layers)",
            unknown.join(", ")
        )));
    }
    if let Some(c) = &config {
        c.validate()
            .map_err(|e| serde::de::Error::custom(format!("model.config: {e:#}")))?;
    }
    Ok(config)
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            init: None,
            preset: None,
            config: None,
            device: "cpu".into(),
            image_size: None,
        }
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OnNonFinite {
    /// Save state and stop with a message.
    #[default]
    Stop,
    /// Leave the weights as they were for that step (its batch is used up and the schedule
    /// moves on, as with PyTorch's GradScaler), count it in summary.json's `skipped_steps`, go
    /// on.
    Skip,
}

/// Which parameters train.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FreezeConfig {
    /// Lock the image tower (and its projection).
    pub vision: bool,
    /// Lock the text tower (and its projection).
    pub text: bool,
    /// Train only the last N encoder blocks of each unlocked tower (plus final norms and
    /// projections).
    pub last_n_blocks: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Image-caption pairs per forward pass (per process in data-parallel runs).
    pub micro_batch_size: usize,
    /// Micro-batches per optimizer step: a step sees micro_batch_size x grad_accum_steps pairs
    /// (x the number of processes).
    pub grad_accum_steps: usize,
    /// How the contrastive loss spans the micro-batches of a step.
    pub accumulation: Accumulation,
    /// Passes over the training samples.
    pub epochs: u64,
    /// Stop after this many optimizer steps; the schedule still spans all epochs.
    pub max_steps: Option<u64>,
    /// Seeds the validation split, the sample order, augmentation and random initialisation.
    pub seed: u64,
    /// Save a checkpoint every N steps, at an epoch end when the newest is N steps old, and on
    /// stop. Written in the background from a host copy of the state.
    pub checkpoint_every: u64,
    /// Checkpoints kept (oldest removed first).
    pub keep_checkpoints: usize,
    /// Log loss, accuracy, learning rate and throughput every N optimizer steps (stderr and
    /// TensorBoard).
    pub log_every: u64,
    /// Validate every N steps (0: only at the end).
    pub eval_every: u64,
    /// Fraction of the samples held out for validation (chosen by the seed).
    pub val_fraction: f64,
    /// What a step with a NaN or infinite loss or gradient does.
    pub on_nonfinite: OnNonFinite,
    /// Which parameters train.
    pub freeze: FreezeConfig,
    /// Arithmetic of the forward and backward passes.
    pub precision: Precision,
    /// Profile this many steps (after one warm-up step) with PyTorch's profiler and write the
    /// Chrome-trace JSON to RUN_DIR/profile/ (open in Perfetto or chrome://tracing); 0: off.
    pub profile: u64,
    /// Keep the weights of the best validation apart from the checkpoint rotation, exported
    /// as RUN_DIR/best/ with its metric, value and step in best/summary.json (needs validation:
    /// train.eval_every, or only the final one); null: off.
    pub keep_best: Option<KeepBest>,
    /// Recompute each transformer block's activations in the backward pass instead of keeping
    /// them: less memory for about one more forward of compute, the same gradients. true (both
    /// towers), false, vision or text.
    pub activation_checkpointing: ActivationCheckpointing,
}

/// Which towers `train.activation_checkpointing` recomputes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum ActivationCheckpointing {
    /// Both towers (true) or neither (false).
    Both(bool),
    /// One tower.
    Tower(Tower),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Tower {
    Vision,
    Text,
}

impl Default for ActivationCheckpointing {
    fn default() -> Self {
        Self::Both(false)
    }
}

/// By hand, so that a wrong value is told what the right ones are (serde's untagged enums only
/// say that nothing matched).
impl<'de> Deserialize<'de> for ActivationCheckpointing {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Choice;
        impl serde::de::Visitor<'_> for Choice {
            type Value = ActivationCheckpointing;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false, vision or text")
            }
            fn visit_bool<E>(self, on: bool) -> std::result::Result<Self::Value, E> {
                Ok(ActivationCheckpointing::Both(on))
            }
            fn visit_str<E: serde::de::Error>(
                self,
                s: &str,
            ) -> std::result::Result<Self::Value, E> {
                match s {
                    "vision" => Ok(ActivationCheckpointing::Tower(Tower::Vision)),
                    "text" => Ok(ActivationCheckpointing::Tower(Tower::Text)),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }
        }
        d.deserialize_any(Choice)
    }
}

impl ActivationCheckpointing {
    /// (vision, text): whether each tower is checkpointed.
    pub fn towers(self) -> (bool, bool) {
        match self {
            Self::Both(on) => (on, on),
            Self::Tower(Tower::Vision) => (true, false),
            Self::Tower(Tower::Text) => (false, true),
        }
    }
}

/// Which validation counts as the best.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeepBest {
    /// batch_accuracy (in-batch image-to-caption) or country_accuracy (zero-shot country).
    pub metric: ValMetric,
    /// max (higher is better) or min; a tie keeps the earlier step.
    #[serde(default)]
    pub mode: BestMode,
}

/// A validation metric (`summary.json`'s `validation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ValMetric {
    /// In-batch image-to-caption accuracy.
    BatchAccuracy,
    /// Zero-shot country accuracy.
    CountryAccuracy,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum BestMode {
    #[default]
    Max,
    Min,
}

impl BestMode {
    /// Whether `value` beats `best`.
    pub fn better(self, value: f64, best: f64) -> bool {
        match self {
            BestMode::Max => value > best,
            BestMode::Min => value < best,
        }
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Accumulation {
    /// The loss over all micro × accumulation pairs (GradCache / open_clip's `accum_freq`):
    /// every image meets every caption of the step as a negative, with one micro-batch's
    /// activation memory.
    #[default]
    FullBatch,
    /// Each micro-batch's loss over its own pairs, gradients averaged (StreetCLIP, HF Trainer).
    PerMicroBatch,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// bf16 autocast on CUDA, fp32 on the CPU.
    #[default]
    Auto,
    /// fp32 throughout.
    Fp32,
    /// bf16 autocast with fp32 master weights (also on the CPU, where it is slower).
    Bf16,
}

impl Default for TrainConfig {
    /// StreetCLIP's batch shape (micro-batch 32 x 12 accumulation steps, 3 epochs), with the loss
    /// over the whole step (`full_batch`); StreetCLIP itself used `per_micro_batch`.
    fn default() -> Self {
        Self {
            micro_batch_size: 32,
            grad_accum_steps: 12,
            accumulation: Accumulation::FullBatch,
            epochs: 3,
            max_steps: None,
            seed: 0,
            checkpoint_every: 500,
            keep_checkpoints: 3,
            log_every: 10,
            eval_every: 0,
            val_fraction: 0.05,
            on_nonfinite: OnNonFinite::Stop,
            freeze: FreezeConfig::default(),
            precision: Precision::Auto,
            profile: 0,
            keep_best: None,
            activation_checkpointing: ActivationCheckpointing::default(),
        }
    }
}

impl TrainConfig {
    fn validate(&self) -> Result<()> {
        for (key, v, max) in [
            ("micro_batch_size", self.micro_batch_size as u64, MAX_BATCH),
            ("grad_accum_steps", self.grad_accum_steps as u64, MAX_COUNT),
            ("epochs", self.epochs, MAX_COUNT),
            ("log_every", self.log_every, MAX_STEPS),
            ("checkpoint_every", self.checkpoint_every, MAX_STEPS),
            ("keep_checkpoints", self.keep_checkpoints as u64, MAX_COUNT),
        ] {
            if v == 0 {
                bail!("train.{key} = 0: it must be at least 1");
            }
            at_most(&format!("train.{key}"), v, max)?;
        }
        at_most(
            "train.grad_accum_steps × micro_batch_size",
            (self.grad_accum_steps * self.micro_batch_size) as u64,
            MAX_COUNT,
        )?;
        at_most("train.max_steps", self.max_steps.unwrap_or(0), MAX_STEPS)?;
        at_most("train.eval_every", self.eval_every, MAX_STEPS)?;
        at_most("train.profile", self.profile, MAX_COUNT)?;
        at_most(
            "train.freeze.last_n_blocks",
            self.freeze.last_n_blocks.unwrap_or(0) as u64,
            MAX_COUNT,
        )?;
        if self.keep_best.is_some() && self.val_fraction == 0.0 {
            bail!("train.keep_best needs validation, but train.val_fraction is 0: hold out some samples (e.g. 0.05) or remove keep_best");
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            bail!(
                "train.val_fraction = {}: it must be in [0, 1)",
                self.val_fraction
            );
        }
        if self.freeze.vision && self.freeze.text {
            bail!("train.freeze.vision and train.freeze.text are both true: nothing but the temperature would train; unfreeze one tower");
        }
        if self.freeze.last_n_blocks == Some(0) {
            bail!("train.freeze.last_n_blocks = 0 freezes every block; use freeze.vision/freeze.text to lock a tower");
        }
        Ok(())
    }
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_file_with(path, &[])
    }

    /// Reads `path` and applies `key.sub=value` overrides (values are YAML: `8`, `true`,
    /// `[0.9, 0.98]`, `cosine`).
    pub fn from_file_with(path: &Path, sets: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Self::from_yaml_with(&text, sets)
            .with_context(|| format!("invalid config {}", path.display()))
    }

    pub fn from_yaml_with(text: &str, sets: &[String]) -> Result<Self> {
        let cfg = Self::parse_with(text, sets)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Values that parse but cannot be right: each refused with its key and the allowed range.
    pub fn validate(&self) -> Result<()> {
        self.optim.validate()?;
        self.data.validate()?;
        self.geo.validate()?;
        self.dist.validate()?;
        self.finetune.validate()?;
        self.train.validate()
    }

    /// The file's own errors name its lines; an override's name the override, checked one at a
    /// time so the message points at the `--set` that is wrong.
    fn parse_with(text: &str, sets: &[String]) -> Result<Self> {
        check_size(text)?;
        let parsed: Self = serde_yaml::from_str(text)?;
        if sets.is_empty() {
            return Ok(parsed);
        }
        let mut value: Value = serde_yaml::from_str(text)?;
        if value.is_null() {
            value = Value::Mapping(Default::default());
        }
        for set in sets {
            apply_set(&mut value, set)?;
            serde_yaml::from_value::<Self>(value.clone()).map_err(|e| {
                anyhow::anyhow!("--set {set}: {e}; `streetclip config defaults` lists every key")
            })?;
        }
        Ok(serde_yaml::from_value(value)?)
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("config serializes")
    }
}

fn apply_set(root: &mut Value, set: &str) -> Result<()> {
    let Some((key, raw)) = set.split_once('=') else {
        bail!("--set `{set}`: expected key.sub=value")
    };
    let value: Value = serde_yaml::from_str(raw)
        .with_context(|| format!("--set {key}: `{raw}` is not a YAML value"))?;
    let mut node = root;
    let parts: Vec<&str> = key.split('.').collect();
    if parts.len() > MAX_KEY_PARTS {
        bail!("--set {}...: a key has at most {MAX_KEY_PARTS} dotted parts; `streetclip config defaults` lists every key", parts[..3].join("."));
    }
    for (i, part) in parts.iter().enumerate() {
        let Value::Mapping(map) = node else {
            bail!("--set {key}: `{}` is not a section", parts[..i].join("."))
        };
        let k = Value::String(part.to_string());
        if i + 1 == parts.len() {
            map.insert(k, value);
            return Ok(());
        }
        node = map
            .entry(k)
            .or_insert_with(|| Value::Mapping(Default::default()));
    }
    Ok(())
}

/// Refuses a document whose anchors and aliases expand to more than `MAX_YAML_NODES` nodes
/// before anything is built from it: a few kilobytes of YAML can otherwise expand to gigabytes.
/// The parser replays an alias's events without copying them, so counting costs no memory.
fn check_size(text: &str) -> Result<()> {
    let count = std::cell::Cell::new(0);
    match serde::de::DeserializeSeed::deserialize(
        NodeBudget(&count),
        serde_yaml::Deserializer::from_str(text),
    ) {
        Err(_) if count.get() > MAX_YAML_NODES => bail!("the document expands to more than {MAX_YAML_NODES} values (anchors and aliases repeated too often); write the values out, or fewer"),
        // Other errors (types, syntax) are the real parse's to report, with its better message.
        _ => Ok(()),
    }
}

/// Counts the values of a YAML document as the deserializer visits them, failing past the limit.
struct NodeBudget<'a>(&'a std::cell::Cell<usize>);

impl NodeBudget<'_> {
    fn take<E: serde::de::Error>(&self) -> std::result::Result<(), E> {
        self.0.set(self.0.get() + 1);
        match self.0.get() > MAX_YAML_NODES {
            true => Err(E::custom("too many values")),
            false => Ok(()),
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for NodeBudget<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for NodeBudget<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> std::result::Result<(), E> {
        self.take()
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> std::result::Result<(), E> {
        self.take()
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> std::result::Result<(), E> {
        self.take()
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> std::result::Result<(), E> {
        self.take()
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> std::result::Result<(), E> {
        self.take()
    }
    fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<(), E> {
        self.take()
    }
    fn visit_none<E: serde::de::Error>(self) -> std::result::Result<(), E> {
        self.take()
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<(), A::Error> {
        self.take()?;
        while seq.next_element_seed(NodeBudget(self.0))?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<(), A::Error> {
        self.take()?;
        while map.next_key_seed(NodeBudget(self.0))?.is_some() {
            map.next_value_seed(NodeBudget(self.0))?;
        }
        Ok(())
    }
}
