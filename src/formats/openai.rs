//! OpenAI CLIP and open_clip checkpoints as Hugging Face `CLIPModel` tensors: OpenAI's
//! TorchScript archives (`ViT-L-14-336px.pt` as `clip.load` downloads it), `clip.model.CLIP` and
//! `open_clip` state dicts (`.pt`, `.bin`, `.safetensors`; a training checkpoint's `state_dict`
//! and DistributedDataParallel's `module.` prefixes are unwrapped), and open_clip's hub layout (a
//! directory with `open_clip_pytorch_model.bin` or `open_clip_model.safetensors` and
//! `open_clip_config.json`). The architecture is read from the tensors' shapes; what shapes cannot
//! tell (attention head width, the activation) comes from open_clip_config.json or the archive's
//! module classes, else OpenAI's choices (64-wide heads, QuickGELU).

use super::weights;
use crate::model::config::{Activation, ClipConfig, TextConfig, VisionConfig};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// open_clip's hub files (`hf download laion/...` puts them beside, or instead of, HF's).
const OPEN_CLIP_WEIGHTS: [&str; 2] = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"];
const OPEN_CLIP_CONFIG: &str = "open_clip_config.json";
/// OpenAI's and open_clip's head width unless a config says otherwise (`width // 64` heads).
const HEAD_WIDTH: i64 = 64;

/// An OpenAI / open_clip checkpoint turned into a Hugging Face model's config and tensors.
pub struct Converted {
    pub config: ClipConfig,
    pub tensors: BTreeMap<String, Tensor>,
    /// Where the activation came from, for the user.
    pub activation_from: &'static str,
}

/// The checkpoint file `path` names when it is not a Hugging Face directory: a file, or a
/// directory with open_clip's weights and no config.json.
pub fn checkpoint_file(path: &Path) -> Option<PathBuf> {
    if path.is_file() {
        return Some(path.to_path_buf());
    }
    if !path.is_dir() || path.join("config.json").is_file() {
        return None;
    }
    OPEN_CLIP_WEIGHTS
        .iter()
        .map(|f| path.join(f))
        .find(|f| f.is_file())
}

/// Reads `file` and converts it; `activation` overrides what the checkpoint says.
pub fn read(file: &Path, activation: Option<Activation>) -> Result<Converted> {
    let read = weights::read_file_with_classes(file)?;
    let (tensors, classes) = (unwrap(read.tensors), read.classes);
    let open_clip = open_clip_config(file)?;
    let what = || {
        format!(
            "{} is not an OpenAI or open_clip ViT CLIP checkpoint",
            file.display()
        )
    };
    check_layout(&tensors).with_context(what)?;
    let (act, activation_from) = match activation {
        Some(a) => (a, "given"),
        None => activation_of(&classes, open_clip.as_ref()),
    };
    let config = infer_config(&tensors, open_clip.as_ref(), act).with_context(what)?;
    Ok(Converted {
        config,
        tensors: to_hf(tensors).with_context(what)?,
        activation_from,
    })
}

/// A training checkpoint's `state_dict` (when there is one) without `module.` prefixes, and
/// without the values `clip.model.build_model` also drops (they are not parameters).
fn unwrap(tensors: Vec<(String, Tensor)>) -> BTreeMap<String, Tensor> {
    let wrapped = tensors.iter().any(|(n, _)| n.starts_with("state_dict."));
    tensors
        .into_iter()
        .filter_map(|(n, t)| {
            let n = if wrapped {
                n.strip_prefix("state_dict.")?.to_string()
            } else {
                n
            };
            let mut n = n.as_str();
            while let Some(rest) = n.strip_prefix("module.") {
                n = rest;
            }
            let dropped = ["input_resolution", "context_length", "vocab_size"].contains(&n)
                || n.ends_with("attn_mask");
            (!dropped).then(|| (n.to_string(), t))
        })
        .collect()
}

fn check_layout(t: &BTreeMap<String, Tensor>) -> Result<()> {
    if t.keys().any(|n| n.starts_with("visual.layer1.")) {
        bail!("it has a ResNet image tower (visual.layer1...), which Hugging Face's CLIPModel does not have; use a ViT model");
    }
    if t.keys().any(|n| n.starts_with("vision_model.")) {
        bail!("it has Hugging Face key names: put it in a directory with the model's config.json");
    }
    for name in ["visual.conv1.weight", "token_embedding.weight"] {
        if !t.contains_key(name) {
            bail!("it has no `{name}`");
        }
    }
    Ok(())
}

/// The directory's open_clip_config.json, when the checkpoint has one beside it.
fn open_clip_config(file: &Path) -> Result<Option<serde_json::Value>> {
    let path = file.with_file_name(OPEN_CLIP_CONFIG);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let json = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    Ok(Some(json))
}

