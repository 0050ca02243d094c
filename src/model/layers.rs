//! The transformer pieces both towers share: `CLIPAttention`, `CLIPMLP`, `CLIPEncoderLayer`,
//! `CLIPEncoder`. Field names are the HF submodule names, so VarStore paths are the HF keys.

use super::config::Activation;
use super::init;
use crate::shim::checkpoint;
use tch::{nn, nn::Module, Tensor};

/// Sizes and initialisation scale one encoder needs (a view over either tower's config).
#[derive(Debug, Clone, Copy)]
pub struct EncoderShape {
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_heads: i64,
    pub num_layers: i64,
    pub act: Activation,
    pub layer_norm_eps: f64,
    pub initializer_factor: f64,
}

impl EncoderShape {
    pub fn new(
        hidden_size: i64,
        intermediate_size: i64,
        num_heads: i64,
        num_layers: i64,
        act: Activation,
        layer_norm_eps: f64,
        initializer_factor: f64,
    ) -> Self {
        Self {
            hidden_size,
            intermediate_size,
            num_heads,
            num_layers,
            act,
            layer_norm_eps,
            initializer_factor,
        }
    }
}

/// `nn.LayerNorm` over the last dimension (`weight` 1, `bias` 0 at initialisation), as tch's
/// `nn::LayerNorm` computes it, with handles a checkpointed block can own (`shallow_clone`).
#[derive(Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

pub fn layer_norm(p: nn::Path, size: i64, eps: f64) -> LayerNorm {
    LayerNorm {
        weight: init::var(&p, "weight", &[size], nn::Init::Const(1.0)),
        bias: init::var(&p, "bias", &[size], nn::Init::Const(0.0)),
        eps,
    }
}

impl LayerNorm {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let d = self.weight.size()[0];
        x.layer_norm([d], Some(&self.weight), Some(&self.bias), self.eps, true)
    }

    fn shallow_clone(&self) -> Self {
        Self {
            weight: self.weight.shallow_clone(),
            bias: self.bias.shallow_clone(),
            eps: self.eps,
        }
    }
}

/// Another handle on the same weights.
fn linear_handle(l: &nn::Linear) -> nn::Linear {
    nn::Linear {
        ws: l.ws.shallow_clone(),
        bs: l.bs.as_ref().map(Tensor::shallow_clone),
    }
}

#[derive(Debug)]
pub struct Attention {
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    out_proj: nn::Linear,
    num_heads: i64,
}

impl Attention {
    fn new(p: nn::Path, s: &EncoderShape) -> Self {
        let d = s.hidden_size;
        // HF `CLIPPreTrainedModel._init_weights`: depth-scaled projections.
        let in_std =
            (d as f64).powf(-0.5) * (2.0 * s.num_layers as f64).powf(-0.5) * s.initializer_factor;
        let out_std = (d as f64).powf(-0.5) * s.initializer_factor;
        Self {
            q_proj: init::linear(&p / "q_proj", d, d, in_std, true),
            k_proj: init::linear(&p / "k_proj", d, d, in_std, true),
            v_proj: init::linear(&p / "v_proj", d, d, in_std, true),
            out_proj: init::linear(&p / "out_proj", d, d, out_std, true),
            num_heads: s.num_heads,
        }
    }

    /// `mask`: boolean, broadcastable to `[B, heads, T, T]`, true where attention is allowed.
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>, causal: bool) -> Tensor {
        let (b, t, d) = x
            .size3()
            .expect("attention input is [batch, tokens, hidden]");
        let heads = |proj: &nn::Linear| {
            proj.forward(x)
                .view([b, t, self.num_heads, d / self.num_heads])
                .transpose(1, 2)
        };
        let (q, k, v) = (
            heads(&self.q_proj),
            heads(&self.k_proj),
            heads(&self.v_proj),
        );
        // A causal mask passed explicitly already encodes causality.
        let is_causal = causal && mask.is_none();
        let y = Tensor::scaled_dot_product_attention(&q, &k, &v, mask, 0.0, is_causal, None, false);
        self.out_proj.forward(&y.transpose(1, 2).reshape([b, t, d]))
    }

    fn shallow_clone(&self) -> Self {
        Self {
            q_proj: linear_handle(&self.q_proj),
            k_proj: linear_handle(&self.k_proj),
            v_proj: linear_handle(&self.v_proj),
            out_proj: linear_handle(&self.out_proj),
            num_heads: self.num_heads,
        }
    }
}

#[derive(Debug)]
struct Mlp {
    fc1: nn::Linear,
    fc2: nn::Linear,
    act: Activation,
}

impl Mlp {
    fn new(p: nn::Path, s: &EncoderShape) -> Self {
        let d = s.hidden_size as f64;
        let fc_std = (2.0 * d).powf(-0.5) * s.initializer_factor;
        let in_std = d.powf(-0.5) * (2.0 * s.num_layers as f64).powf(-0.5) * s.initializer_factor;
        Self {
            fc1: init::linear(&p / "fc1", s.hidden_size, s.intermediate_size, fc_std, true),
            fc2: init::linear(&p / "fc2", s.intermediate_size, s.hidden_size, in_std, true),
            act: s.act,
        }
    }

