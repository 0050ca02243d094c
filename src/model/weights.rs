//! Loading and saving Hugging Face checkpoints. VarStore names are the HF keys, so there is no
//! renaming: a checkpoint either matches the model exactly or the error lists every difference.

use super::config::ClipConfig;
use crate::tensor_io;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tch::{nn, Tensor};

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// `DIR/config.json`, after checking that `DIR` is a directory.
pub fn read_config(dir: &Path) -> Result<ClipConfig> {
    if !dir.is_dir() {
        bail!("model directory {} does not exist (expected a Hugging Face CLIP directory with config.json and model.safetensors)", dir.display());
    }
    ClipConfig::from_file(&dir.join("config.json"))
}

/// The safetensors files holding a checkpoint: one file, or the shards its index names.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(WEIGHTS_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("cannot read {}", index.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", index.display()))?;
        let map = json["weight_map"]
            .as_object()
            .with_context(|| format!("{} has no `weight_map` object", index.display()))?;
        let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        return Ok(shards.into_iter().map(|s| dir.join(s)).collect());
    }
    if dir.join("pytorch_model.bin").is_file() {
        bail!(
            "{} holds only pytorch_model.bin (a pickle streetclip cannot read); convert it once with: \
             .venv/bin/python scripts/convert_bin_to_safetensors.py {}",
            dir.display(),
            dir.display()
        );
    }
    bail!("no {WEIGHTS_FILE} or {INDEX_FILE} in {}", dir.display())
}

/// Old hub checkpoints carry these buffers; they are `arange`s, not parameters.
fn is_ignored(name: &str) -> bool {
    name.ends_with("position_ids")
}

/// Copies a checkpoint into `vs`, converting to each variable's dtype. Strict: missing keys,
/// unexpected keys and shape mismatches are reported together in one error.
pub fn load_into(vs: &mut nn::VarStore, dir: &Path) -> Result<()> {
    let mut found: BTreeMap<String, Tensor> = BTreeMap::new();
    for file in weight_files(dir)? {
        for (name, t) in tensor_io::read(&file)? {
            if !is_ignored(&name) {
                found.insert(name, t);
            }
        }
    }
    let vars = vs.variables();
    let mut problems = Vec::new();
    for (name, var) in vars.iter().collect::<BTreeMap<_, _>>() {
        match found.get(name) {
            None => problems.push(format!("missing `{name}`")),
            Some(t) if t.size() != var.size() => problems.push(format!(
                "shape of `{name}`: checkpoint {:?}, model {:?}",
                t.size(),
                var.size()
            )),
            Some(_) => {}
        }
    }
    for name in found.keys().filter(|n| !vars.contains_key(*n)) {
        problems.push(format!("unexpected `{name}`"));
    }
    if !problems.is_empty() {
        bail!(
            "checkpoint {} does not match its config.json: {}",
            dir.display(),
            problems.join("; ")
        );
    }
    tch::no_grad(|| {
        for (name, mut var) in vars {
            let src = &found[&name];
            var.copy_(&src.to_kind(var.kind()).to_device(var.device()));
        }
    });
    Ok(())
}

/// Every variable, sorted by name, for writing.
pub fn named_tensors(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut all: Vec<_> = vs.variables().into_iter().collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// `DIR/model.safetensors` with `{"format": "pt"}` metadata, atomically.
pub fn save(vs: &nn::VarStore, dir: &Path) -> Result<()> {
    tensor_io::write(&dir.join(WEIGHTS_FILE), &named_tensors(vs))
}
