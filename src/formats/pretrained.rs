//! A Hugging Face CLIP directory as one unit: model, tokenizer and image preprocessing, loaded
//! together and written back in the layout `CLIPModel` / `CLIPProcessor.from_pretrained` read.

use super::{openai, weights};
use crate::data::preprocess::{PreprocessConfig, PREPROCESSOR_FILE};
use crate::formats::tensor_io::write_atomic;
use crate::model::{Activation, ClipModel};
use crate::text::ClipTokenizer;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

const BUNDLED_TOKENIZER_JSON: &[u8] = include_bytes!("../../assets/tokenizer/tokenizer.json");
const BUNDLED_TOKENIZER_CONFIG: &[u8] =
    include_bytes!("../../assets/tokenizer/tokenizer_config.json");
/// Tokenizer files copied verbatim when the source directory has them.
const TOKENIZER_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
];

pub struct Pretrained {
    pub model: ClipModel,
    pub tokenizer: ClipTokenizer,
    pub preprocess: PreprocessConfig,
    /// Where the tokenizer files came from (None: the bundled CLIP tokenizer).
    tokenizer_dir: Option<PathBuf>,
}

impl Pretrained {
    /// A Hugging Face CLIP directory, a hub id (`org/name`) in the local Hugging Face cache, or
    /// an OpenAI / open_clip checkpoint (`model::openai`).
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        Ok(Self::open(dir, None, device)?.0)
    }

    /// `load`, and for an OpenAI / open_clip checkpoint where its activation came from;
    /// `activation` overrides that checkpoint's (a Hugging Face directory's config.json sets
    /// its own, so giving one for it is an error).
    pub fn open(
        dir: &Path,
        activation: Option<Activation>,
        device: Device,
    ) -> Result<(Self, Option<&'static str>)> {
        let dir = &crate::formats::hub::resolve(dir)?;
        match (openai::checkpoint_file(dir), activation) {
            (Some(file), _) => {
                let converted = openai::read(&file, activation)?;
                let from = converted.activation_from;
                Ok((Self::from_converted(dir, converted, device)?, Some(from)))
            }
            (None, Some(_)) => anyhow::bail!(
                "--activation is for OpenAI and open_clip checkpoints; {} is a Hugging Face directory, whose config.json sets it",
                dir.display()
            ),
            (None, None) => {
                let mut clip = Self::skeleton(dir, device)?;
                weights::load_into(&mut clip.model.vs, dir)?;
                Ok((clip, None))
            }
        }
    }

    /// A converted OpenAI / open_clip checkpoint read from `source`, with the processing
    /// `load_processing` gives it.
    fn from_converted(source: &Path, converted: openai::Converted, device: Device) -> Result<Self> {
        let (tokenizer, preprocess, _) = Self::load_processing(source, &converted.config)?;
        let model = crate::model::init::uninitialised(|| ClipModel::new(converted.config, device))?;
        let mut clip = Self {
            model,
            tokenizer,
            preprocess,
            tokenizer_dir: None,
        };
        let what = format!("the converted checkpoint {}", source.display());
        weights::load_tensors(&mut clip.model.vs, &converted.tensors, &what)?;
        Ok(clip)
    }

    /// A directory's model architecture (config.json), tokenizer and preprocessing, with
    /// weights not yet initialised, for the caller to load strictly with `weights::load_into`
    /// (after adding variables, e.g. a head).
    pub fn skeleton(dir: &Path, device: Device) -> Result<Self> {
        let dir = &crate::formats::hub::resolve(dir)?;
        let config = weights::read_config(dir)?;
        // Every weight is loaded next (strictly), so none is initialised first.
        let model = crate::model::init::uninitialised(|| ClipModel::new(config, device))?;
        let (tokenizer, preprocess, tokenizer_dir) = Self::load_processing(dir, &model.config)?;
        Ok(Self {
            model,
            tokenizer,
            preprocess,
            tokenizer_dir,
        })
    }

    /// A directory's tokenizer and preprocessing (bundled/OpenAI defaults where it has none),
    /// and where its tokenizer files are; for an OpenAI / open_clip checkpoint, the bundled
    /// tokenizer and OpenAI's preprocessing with open_clip's mean and std.
    pub fn load_processing(
        dir: &Path,
        config: &crate::model::ClipConfig,
    ) -> Result<(ClipTokenizer, PreprocessConfig, Option<PathBuf>)> {
        let dir = &crate::formats::hub::resolve(dir)?;
        let context = config.text_config.max_position_embeddings as usize;
        if let Some(file) = openai::checkpoint_file(dir) {
            let mut preprocess = PreprocessConfig::for_size(config.vision_config.image_size as u32);
            if let Some((mean, std)) = openai::open_clip_mean_std(&file)? {
                (preprocess.image_mean, preprocess.image_std) = (mean, std);
            }
            return Ok((ClipTokenizer::bundled(context)?, preprocess, None));
        }
        let tokenizer = ClipTokenizer::from_dir(dir, context)?;
        let has_tokenizer = TOKENIZER_FILES.iter().any(|f| dir.join(f).is_file());
        let preprocess = PreprocessConfig::from_dir(dir, config.vision_config.image_size as u32)?;
        Ok((
            tokenizer,
            preprocess,
            has_tokenizer.then(|| dir.to_path_buf()),
        ))
    }

    /// Where `save` copies tokenizer files from (None: the bundled tokenizer).
    pub fn set_tokenizer_dir(&mut self, dir: Option<PathBuf>) {
        self.tokenizer_dir = dir;
    }

    /// A randomly initialised model (HF's initialisation) with the bundled CLIP tokenizer and
    /// OpenAI's preprocessing at the config's image size.
    pub fn fresh(config: crate::model::ClipConfig, device: Device) -> Result<Self> {
        let context = config.text_config.max_position_embeddings as usize;
        let size = config.vision_config.image_size as u32;
        Ok(Self {
            model: ClipModel::new(config, device)?,
            tokenizer: ClipTokenizer::bundled(context)?,
            preprocess: PreprocessConfig::for_size(size),
            tokenizer_dir: None,
        })
    }

    /// Writes `config.json`, `model.safetensors`, the tokenizer files and
    /// `preprocessor_config.json` into the folder `out`, and `head.safetensors` when the model
    /// carries a classification head. The folder is written whole beside `out` and swapped in
    /// (`tensor_io::write_dir_atomic`): an interrupted export leaves the previous one or none.
    pub fn save(&self, out: &Path) -> Result<()> {
        self.save_with(out, |_| Ok(()))
    }

    /// The model for `size`-pixel images (a model trained at another size): the vision
    /// position embeddings resized over the patch grid as open_clip's `resize_pos_embed` does
    /// (`model::vision::resize_position_embedding`), `image_size` in its config, and the
    /// preprocessing's resize and crop at `size`, so that an export carries them.
    pub fn with_image_size(self, size: u32) -> Result<Self> {
        let v = &self.model.config.vision_config;
        if i64::from(size) == v.image_size {
            return Ok(self);
        }
        if size == 0 || i64::from(size) % v.patch_size != 0 {
            anyhow::bail!(
                "model.image_size = {size}: it must be a positive multiple of the model's patch size ({})",
                v.patch_size
            );
        }
        let mut config = self.model.config.clone();
        config.vision_config.image_size = i64::from(size);
        let grid = i64::from(size) / v.patch_size;
        let tensors: std::collections::BTreeMap<String, Tensor> =
            weights::named_tensors(&self.model.vs)
                .into_iter()
                .map(|(name, t)| match name == crate::model::POSITION_EMBEDDING {
                    true => (name, crate::model::resize_position_embedding(&t, grid)),
                    false => (name, t),
                })
                .collect();
        let device = self.device();
        let mut model = crate::model::init::uninitialised(|| ClipModel::new(config, device))?;
        tch::no_grad(|| weights::load_tensors(&mut model.vs, &tensors, "the resized model"))?;
        let mut preprocess = self.preprocess;
        preprocess.size = crate::data::preprocess::ResizeTo::ShortestEdge {
            shortest_edge: size,
        };
        preprocess.crop_size = crate::data::preprocess::CropSize {
            height: size,
            width: size,
        };
        Ok(Self {
            model,
            preprocess,
            ..self
        })
    }

    /// `save`, with `more` writing files of its own (a fine-tune's `head.json`, a geocell
    /// model's cells and index) into the same folder before it is swapped in.
    pub fn save_with(&self, out: &Path, more: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        self.save_with_files(out, &[], more)
    }

    /// `save_with`, where `more` also writes the files named `others` (which a later save may
    /// then replace).
    pub fn save_with_files(
        &self,
        out: &Path,
        others: &[&str],
        more: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<()> {
        let mut replaceable = vec![
            "config.json",
            weights::WEIGHTS_FILE,
            HEAD_FILE,
            HEAD_INFO,
            CELLS_FILE,
            INDEX_FILE,
            PREPROCESSOR_FILE,
            crate::data::preprocess::PROCESSOR_FILE,
        ];
        replaceable.extend(TOKENIZER_FILES);
        replaceable.extend(others);
        crate::formats::tensor_io::write_dir_atomic(out, &replaceable, |dir| {
            self.write_files(dir)?;
            more(dir)
        })
    }

    fn write_files(&self, out: &Path) -> Result<()> {
        let config = serde_json::to_vec_pretty(&self.model.config.to_hf_json())?;
        write_atomic(&out.join("config.json"), &config)?;
        // A classification head, when there is one, goes beside the model, not into it.
        let (clip_tensors, head) = split_head(weights::named_tensors(&self.model.vs));
        crate::formats::tensor_io::write(&out.join(weights::WEIGHTS_FILE), &clip_tensors)?;
        if !head.is_empty() {
            crate::formats::tensor_io::write(&out.join(HEAD_FILE), &head)?;
        }
        self.save_tokenizer(out)?;
        let mut pre = serde_json::to_value(&self.preprocess)?;
        pre["image_processor_type"] = "CLIPImageProcessor".into();
        write_atomic(
            &out.join(PREPROCESSOR_FILE),
            &serde_json::to_vec_pretty(&pre)?,
        )
    }

    /// Whether `dir` holds a complete export as `save` writes it: its config, its weights (every
    /// tensor's bytes present), its preprocessing and a tokenizer. The reason when not.
    pub fn check_export(dir: &Path) -> Result<()> {
        let config = dir.join("config.json");
        let text =
            std::fs::read(&config).with_context(|| format!("cannot read {}", config.display()))?;
        serde_json::from_slice::<serde_json::Value>(&text)
            .with_context(|| format!("{} is not valid JSON", config.display()))?;
        crate::formats::tensor_io::check(&dir.join(weights::WEIGHTS_FILE))?;
        if !dir.join(PREPROCESSOR_FILE).is_file() {
            anyhow::bail!("{} has no {PREPROCESSOR_FILE}", dir.display());
        }
        if !["tokenizer.json", "vocab.json"]
            .iter()
            .any(|f| dir.join(f).is_file())
        {
            anyhow::bail!("{} has no tokenizer", dir.display());
        }
        Ok(())
    }

    fn save_tokenizer(&self, out: &Path) -> Result<()> {
        match &self.tokenizer_dir {
            Some(src) => {
                for name in TOKENIZER_FILES.iter().filter(|f| src.join(f).is_file()) {
                    let bytes = std::fs::read(src.join(name))
                        .with_context(|| format!("cannot read {}", src.join(name).display()))?;
                    write_atomic(&out.join(name), &bytes)?;
                }
                Ok(())
            }
            None => {
                write_atomic(&out.join("tokenizer.json"), BUNDLED_TOKENIZER_JSON)?;
                write_atomic(&out.join("tokenizer_config.json"), BUNDLED_TOKENIZER_CONFIG)
            }
        }
    }

    pub fn device(&self) -> Device {
        self.model.vs.device()
    }

    /// `(input_ids, attention_mask)` on the CPU.
    pub fn tokenize(&self, texts: &[String]) -> Result<(Tensor, Tensor)> {
        let (ids, mask) = self.tokenizer.encode_tensors(texts)?;
        let vocab = self.model.config.text_config.vocab_size;
        let max_id = ids.max().int64_value(&[]);
        if max_id >= vocab {
            anyhow::bail!("the tokenizer produced token id {max_id} but the model's vocabulary has {vocab} entries: the model directory's tokenizer does not belong to it");
        }
        Ok((ids, mask))
    }
}

