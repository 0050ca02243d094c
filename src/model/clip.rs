//! `CLIPModel`: both towers, their projections and the learnable temperature.

use super::config::ClipConfig;
use super::init;
use super::layers::QuickGelu;
use super::text::TextTransformer;
use super::vision::VisionTransformer;
use anyhow::Result;
use tch::{nn, nn::Module, Device, Tensor};

#[derive(Debug)]
pub struct ClipModel {
    pub vs: nn::VarStore,
    pub config: ClipConfig,
    text_model: TextTransformer,
    vision_model: VisionTransformer,
    visual_projection: nn::Linear,
    text_projection: nn::Linear,
    logit_scale: Tensor,
}

/// What `CLIPModel.forward` returns, with the same meanings.
#[derive(Debug)]
pub struct ClipOutput {
    pub logits_per_image: Tensor,
    pub logits_per_text: Tensor,
    /// L2-normalised projections.
    pub image_embeds: Tensor,
    pub text_embeds: Tensor,
}

impl ClipModel {
    /// A randomly initialised model (HF's initialisation), on `device`.
    pub fn new(config: ClipConfig, device: Device) -> Result<Self> {
        config.validate()?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let (t, v) = (&config.text_config, &config.vision_config);
        let text_model = TextTransformer::new(&root / "text_model", t);
        let vision_model = VisionTransformer::new(&root / "vision_model", v);
        let f = config.initializer_factor;
        let visual_projection = init::linear(
            &root / "visual_projection",
            v.hidden_size,
            config.projection_dim,
            (v.hidden_size as f64).powf(-0.5) * f,
            false,
        );
        let text_projection = init::linear(
            &root / "text_projection",
            t.hidden_size,
            config.projection_dim,
            (t.hidden_size as f64).powf(-0.5) * f,
            false,
        );
        let logit_scale = init::var(
            &root,
            "logit_scale",
            &[],
            nn::Init::Const(config.logit_scale_init_value),
        );
        Ok(Self {
            vs,
            config,
            text_model,
            vision_model,
            visual_projection,
            text_projection,
            logit_scale,
        })
    }

    /// Activation checkpointing per tower: each trainable transformer block of the tower keeps
    /// only its input for the backward pass and is recomputed there (same gradients, less
    /// memory, about one more forward of compute).
    pub fn set_activation_checkpointing(&mut self, vision: bool, text: bool) {
        self.vision_model.set_checkpointing(vision);
        self.text_model.set_checkpointing(text);
    }

    /// (vision, text): which towers `set_activation_checkpointing` turned on.
    pub fn activation_checkpointing(&self) -> (bool, bool) {
        (
            self.vision_model.checkpointing(),
            self.text_model.checkpointing(),
        )
    }

    /// `get_image_features`: unnormalised image projections `[B, projection_dim]`.
    pub fn image_features(&self, pixel_values: &Tensor) -> Tensor {
        self.image_features_as(pixel_values, QuickGelu::Exact)
    }

    /// `get_text_features`: unnormalised text projections `[B, projection_dim]`.
    pub fn text_features(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Tensor {
        self.text_features_as(input_ids, attention_mask, QuickGelu::Exact)
    }

    /// Both towers' features as training computes them: QuickGELU through the fused SiLU
    /// kernels (`QuickGelu::Fused`), every other operation as `image_features` and
    /// `text_features`.
    pub fn training_features(
        &self,
        pixel_values: &Tensor,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> (Tensor, Tensor) {
        (
            self.training_image_features(pixel_values),
            self.text_features_as(input_ids, attention_mask, QuickGelu::Fused),
        )
    }

    /// The image tower's part of `training_features` (for heads trained on it).
    pub fn training_image_features(&self, pixel_values: &Tensor) -> Tensor {
        self.image_features_as(pixel_values, QuickGelu::Fused)
    }

    fn image_features_as(&self, pixel_values: &Tensor, quick_gelu: QuickGelu) -> Tensor {
        self.visual_projection
            .forward(&self.vision_model.forward(pixel_values, quick_gelu))
    }

    fn text_features_as(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        quick_gelu: QuickGelu,
    ) -> Tensor {
        self.text_projection.forward(&self.text_model.forward(
            input_ids,
            attention_mask,
            quick_gelu,
        ))
    }

    pub fn logit_scale(&self) -> &Tensor {
        &self.logit_scale
    }

    /// Similarities of already-computed features, exactly as `CLIPModel.forward` forms them.
    pub fn logits(&self, image_features: &Tensor, text_features: &Tensor) -> ClipOutput {
        let image_embeds = normalize(image_features);
        let text_embeds = normalize(text_features);
        let logits_per_text = text_embeds.matmul(&image_embeds.tr()) * self.logit_scale.exp();
        ClipOutput {
            logits_per_image: logits_per_text.tr(),
            logits_per_text,
            image_embeds,
            text_embeds,
        }
    }

    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        pixel_values: &Tensor,
    ) -> ClipOutput {
        self.logits(
            &self.image_features(pixel_values),
            &self.text_features(input_ids, attention_mask),
        )
    }
}

/// `x / ||x||` along the last dimension, written as HF's `_get_vector_norm` so results agree.
pub fn normalize(x: &Tensor) -> Tensor {
    x / x
        .pow_tensor_scalar(2)
        .sum_dim_intlist(-1, true, None)
        .pow_tensor_scalar(0.5)
}