    fn forward(&self, x: &Tensor, quick_gelu: QuickGelu) -> Tensor {
        let h = self.fc1.forward(x);
        let h = match (self.act, quick_gelu) {
            (Activation::QuickGelu, QuickGelu::Exact) => &h * (&h * 1.702).sigmoid(),
            (Activation::QuickGelu, QuickGelu::Fused) => (&h * 1.702).silu() / 1.702,
            (Activation::Gelu, _) => h.gelu("none"),
            (Activation::GeluTanh, _) => h.gelu("tanh"),
        };
        self.fc2.forward(&h)
    }

    fn shallow_clone(&self) -> Self {
        Self {
            fc1: linear_handle(&self.fc1),
            fc2: linear_handle(&self.fc2),
            act: self.act,
        }
    }
}

#[derive(Debug)]
struct EncoderLayer {
    self_attn: Attention,
    layer_norm1: LayerNorm,
    mlp: Mlp,
    layer_norm2: LayerNorm,
}

impl EncoderLayer {
    fn new(p: nn::Path, s: &EncoderShape) -> Self {
        Self {
            self_attn: Attention::new(&p / "self_attn", s),
            layer_norm1: layer_norm(&p / "layer_norm1", s.hidden_size, s.layer_norm_eps),
            mlp: Mlp::new(&p / "mlp", s),
            layer_norm2: layer_norm(&p / "layer_norm2", s.hidden_size, s.layer_norm_eps),
        }
    }

    fn forward(&self, x: &Tensor, pass: Pass) -> Tensor {
        let x = x + self
            .self_attn
            .forward(&self.layer_norm1.forward(x), pass.mask, pass.causal);
        &x + self
            .mlp
            .forward(&self.layer_norm2.forward(&x), pass.quick_gelu)
    }

    fn shallow_clone(&self) -> Self {
        Self {
            self_attn: self.self_attn.shallow_clone(),
            layer_norm1: self.layer_norm1.shallow_clone(),
            mlp: self.mlp.shallow_clone(),
            layer_norm2: self.layer_norm2.shallow_clone(),
        }
    }

    fn trainable(&self) -> bool {
        let (a, m) = (&self.self_attn, &self.mlp);
        [&a.q_proj, &a.k_proj, &a.v_proj, &a.out_proj, &m.fc1, &m.fc2]
            .iter()
            .any(|l| l.ws.requires_grad() || l.bs.as_ref().is_some_and(Tensor::requires_grad))
            || [&self.layer_norm1, &self.layer_norm2]
                .iter()
                .any(|n| n.weight.requires_grad() || n.bias.requires_grad())
    }

    /// The block with its activations recomputed in the backward pass instead of kept.
    fn forward_checkpointed(&self, x: &Tensor, pass: Pass) -> Tensor {
        let layer = self.shallow_clone();
        let mask = pass.mask.map(Tensor::shallow_clone);
        let (causal, quick_gelu) = (pass.causal, pass.quick_gelu);
        checkpoint(x, move |x| {
            let pass = Pass {
                mask: mask.as_ref(),
                causal,
                quick_gelu,
            };
            layer.forward(x, pass)
        })
    }
}

/// `CLIPEncoder`: a stack of pre-LayerNorm transformer blocks under `layers.N`.
#[derive(Debug)]
pub struct Encoder {
    layers: Vec<EncoderLayer>,
    /// Recompute each trainable block's activations in the backward pass (`set_checkpointing`).
    checkpointing: bool,
}

impl Encoder {
    pub fn new(p: nn::Path, s: &EncoderShape) -> Self {
        let layers = (0..s.num_layers)
            .map(|i| EncoderLayer::new(&p / "layers" / i, s))
            .collect();
        Self {
            layers,
            checkpointing: false,
        }
    }

    /// Activation checkpointing per block (HF's `gradient_checkpointing_enable`): a block's
    /// input is all that is kept of it for the backward pass. Frozen blocks build no graph
    /// either way and are run plainly.
    pub fn set_checkpointing(&mut self, on: bool) {
        self.checkpointing = on;
    }

    pub fn checkpointing(&self) -> bool {
        self.checkpointing
    }

    pub fn forward(&self, x: &Tensor, pass: Pass) -> Tensor {
        self.layers.iter().fold(x.shallow_clone(), |h, layer| {
            if self.checkpointing && layer.trainable() {
                layer.forward_checkpointed(&h, pass)
            } else {
                layer.forward(&h, pass)
            }
        })
    }
}

/// How one forward pass runs the encoder's blocks.
#[derive(Clone, Copy)]
pub struct Pass<'a> {
    /// Keys each query may attend to (`[B, 1, T, T]`, true = attend), if not all.
    pub mask: Option<&'a Tensor>,
    /// Each position attends only to itself and earlier ones (the text tower).
    pub causal: bool,
    pub quick_gelu: QuickGelu,
}

/// How QuickGELU, x σ(1.702 x), is computed (other activations have one way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuickGelu {
    /// transformers' `x * sigmoid(1.702 * x)`: inference, whose outputs then equal theirs to
    /// the last bits.
    Exact,
    /// silu(1.702 x) / 1.702, the same function, through PyTorch's fused SiLU kernels: the
    /// backward is 3 kernels instead of autograd's 5 over the exact formula (the two products'
    /// gradients, the sigmoid's, their sum) and keeps one tensor of `[tokens, 4 × width]` per
    /// block instead of two. The floats round about one ulp apart, so training uses it and
    /// inference does not.
    Fused,
}
