//! Floating-point operations of one CLIP forward pass per sample, from the model config: the
//! matrix products (patch embedding, attention projections, attention scores and their
//! weighted sum, MLPs, output projections), 2 FLOPs per multiply-add, as PyTorch's
//! `FlopCounterMode` counts them; norms, softmax and activations are left out. Training is
//! about 3× a forward (the backward is twice), and `full_batch` accumulation adds one forward.

use super::config::ClipConfig;

/// One transformer encoder over `tokens` tokens of width `d` with an MLP of width `h`.
fn encoder(layers: i64, tokens: i64, d: i64, h: i64) -> f64 {
    let (n, d, h) = (tokens as f64, d as f64, h as f64);
    let projections = 4.0 * n * d * d; // q, k, v, out
    let attention = 2.0 * n * n * d; // q·kᵀ and the weighted sum of v
    let mlp = 2.0 * n * d * h;
    2.0 * layers as f64 * (projections + attention + mlp)
}

impl ClipConfig {
    /// FLOPs of `get_image_features` for one image.
    pub fn image_forward_flops(&self) -> f64 {
        let v = &self.vision_config;
        let patches = (v.image_size / v.patch_size).pow(2);
        let patch_embedding =
            2.0 * (patches * v.num_channels * v.patch_size.pow(2) * v.hidden_size) as f64;
        patch_embedding
            + encoder(
                v.num_hidden_layers,
                patches + 1,
                v.hidden_size,
                v.intermediate_size,
            )
            + 2.0 * (v.hidden_size * self.projection_dim) as f64
    }

    /// FLOPs of `get_text_features` for one text of `tokens` positions (the context length
    /// when padded to it, fewer when cut: `model::cut_after_pooled`).
    pub fn text_forward_flops(&self, tokens: i64) -> f64 {
        let t = &self.text_config;
        encoder(
            t.num_hidden_layers,
            tokens,
            t.hidden_size,
            t.intermediate_size,
        ) + 2.0 * (t.hidden_size * self.projection_dim) as f64
    }

    /// FLOPs of one image–text pair's forward through both towers, the text padded to the
    /// context length.
    pub fn forward_flops(&self) -> f64 {
        self.image_forward_flops()
            + self.text_forward_flops(self.text_config.max_position_embeddings)
    }
}
