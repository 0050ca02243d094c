//! `CLIPTextTransformer` (`text_model.*`).

use super::config::TextConfig;
use super::init::Embedding;
use super::layers::{layer_norm, Encoder, EncoderShape, LayerNorm, Pass, QuickGelu};
use tch::{nn, Kind, Tensor};

#[derive(Debug)]
struct TextEmbeddings {
    token_embedding: Embedding,
    position_embedding: Embedding,
}

#[derive(Debug)]
pub struct TextTransformer {
    embeddings: TextEmbeddings,
    encoder: Encoder,
    final_layer_norm: LayerNorm,
    eos_token_id: i64,
}

impl TextTransformer {
    pub fn new(p: nn::Path, c: &TextConfig) -> Self {
        let std = c.initializer_range * c.initializer_factor;
        let embeddings = TextEmbeddings {
            token_embedding: Embedding::new(
                &p / "embeddings" / "token_embedding",
                c.vocab_size,
                c.hidden_size,
                std,
            ),
            position_embedding: Embedding::new(
                &p / "embeddings" / "position_embedding",
                c.max_position_embeddings,
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
            encoder: Encoder::new(&p / "encoder", &shape),
            final_layer_norm: layer_norm(&p / "final_layer_norm", c.hidden_size, c.layer_norm_eps),
            eos_token_id: c.eos_token_id,
        }
    }

    /// Activation checkpointing of the encoder's blocks (`Encoder::set_checkpointing`).
    pub fn set_checkpointing(&mut self, on: bool) {
        self.encoder.set_checkpointing(on);
    }

    pub fn checkpointing(&self) -> bool {
        self.encoder.checkpointing()
    }

    /// Pooled output `[B, hidden]` at the end-of-text token, as HF's `pooler_output`.
    /// `attention_mask` (1 = token, 0 = padding) is optional, as in HF.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        quick_gelu: QuickGelu,
    ) -> Tensor {
        let (b, t) = input_ids.size2().expect("input_ids is [batch, tokens]");
        let positions = Tensor::arange(t, (Kind::Int64, input_ids.device()));
        let x = self.embeddings.token_embedding.forward(input_ids)
            + self.embeddings.position_embedding.forward(&positions);
        // Causal and padding masks combined, so padded keys are never attended to. Without
        // padding (as HF's SDPA path also decides) the causal kernel alone does, faster.
        let mask = attention_mask
            .filter(|m| m.min().int64_value(&[]) == 0)
            .map(|m| {
                let causal = Tensor::ones([t, t], (Kind::Bool, input_ids.device())).tril(0);
                causal
                    .unsqueeze(0)
                    .logical_and(&m.to_kind(Kind::Bool).view([b, 1, t]))
                    .unsqueeze(1)
            });
        let pass = Pass {
            mask: mask.as_ref(),
            causal: true,
            quick_gelu,
        };
        let h = self
            .final_layer_norm
            .forward(&self.encoder.forward(&x, pass));
        let rows = Tensor::arange(b, (Kind::Int64, input_ids.device()));
        h.index(&[Some(rows), Some(self.eos_positions(input_ids))])
    }

    /// Where each sequence is pooled. HF keeps the pre-#24773 rule for configs whose
    /// `eos_token_id` is 2 (all OpenAI checkpoints): the position of the largest token id, which
    /// is `<|endoftext|>` in CLIP's vocabulary. Otherwise: the first `eos_token_id`.
    pub fn eos_positions(&self, input_ids: &Tensor) -> Tensor {
        pooled_positions(input_ids, self.eos_token_id)
    }
}

/// Where each row of `input_ids` is pooled by a text tower whose config's end-of-text id is
/// `eos_token_id` (`TextTransformer::eos_positions`).
pub fn pooled_positions(input_ids: &Tensor, eos_token_id: i64) -> Tensor {
    if eos_token_id == 2 {
        input_ids.to_kind(Kind::Int).argmax(-1, false)
    } else {
        input_ids
            .eq(eos_token_id)
            .to_kind(Kind::Int)
            .argmax(-1, false)
    }
}

/// Texts `[B, context]` cut after the last position any row is pooled at, for a tower whose
/// end-of-text id is `eos_token_id`; the mask is dropped when every row attends to all of its
/// tokens up to its pooled one. The pooled outputs are the same as the whole context's, because
/// attention is causal: a position never sees a later one, so what follows a row's end-of-text
/// token (padding, or more tokens) cannot reach it, nor can a mask that hides only such
/// positions. Equal in exact arithmetic; floats round differently over the shorter shapes
/// (~1e-6 relative, as transformers' own model gives at the two lengths). Training's captions
/// take 15-30 of CLIP's 77 positions, so the text tower does well under half the work.
pub fn cut_after_pooled(
    input_ids: &Tensor,
    attention_mask: &Tensor,
    eos_token_id: i64,
) -> (Tensor, Option<Tensor>) {
    let pooled = pooled_positions(input_ids, eos_token_id).to_kind(Kind::Int64);
    let length = match pooled.numel() {
        0 => input_ids.size()[1],
        _ => pooled.max().int64_value(&[]) + 1,
    };
    let ids = input_ids.narrow(1, 0, length);
    let mask = attention_mask.narrow(1, 0, length);
    let positions = Tensor::arange(length, (Kind::Int64, ids.device())).unsqueeze(0);
    let up_to_pooled = positions.le_tensor(&pooled.unsqueeze(1));
    let hidden_before_pooled = mask.eq(0).logical_and(&up_to_pooled).any().int64_value(&[]) != 0;
    (ids, hidden_before_pooled.then_some(mask))
}
