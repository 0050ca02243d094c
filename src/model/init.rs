//! Parameter creation with Hugging Face CLIP's initialisation (normal weights, zero biases), so a
//! model built from a config without a checkpoint starts where `CLIPModel(config)` would.

use tch::nn;

pub fn normal(stdev: f64) -> nn::Init {
    nn::Init::Randn { mean: 0.0, stdev }
}

pub fn linear(p: nn::Path, input: i64, output: i64, stdev: f64, bias: bool) -> nn::Linear {
    let cfg = nn::LinearConfig {
        ws_init: normal(stdev),
        bs_init: Some(nn::Init::Const(0.0)),
        bias,
    };
    nn::linear(p, input, output, cfg)
}

pub fn embedding(p: nn::Path, num: i64, dim: i64, stdev: f64) -> nn::Embedding {
    nn::embedding(
        p,
        num,
        dim,
        nn::EmbeddingConfig {
            ws_init: normal(stdev),
            ..Default::default()
        },
    )
}
