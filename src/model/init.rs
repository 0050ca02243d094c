//! Parameter creation with Hugging Face CLIP's initialisation (normal weights, zero biases), so a
//! model built from a config without a checkpoint starts where `CLIPModel(config)` would; or,
//! inside [`uninitialised`], without any initialisation, for a model whose weights are loaded
//! next.

use std::cell::Cell;
use tch::{nn, Kind, Tensor};

thread_local! {
    static UNINITIALISED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `build` with every parameter it creates allocated but not written: no random draws, and
/// (for large tensors) no memory resident until the loader fills it. Only for a model every
/// weight of which is loaded next (`weights::load_into` is strict: a missing weight is an error).
pub fn uninitialised<T>(build: impl FnOnce() -> T) -> T {
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            UNINITIALISED.set(false);
        }
    }
    UNINITIALISED.set(true);
    let _restore = Restore;
    build()
}

/// A trainable variable `name` of `dims` under `p`, initialised with `init` (see `uninitialised`).
pub fn var(p: &nn::Path, name: &str, dims: &[i64], init: nn::Init) -> Tensor {
    match UNINITIALISED.get() {
        true => p.add(name, Tensor::empty(dims, (Kind::Float, p.device())), true),
        false => p.var(name, dims, init),
    }
}

pub fn normal(stdev: f64) -> nn::Init {
    nn::Init::Randn { mean: 0.0, stdev }
}

/// `nn.Linear(input, output, bias)` as `weight` [output, input] and `bias`.
pub fn linear(p: nn::Path, input: i64, output: i64, stdev: f64, bias: bool) -> nn::Linear {
    nn::Linear {
        bs: bias.then(|| var(&p, "bias", &[output], nn::Init::Const(0.0))),
        ws: var(&p, "weight", &[output, input], normal(stdev)),
    }
}

/// `nn.Embedding(num, dim)`: a lookup table `weight` [num, dim].
#[derive(Debug)]
pub struct Embedding {
    weight: Tensor,
}

impl Embedding {
    pub fn new(p: nn::Path, num: i64, dim: i64, stdev: f64) -> Self {
        Self {
            weight: var(&p, "weight", &[num, dim], normal(stdev)),
        }
    }

    pub fn forward(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.weight, ids, -1, false, false)
    }
}
