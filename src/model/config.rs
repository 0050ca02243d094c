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

    pub fn validate(&self) -> Result<()> {
        let t = &self.text_config;
        let v = &self.vision_config;
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
        Ok(())
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