/// A TorchScript archive names its activation module; open_clip's config says `quick_gelu`
/// (absent: open_clip's default, GELU); a bare state dict is taken to be OpenAI's (QuickGELU).
fn activation_of(
    classes: &BTreeSet<String>,
    open_clip: Option<&serde_json::Value>,
) -> (Activation, &'static str) {
    if classes.iter().any(|c| c.ends_with(".QuickGELU")) {
        return (Activation::QuickGelu, "the archive's QuickGELU modules");
    }
    if classes.iter().any(|c| c.ends_with(".GELU")) {
        return (Activation::Gelu, "the archive's GELU modules");
    }
    if let Some(cfg) = open_clip {
        return match cfg["model_cfg"]["quick_gelu"].as_bool() {
            Some(true) => (Activation::QuickGelu, "open_clip_config.json"),
            _ => (Activation::Gelu, "open_clip_config.json"),
        };
    }
    (
        Activation::QuickGelu,
        "OpenAI's default: a state dict does not say; override with --activation",
    )
}

/// The image mean and std of the open_clip_config.json beside `file`, when it gives them.
pub fn open_clip_mean_std(file: &Path) -> Result<Option<([f32; 3], [f32; 3])>> {
    Ok(open_clip_config(file)?.as_ref().and_then(mean_std))
}

fn mean_std(cfg: &serde_json::Value) -> Option<([f32; 3], [f32; 3])> {
    let three = |v: &serde_json::Value| -> Option<[f32; 3]> {
        let a = v.as_array().filter(|a| a.len() == 3)?;
        Some([0, 1, 2].map(|i| a[i].as_f64().unwrap_or(f64::NAN) as f32))
            .filter(|x| x.iter().all(|v| v.is_finite()))
    };
    let p = &cfg["preprocess_cfg"];
    Some((three(&p["mean"])?, three(&p["std"])?))
}

fn shape(t: &BTreeMap<String, Tensor>, name: &str, dims: usize) -> Result<Vec<i64>> {
    let size = t
        .get(name)
        .with_context(|| format!("it has no `{name}`"))?
        .size();
    if size.len() != dims {
        bail!("`{name}` has shape {size:?}, not {dims} dimensions");
    }
    Ok(size)
}

/// Blocks `prefix.0.`, `prefix.1.`, ...
fn blocks(t: &BTreeMap<String, Tensor>, prefix: &str) -> i64 {
    let indices: BTreeSet<&str> = t
        .keys()
        .filter_map(|n| n.strip_prefix(prefix)?.split('.').next())
        .collect();
    indices.len() as i64
}

fn heads(width: i64, head_width: i64, tower: &str) -> Result<i64> {
    if head_width <= 0 || width % head_width != 0 {
        bail!("{tower} width {width} is not a multiple of the head width {head_width}");
    }
    Ok(width / head_width)
}

fn infer_config(
    t: &BTreeMap<String, Tensor>,
    open_clip: Option<&serde_json::Value>,
    act: Activation,
) -> Result<ClipConfig> {
    let cfg = |tower: &str, key: &str| open_clip.and_then(|c| c["model_cfg"][tower][key].as_i64());
    let conv = shape(t, "visual.conv1.weight", 4)?;
    let positions = shape(t, "visual.positional_embedding", 2)?[0];
    let side = ((positions - 1) as f64).sqrt().round() as i64;
    if side * side + 1 != positions {
        bail!("visual.positional_embedding has {positions} rows, not a square grid plus one");
    }
    let vision_width = conv[0];
    let vision = VisionConfig {
        hidden_size: vision_width,
        intermediate_size: shape(t, "visual.transformer.resblocks.0.mlp.c_fc.weight", 2)?[0],
        num_hidden_layers: blocks(t, "visual.transformer.resblocks."),
        num_attention_heads: heads(
            vision_width,
            cfg("vision_cfg", "head_width").unwrap_or(HEAD_WIDTH),
            "vision",
        )?,
        num_channels: conv[1],
        image_size: conv[3] * side,
        patch_size: conv[3],
        hidden_act: act,
        ..VisionConfig::default()
    };
    let token = shape(t, "token_embedding.weight", 2)?;
    let text_width = token[1];
    let text = TextConfig {
        vocab_size: token[0],
        hidden_size: text_width,
        intermediate_size: shape(t, "transformer.resblocks.0.mlp.c_fc.weight", 2)?[0],
        num_hidden_layers: blocks(t, "transformer.resblocks."),
        num_attention_heads: match cfg("text_cfg", "heads") {
            Some(h) => h,
            None => heads(text_width, HEAD_WIDTH, "text")?,
        },
        max_position_embeddings: shape(t, "positional_embedding", 2)?[0],
        hidden_act: act,
        ..TextConfig::default()
    };
    let projection = shape(t, "visual.proj", 2)?[1];
    let text_projection = shape(t, "text_projection", 2)?[1];
    if projection != text_projection {
        bail!("visual.proj projects to {projection} dimensions but text_projection to {text_projection}");
    }
    let config = ClipConfig::openai(vision, text, projection);
    config.validate()?;
    Ok(config)
}

