//! `CLIPVisionTransformer` (`vision_model.*`).

use super::config::VisionConfig;
use super::init::{self, Embedding};
use super::layers::{layer_norm, Encoder, EncoderShape, LayerNorm, Pass, QuickGelu};
use tch::{nn, Kind, Tensor};

#[derive(Debug)]
struct VisionEmbeddings {
    class_embedding: Tensor,
    /// `nn.Conv2d(channels, hidden, patch, stride=patch, bias=False)`'s weight.
    patch_embedding: Tensor,
    patch_size: i64,
    position_embedding: Embedding,
}

#[derive(Debug)]
pub struct VisionTransformer {
    embeddings: VisionEmbeddings,
    // HF's spelling; it is the checkpoint key.
    pre_layrnorm: LayerNorm,
    encoder: Encoder,
    post_layernorm: LayerNorm,
}

impl VisionTransformer {
    pub fn new(p: nn::Path, c: &VisionConfig) -> Self {
        let e = &p / "embeddings";
        let std = c.initializer_range * c.initializer_factor;
        let embeddings = VisionEmbeddings {
            class_embedding: init::var(
                &e,
                "class_embedding",
                &[c.hidden_size],
                init::normal((c.hidden_size as f64).powf(-0.5) * c.initializer_factor),
            ),
            patch_embedding: init::var(
                &(&e / "patch_embedding"),
                "weight",
                &[c.hidden_size, c.num_channels, c.patch_size, c.patch_size],
                init::normal(std),
            ),
            patch_size: c.patch_size,
            position_embedding: Embedding::new(
                &e / "position_embedding",
                c.num_positions(),
                c.hidden_size,
                std,
            ),
        };
        let shape = EncoderShape::new(
            c.hidden_size,
            c.intermediate_size,
            c.num_attention_heads,
            c.num_hidden_layers,
            c.hidden_act,
            c.layer_norm_eps,
            c.initializer_factor,
        );
        Self {
            embeddings,
            pre_layrnorm: layer_norm(&p / "pre_layrnorm", c.hidden_size, c.layer_norm_eps),
            encoder: Encoder::new(&p / "encoder", &shape),
            post_layernorm: layer_norm(&p / "post_layernorm", c.hidden_size, c.layer_norm_eps),
        }
    }

    /// Activation checkpointing of the encoder's blocks (`Encoder::set_checkpointing`).
    pub fn set_checkpointing(&mut self, on: bool) {
        self.encoder.set_checkpointing(on);
    }

    pub fn checkpointing(&self) -> bool {
        self.encoder.checkpointing()
    }

    /// Pooled output `[B, hidden]`: the class token after `post_layernorm`, as HF's `pooler_output`.
    pub fn forward(&self, pixel_values: &Tensor, quick_gelu: QuickGelu) -> Tensor {
        let stride = self.embeddings.patch_size;
        let patches = pixel_values
            .conv2d(
                &self.embeddings.patch_embedding,
                None::<Tensor>,
                [stride, stride],
                [0, 0],
                [1, 1],
                1,
            )
            .flatten(2, -1)
            .transpose(1, 2);
        let (b, _, d) = patches
            .size3()
            .expect("patch embeddings are [batch, patches, hidden]");
        let class = self
            .embeddings
            .class_embedding
            .view([1, 1, d])
            .expand([b, 1, d], false);
        let x = Tensor::cat(&[class, patches], 1);
        let positions = Tensor::arange(x.size()[1], (Kind::Int64, x.device()));
        let x = x + self.embeddings.position_embedding.forward(&positions);
        let pass = Pass {
            mask: None,
            causal: false,
            quick_gelu,
        };
        let h = self.encoder.forward(&self.pre_layrnorm.forward(&x), pass);
        self.post_layernorm.forward(&h.select(1, 0))
    }
}

/// The weight name of the vision tower's position embeddings (class token first, then the
/// patch grid row by row).
pub const POSITION_EMBEDDING: &str = "vision_model.embeddings.position_embedding.weight";

/// Position embeddings `[1 + g², d]` for a `grid` × `grid` patch grid, as open_clip's
/// `resize_pos_embed` makes them: the class token's row kept, the grid resized bicubically with
/// antialiasing (`F.interpolate(mode="bicubic", antialias=True, align_corners=False)`, ATen's
/// `_upsample_bicubic2d_aa`), computed in float32 and returned in the input's kind.
pub fn resize_position_embedding(embedding: &Tensor, grid: i64) -> Tensor {
    let (rows, d) = (embedding.size()[0], embedding.size()[1]);
    let old = ((rows - 1) as f64).sqrt().round() as i64;
    let class = embedding.narrow(0, 0, 1);
    let patches = embedding
        .narrow(0, 1, rows - 1)
        .to_kind(Kind::Float)
        .reshape([1, old, old, d])
        .permute([0, 3, 1, 2]);
    let resized = patches
        .internal_upsample_bicubic2d_aa([grid, grid], false, None, None)
        .permute([0, 2, 3, 1])
        .reshape([grid * grid, d])
        .to_kind(embedding.kind());
    Tensor::cat(&[class, resized], 0)
}