/// VarStore prefix of a classification head a fine-tuned model may carry (trained by
/// `finetune/head.rs`); saved beside the Hugging Face files, never in `model.safetensors`.
pub const HEAD_PREFIX: &str = "classifier_head";
pub const HEAD_FILE: &str = "head.safetensors";
pub const HEAD_INFO: &str = "head.json";
/// A geocell model's cells beside the export: `{"sizes": ..., "cells": [...]}` as
/// `streetclip geocells` writes.
pub const CELLS_FILE: &str = "geocells.json";
/// A geocell model's retrieval index beside the export: training embeddings, coordinates and
/// cells.
pub const INDEX_FILE: &str = "index.safetensors";

/// Splits a VarStore's named tensors into the CLIP model's and the head's.
pub fn split_head(named: Vec<(String, Tensor)>) -> (Vec<(String, Tensor)>, Vec<(String, Tensor)>) {
    named
        .into_iter()
        .partition(|(name, _)| !name.starts_with(HEAD_PREFIX))
}

/// The classifier a `finetune` export carries beside the model: `head.safetensors` and the
/// class names of `head.json`. Logits are `weight · x + bias` on L2-normalised image embeddings.
pub struct ExportedHead {
    pub classes: Vec<String>,
    pub weight: Tensor,
    pub bias: Tensor,
}