/// The checkpoint under Hugging Face names; every tensor must have a place.
fn to_hf(t: BTreeMap<String, Tensor>) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    let mut unknown = Vec::new();
    for (name, value) in t {
        match convert(&name, &value) {
            Some(converted) => out.extend(converted),
            None => unknown.push(name),
        }
    }
    if !unknown.is_empty() {
        let n = unknown.len();
        unknown.truncate(8);
        bail!(
            "{n} tensor(s) have no place in a Hugging Face CLIPModel: {}",
            unknown.join(", ")
        );
    }
    Ok(out)
}

/// OpenAI's top-level tensors: (OpenAI name, HF name, stored transposed).
const TOP_LEVEL: [(&str, &str, bool); 14] = [
    (
        "token_embedding.weight",
        "text_model.embeddings.token_embedding.weight",
        false,
    ),
    (
        "positional_embedding",
        "text_model.embeddings.position_embedding.weight",
        false,
    ),
    (
        "ln_final.weight",
        "text_model.final_layer_norm.weight",
        false,
    ),
    ("ln_final.bias", "text_model.final_layer_norm.bias", false),
    ("text_projection", "text_projection.weight", true),
    ("logit_scale", "logit_scale", false),
    (
        "visual.class_embedding",
        "vision_model.embeddings.class_embedding",
        false,
    ),
    (
        "visual.conv1.weight",
        "vision_model.embeddings.patch_embedding.weight",
        false,
    ),
    (
        "visual.positional_embedding",
        "vision_model.embeddings.position_embedding.weight",
        false,
    ),
    (
        "visual.ln_pre.weight",
        "vision_model.pre_layrnorm.weight",
        false,
    ),
    (
        "visual.ln_pre.bias",
        "vision_model.pre_layrnorm.bias",
        false,
    ),
    (
        "visual.ln_post.weight",
        "vision_model.post_layernorm.weight",
        false,
    ),
    (
        "visual.ln_post.bias",
        "vision_model.post_layernorm.bias",
        false,
    ),
    ("visual.proj", "visual_projection.weight", true),
];

/// Inside a residual block: (OpenAI prefix, HF prefix). `attn.in_proj_*`, q, k and v stacked,
/// is split in `convert`.
const BLOCK: [(&str, &str); 5] = [
    ("attn.out_proj.", "self_attn.out_proj."),
    ("ln_1.", "layer_norm1."),
    ("ln_2.", "layer_norm2."),
    ("mlp.c_fc.", "mlp.fc1."),
    ("mlp.c_proj.", "mlp.fc2."),
];

/// The Hugging Face name(s) and value(s) of one OpenAI tensor; None when it has no place.
fn convert(name: &str, value: &Tensor) -> Option<Vec<(String, Tensor)>> {
    if let Some((_, hf, transposed)) = TOP_LEVEL.iter().find(|(o, _, _)| *o == name) {
        let v = if *transposed {
            value.tr().contiguous()
        } else {
            value.shallow_clone()
        };
        return Some(vec![(hf.to_string(), v)]);
    }
    let (tower, rest) = match name.strip_prefix("visual.transformer.resblocks.") {
        Some(rest) => ("vision_model", rest),
        None => ("text_model", name.strip_prefix("transformer.resblocks.")?),
    };
    let (index, inner) = rest.split_once('.')?;
    index.parse::<usize>().ok()?;
    let layer = format!("{tower}.encoder.layers.{index}.");
    for (openai, hf) in &BLOCK {
        if let Some(param) = inner.strip_prefix(openai) {
            return Some(vec![(format!("{layer}{hf}{param}"), value.shallow_clone())]);
        }
    }
    let param = match inner {
        "attn.in_proj_weight" => "weight",
        "attn.in_proj_bias" => "bias",
        _ => return None,
    };
    let qkv = value.chunk(3, 0);
    Some(
        ["q_proj", "k_proj", "v_proj"]
            .iter()
            .zip(qkv)
            .map(|(p, v)| (format!("{layer}self_attn.{p}.{param}"), v.contiguous()))
            .collect(),
    )
}
