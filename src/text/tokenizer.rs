//! CLIP's BPE tokenizer through the `tokenizers` crate, padded and truncated to the model's
//! context exactly as transformers' `CLIPTokenizer(padding="max_length", truncation=True)`.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;
use tch::Tensor;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// The HF `tokenizer.json` derived from OpenAI's vocabulary (scripts/make_tokenizer.py), built
/// into the binary so every checkpoint without tokenizer files still tokenizes like CLIP.
const BUNDLED: &[u8] = include_bytes!("../../assets/tokenizer/tokenizer.json");
const PAD_TOKEN: &str = "<|endoftext|>";

pub struct ClipTokenizer {
    inner: Tokenizer,
}

impl ClipTokenizer {
    /// The tokenizer's full definition (vocabulary, merges, normalisation, padding) as JSON:
    /// equal strings tokenize equally, so caches key on it.
    pub fn definition(&self) -> Result<String> {
        self.inner
            .to_string(false)
            .map_err(|e| anyhow::anyhow!("cannot serialise the tokenizer: {e}"))
    }

    /// The bundled CLIP tokenizer.
    pub fn bundled(context_length: usize) -> Result<Self> {
        let inner = Tokenizer::from_bytes(BUNDLED)
            .map_err(|e| anyhow::anyhow!("bundled tokenizer.json: {e}"))?;
        Self::with_context(inner, context_length)
    }

    /// A model directory's tokenizer: `tokenizer.json`, else `vocab.json` + `merges.txt`, else
    /// the bundled one (all OpenAI CLIP checkpoints share it).
    pub fn from_dir(dir: &Path, context_length: usize) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            let inner = Tokenizer::from_file(&json)
                .map_err(|e| anyhow::anyhow!("cannot load tokenizer {}: {e}", json.display()))?;
            return Self::with_context(inner, context_length);
        }
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if vocab.is_file() && merges.is_file() {
            return Self::from_vocab_merges(&vocab, &merges, context_length);
        }
        Self::bundled(context_length)
    }

    /// CLIP's pipeline (normalizer, pre-tokenizer, post-processor: those of the bundled file)
    /// around the BPE model given by `vocab.json` and `merges.txt`.
    pub fn from_vocab_merges(vocab: &Path, merges: &Path, context_length: usize) -> Result<Self> {
        let vocab_text = std::fs::read_to_string(vocab)
            .with_context(|| format!("cannot read {}", vocab.display()))?;
        let vocab_json: serde_json::Map<String, Value> = serde_json::from_str(&vocab_text)
            .with_context(|| format!("{} is not a JSON object of token ids", vocab.display()))?;
        let merges_text = std::fs::read_to_string(merges)
            .with_context(|| format!("cannot read {}", merges.display()))?;
        let merge_pairs: Vec<Value> = merges_text
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .map(|l| {
                let (a, b) = l
                    .split_once(' ')
                    .with_context(|| format!("{}: bad merge line `{l}`", merges.display()))?;
                Ok(serde_json::json!([a, b]))
            })
            .collect::<Result<_>>()?;
        let id_of = |tok: &str| -> Result<Value> {
            vocab_json
                .get(tok)
                .cloned()
                .with_context(|| format!("{} has no `{tok}` token", vocab.display()))
        };
        let mut spec: Value = serde_json::from_slice(BUNDLED)?;
        for added in spec["added_tokens"]
            .as_array_mut()
            .expect("bundled tokenizer has added_tokens")
        {
            added["id"] = id_of(added["content"].as_str().unwrap_or_default())?;
        }
        for role in ["sep", "cls"] {
            let tok = spec["post_processor"][role][0]
                .as_str()
                .unwrap_or_default()
                .to_string();
            spec["post_processor"][role][1] = id_of(&tok)?;
        }
        spec["model"]["vocab"] = Value::Object(vocab_json.clone());
        spec["model"]["merges"] = Value::Array(merge_pairs);
        let inner = Tokenizer::from_bytes(serde_json::to_vec(&spec)?).map_err(|e| {
            anyhow::anyhow!(
                "cannot build a tokenizer from {} and {}: {e}",
                vocab.display(),
                merges.display()
            )
        })?;
        Self::with_context(inner, context_length)
    }

    fn with_context(mut inner: Tokenizer, context_length: usize) -> Result<Self> {
        let Some(pad_id) = inner.token_to_id(PAD_TOKEN) else {
            bail!("tokenizer has no {PAD_TOKEN} token")
        };
        inner
            .with_truncation(Some(TruncationParams {
                max_length: context_length,
                ..Default::default()
            }))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(context_length),
            pad_id,
            pad_token: PAD_TOKEN.into(),
            ..Default::default()
        }));
        Ok(Self { inner })
    }

    /// Token ids and attention masks, each `Vec` of length `context_length`.
    pub fn encode(&self, texts: &[String]) -> Result<(Vec<Vec<i64>>, Vec<Vec<i64>>)> {
        let encodings = self
            .inner
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
        let ids = encodings
            .iter()
            .map(|e| e.get_ids().iter().map(|&i| i as i64).collect())
            .collect();
        let masks = encodings
            .iter()
            .map(|e| e.get_attention_mask().iter().map(|&m| m as i64).collect())
            .collect();
        Ok((ids, masks))
    }

    /// `[B, context]` int64 tensors `(input_ids, attention_mask)`.
    pub fn encode_tensors(&self, texts: &[String]) -> Result<(Tensor, Tensor)> {
        let (ids, masks) = self.encode(texts)?;
        let stack = |rows: Vec<Vec<i64>>| Tensor::from_slice2(&rows);
        Ok((stack(ids), stack(masks)))
    }
}