impl ExportedHead {
    /// The head a `finetune` export in `dir` carries, unless `zero_shot`. `conflict` is a flag
    /// the user gave that only zero-shot ranking reads (`--labels`, `--template`): with a head
    /// that is an error asking which was meant, never a silent choice. `decides` (said on
    /// stderr when the head is used) names what the head decides.
    pub fn unless_zero_shot(
        dir: &Path,
        clip: &Pretrained,
        zero_shot: bool,
        conflict: Option<&str>,
        decides: &str,
    ) -> Result<Option<Self>> {
        if zero_shot {
            return Ok(None);
        }
        let Some(head) = Self::read(dir, clip.model.config.projection_dim)? else {
            return Ok(None);
        };
        let (n, names) = (head.classes.len(), head.classes.join(", "));
        if let Some(flag) = conflict {
            anyhow::bail!("{} carries a fine-tuned classifier over {n} classes ({names}): omit {flag} to use it, or add --zero-shot to rank by caption similarity", dir.display());
        }
        eprintln!("{}: using its fine-tuned classifier head ({n} classes) for {decides}; --zero-shot ranks by caption similarity instead", dir.display());
        Ok(Some(head))
    }

    /// The head in `dir`, or `None` when it has no `head.safetensors`; a head whose files do not
    /// fit together or the model is an error naming the file.
    pub fn read(dir: &Path, projection_dim: i64) -> Result<Option<Self>> {
        let dir = &crate::formats::hub::resolve(dir)?;
        let file = dir.join(HEAD_FILE);
        if !file.is_file() {
            return Ok(None);
        }
        let tensors: std::collections::HashMap<String, Tensor> =
            crate::formats::tensor_io::read(&file)?
                .into_iter()
                .collect();
        let get = |name: &str| {
            tensors
                .get(&format!("{HEAD_PREFIX}.{name}"))
                .map(|t| t.to_kind(tch::Kind::Float))
                .with_context(|| format!("{} has no {HEAD_PREFIX}.{name}", file.display()))
        };
        let (weight, bias) = (get("weight")?, get("bias")?);
        let info = dir.join(HEAD_INFO);
        let text = std::fs::read_to_string(&info).with_context(|| {
            format!(
                "{} has a classifier head but no readable {HEAD_INFO} naming its classes",
                dir.display()
            )
        })?;
        let classes: Vec<String> = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| serde_json::from_value(v["classes"].clone()).ok())
            .with_context(|| format!("{}: expected a \"classes\" list of names", info.display()))?;
        let k = classes.len() as i64;
        for (name, t) in [("weight", &weight), ("bias", &bias)] {
            if let Some(row) = crate::formats::tensor_io::first_non_finite_row(t) {
                anyhow::bail!("{}: {HEAD_PREFIX}.{name} holds a value that is not finite (row {row}): the head is damaged; export it again", file.display());
            }
        }
        if weight.size() != [k, projection_dim] || bias.size() != [k] {
            anyhow::bail!(
                "{}: the head's weight {:?} and bias {:?} do not fit {k} classes ({}) on {projection_dim}-d embeddings",
                file.display(),
                weight.size(),
                bias.size(),
                info.display()
            );
        }
        Ok(Some(Self {
            classes,
            weight,
            bias,
        }))
    }

    /// Class probabilities `[B, K]` of L2-normalised image embeddings `[B, d]` (CPU).
    pub fn probabilities(&self, image_embeds: &Tensor) -> Tensor {
        image_embeds
            .linear(&self.weight, Some(&self.bias))
            .softmax(-1, tch::Kind::Float)
    }
}
