//! CLIP configuration, deserialized from a Hugging Face `config.json` (`CLIPConfig`).
//!
//! Field names and defaults follow `transformers.CLIPTextConfig` / `CLIPVisionConfig`
//! (<https://github.com/huggingface/transformers/blob/main/src/transformers/models/clip/configuration_clip.py>),
//! so a hub config with omitted keys means the same thing here as in transformers.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The activation inside the MLP blocks (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// OpenAI's `x * sigmoid(1.702 x)`.
    QuickGelu,
    /// Exact (erf) GELU, `torch.nn.functional.gelu`.
    Gelu,
    /// The tanh approximation, `gelu(x, approximate="tanh")`.
    #[serde(alias = "gelu_new", alias = "gelu_pytorch_tanh")]
    GeluTanh,
}

fn text_model_type() -> String {
    "clip_text_model".into()
}
fn vision_model_type() -> String {
    "clip_vision_model".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct TextConfig {
    #[serde(default = "text_model_type")]
    pub model_type: String,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub projection_dim: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub max_position_embeddings: i64,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    pub initializer_range: f64,
    pub initializer_factor: f64,
    pub pad_token_id: i64,
    pub bos_token_id: i64,
    /// `2` selects HF's legacy pooling (argmax token id); any other value pools at its first
    /// occurrence.
    pub eos_token_id: i64,
}

impl Default for TextConfig {
    fn default() -> Self {
        Self {
            model_type: text_model_type(),
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            projection_dim: 512,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            initializer_range: 0.02,
            initializer_factor: 1.0,
            pad_token_id: 1,
            bos_token_id: 49406,
            eos_token_id: 49407,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct VisionConfig {
    #[serde(default = "vision_model_type")]
    pub model_type: String,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub projection_dim: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_channels: i64,
    pub image_size: i64,
    pub patch_size: i64,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    pub initializer_range: f64,
    pub initializer_factor: f64,
}

impl Default for VisionConfig {
    fn default() -> Self {
        Self {
            model_type: vision_model_type(),
            hidden_size: 768,
            intermediate_size: 3072,
            projection_dim: 512,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            initializer_range: 0.02,
            initializer_factor: 1.0,
        }
    }
}

impl VisionConfig {
    /// Patches per side times patches per side, plus the class token.
    pub fn num_positions(&self) -> i64 {
        let side = self.image_size / self.patch_size;
        side * side + 1
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ClipConfig {
    #[serde(default)]
    pub text_config: TextConfig,
    #[serde(default)]
    pub vision_config: VisionConfig,
    #[serde(default = "default_projection_dim")]
    pub projection_dim: i64,
    #[serde(default = "default_logit_scale")]
    pub logit_scale_init_value: f64,
    #[serde(default = "default_factor")]
    pub initializer_factor: f64,
}

/// The most parameters a config may describe: four times ViT-bigG/14's.
pub const MAX_PARAMETERS: f64 = 1e10;

fn default_projection_dim() -> i64 {
    512
}
fn default_logit_scale() -> f64 {
    2.6592
}
fn default_factor() -> f64 {
    1.0
}

impl ClipConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read model config {}", path.display()))?;
        let cfg: Self = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a CLIP config.json", path.display()))?;
        cfg.validate()
            .with_context(|| format!("invalid model config {}", path.display()))?;
        Ok(cfg)
    }

    /// Every architecture field in a range a real CLIP can have, the fields consistent with each
    /// other, and the whole at most `MAX_PARAMETERS`, before any tensor is built from it: a
    /// negative width, 10^9 layers or a zero projection would otherwise panic, abort on
    /// allocation or train at a constant loss.
    /// Long on purpose: one flat list of range checks, a line or two per field.
    pub fn validate(&self) -> Result<()> {
        let t = &self.text_config;
        let v = &self.vision_config;
        let width = 1 << 16;
        for (key, value, max) in [
            ("text_config.vocab_size", t.vocab_size, 1 << 24),
            ("text_config.hidden_size", t.hidden_size, width),
            (
                "text_config.intermediate_size",
                t.intermediate_size,
                4 * width,
            ),
            ("text_config.num_hidden_layers", t.num_hidden_layers, 1024),
            (
                "text_config.num_attention_heads",
                t.num_attention_heads,
                width,
            ),
            (
                "text_config.max_position_embeddings",
                t.max_position_embeddings,
                width,
            ),
            ("vision_config.hidden_size", v.hidden_size, width),
            (
                "vision_config.intermediate_size",
                v.intermediate_size,
                4 * width,
            ),
            ("vision_config.num_hidden_layers", v.num_hidden_layers, 1024),
            (
                "vision_config.num_attention_heads",
                v.num_attention_heads,
                width,
            ),
            ("vision_config.num_channels", v.num_channels, 64),
            ("vision_config.image_size", v.image_size, width),
            ("vision_config.patch_size", v.patch_size, width),
            ("projection_dim", self.projection_dim, width),
        ] {
            if !(1..=max).contains(&value) {
                bail!("{key} = {value}: it must be between 1 and {max}");
            }
        }
        for (key, value) in [
            ("text_config.layer_norm_eps", t.layer_norm_eps),
            ("vision_config.layer_norm_eps", v.layer_norm_eps),
        ] {
            if !(value.is_finite() && value > 0.0) {
                bail!("{key} = {value}: it must be a finite number > 0");
            }
        }
        if !self.logit_scale_init_value.is_finite() {
            bail!(
                "logit_scale_init_value = {}: it must be finite",
                self.logit_scale_init_value
            );
        }
        if t.hidden_size % t.num_attention_heads != 0 {
            bail!(
                "text hidden_size {} is not divisible by num_attention_heads {}",
                t.hidden_size,
                t.num_attention_heads
            );
        }
        if v.hidden_size % v.num_attention_heads != 0 {
            bail!(
                "vision hidden_size {} is not divisible by num_attention_heads {}",
                v.hidden_size,
                v.num_attention_heads
            );
        }
        if v.image_size % v.patch_size != 0 {
            bail!(
                "vision image_size {} is not a multiple of patch_size {}",
                v.image_size,
                v.patch_size
            );
        }
        let n = self.parameter_count();
        if n > MAX_PARAMETERS {
            bail!("the config describes {n:.3e} parameters, more than the {MAX_PARAMETERS:.0e} any CLIP has (ViT-bigG/14: 2.5e9)");
        }
        Ok(())
    }

    /// How many parameters the model has (as a float: the fields may be hostile and large).
    pub fn parameter_count(&self) -> f64 {
        let (t, v) = (&self.text_config, &self.vision_config);
        let f = |x: i64| x as f64;
        let block = |h: f64, i: f64| 4.0 * (h * h + h) + 2.0 * h * i + i + h + 4.0 * h;
        let text = f(t.vocab_size) * f(t.hidden_size)
            + f(t.max_position_embeddings) * f(t.hidden_size)
            + f(t.num_hidden_layers) * block(f(t.hidden_size), f(t.intermediate_size))
            + 2.0 * f(t.hidden_size)
            + f(t.hidden_size) * f(self.projection_dim);
        let patch = f(v.num_channels) * f(v.patch_size) * f(v.patch_size) * f(v.hidden_size);
        let positions = (f(v.image_size) / f(v.patch_size)).powi(2) + 1.0;
        let vision = patch
            + (positions + 1.0) * f(v.hidden_size)
            + f(v.num_hidden_layers) * block(f(v.hidden_size), f(v.intermediate_size))
            + 4.0 * f(v.hidden_size)
            + f(v.hidden_size) * f(self.projection_dim);
        text + vision + 1.0
    }

    /// The JSON transformers expects in a model directory (`CLIPModel.from_pretrained`).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).expect("config serializes");
        let obj = value.as_object_mut().expect("config is an object");
        obj.insert("model_type".into(), "clip".into());
        obj.insert("architectures".into(), serde_json::json!(["CLIPModel"]));
        obj.insert("dtype".into(), "float32".into());
        value
    }

    /// OpenAI's configuration around two towers (legacy argmax pooling, as OpenAI's
    /// `encode_text`).
    pub(crate) fn openai(vision: VisionConfig, text: TextConfig, projection_dim: i64) -> Self {
        Self {
            text_config: TextConfig {
                projection_dim,
                eos_token_id: 2,
                bos_token_id: 0,
                ..text
            },
            vision_config: VisionConfig {
                projection_dim,
                ..vision
            },
            projection_dim,
            logit_scale_init_value: default_logit_scale(),
            initializer_factor: 1.0,
        }
    }

    /// `openai/clip-vit-base-patch32`
    /// (<https://huggingface.co/openai/clip-vit-base-patch32/blob/main/config.json>).
    pub fn vit_b_32() -> Self {
        Self::openai(VisionConfig::default(), TextConfig::default(), 512)
    }

    /// `openai/clip-vit-base-patch16`
    /// (<https://huggingface.co/openai/clip-vit-base-patch16/blob/main/config.json>).
    pub fn vit_b_16() -> Self {
        Self::openai(
            VisionConfig {
                patch_size: 16,
                ..VisionConfig::default()
            },
            TextConfig::default(),
            512,
        )
    }

    /// `openai/clip-vit-large-patch14`
    /// (<https://huggingface.co/openai/clip-vit-large-patch14/blob/main/config.json>).
    pub fn vit_l_14() -> Self {
        let vision = VisionConfig {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            patch_size: 14,
            ..VisionConfig::default()
        };
        let text = TextConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            num_attention_heads: 12,
            ..TextConfig::default()
        };
        Self::openai(vision, text, 768)
    }

    /// `openai/clip-vit-large-patch14-336`, StreetCLIP's starting point
    /// (<https://huggingface.co/openai/clip-vit-large-patch14-336/blob/main/config.json>).
    pub fn vit_l_14_336() -> Self {
        let mut cfg = Self::vit_l_14();
        cfg.vision_config.image_size = 336;
        cfg
    }

    /// Looks a preset up by the names users know it by.
    pub fn preset(name: &str) -> Result<Self> {
        Ok(match name {
            "ViT-B/32" | "openai/clip-vit-base-patch32" => Self::vit_b_32(),
            "ViT-B/16" | "openai/clip-vit-base-patch16" => Self::vit_b_16(),
            "ViT-L/14" | "openai/clip-vit-large-patch14" => Self::vit_l_14(),
            "ViT-L/14-336" | "openai/clip-vit-large-patch14-336" => Self::vit_l_14_336(),
            other => bail!(
                "unknown CLIP preset `{other}`; known: ViT-B/32, ViT-B/16, ViT-L/14, ViT-L/14-336"
            ),
        })
    }
}
