//! Loading and saving Hugging Face checkpoints. VarStore names are the HF keys, so there is no
//! renaming: a checkpoint either matches the model exactly or the error lists every difference.

use crate::formats::tensor_io;
use crate::model::config::ClipConfig;
use crate::model::ClipModel;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use tch::{nn, Tensor};

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The pickle checkpoints of older hub repositories (e.g. openai/clip-vit-large-patch14-336).
pub const BIN_FILE: &str = "pytorch_model.bin";
pub const BIN_INDEX_FILE: &str = "pytorch_model.bin.index.json";

/// `DIR/config.json`, after checking that `DIR` is a directory.
pub fn read_config(dir: &Path) -> Result<ClipConfig> {
    if dir.exists() && !dir.is_dir() {
        bail!("{} is a file but not a checkpoint streetclip reads: give a Hugging Face CLIP directory (config.json + model.safetensors), an OpenAI .pt archive or an open_clip checkpoint", dir.display());
    }
    if !dir.is_dir() {
        bail!("{}", super::hub::missing_local(dir));
    }
    let config = ClipConfig::from_file(&dir.join("config.json"))?;
    // A config far larger than its weights (a hostile or mismatched config.json) would allocate
    // the model before the mismatch is seen: at least one byte per parameter must be there.
    if let Ok(files) = weight_files(dir) {
        let bytes: u64 = files
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len())
            .sum();
        let parameters = config.parameter_count();
        if parameters > bytes as f64 {
            let names: Vec<String> = files
                .iter()
                .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect();
            bail!(
                "{}: config.json describes {parameters:.3e} parameters, but its weights ({}) hold only {bytes} bytes: they are truncated, or the config does not belong to them",
                dir.display(),
                names.join(", ")
            );
        }
    }
    Ok(config)
}

/// The files holding a checkpoint: `model.safetensors` or the shards its index names, else
/// `pytorch_model.bin` or the shards of its index (read by libtorch's unpickler).
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    for (single, index) in [(WEIGHTS_FILE, INDEX_FILE), (BIN_FILE, BIN_INDEX_FILE)] {
        if dir.join(single).is_file() {
            return Ok(vec![dir.join(single)]);
        }
        if dir.join(index).is_file() {
            return shards(&dir.join(index));
        }
    }
    bail!(
        "no {WEIGHTS_FILE}, {BIN_FILE} or their sharded indexes in {}",
        dir.display()
    )
}

/// The shard files a Hugging Face `*.index.json` names, beside it.
fn shards(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index)
        .with_context(|| format!("cannot read {}", index.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", index.display()))?;
    let map = json["weight_map"]
        .as_object()
        .with_context(|| format!("{} has no `weight_map` object", index.display()))?;
    let names: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
    let dir = index.parent().unwrap_or(Path::new("."));
    Ok(names.into_iter().map(|s| dir.join(s)).collect())
}

/// A checkpoint file's tensors: safetensors, or a `torch.save` pickle read without Python.
pub fn read_file(file: &Path) -> Result<Vec<(String, Tensor)>> {
    Ok(read_file_with_classes(file)?.tensors)
}

/// A checkpoint file's tensors and the TorchScript module classes it names (none for
/// safetensors or a `torch.save` state dict).
pub fn read_file_with_classes(file: &Path) -> Result<super::pickle::Pickled> {
    match file.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => Ok(super::pickle::Pickled {
            tensors: tensor_io::read(file)?,
            classes: Default::default(),
        }),
        _ => super::pickle::read(file),
    }
}

/// Old hub checkpoints carry these buffers; they are `arange`s, not parameters.
fn is_ignored(name: &str) -> bool {
    name.ends_with("position_ids")
}

/// Loads a checkpoint into `vs`, converting to each variable's dtype and device. Strict: missing
/// keys, unexpected keys and shape mismatches are reported together in one error. A safetensors
/// tensor already of its variable's dtype on the CPU becomes that variable's storage (the file's
/// mapped pages, see `tensor_io::map`): one copy of the weights in memory, none made, so a model
/// built `init::uninitialised` is loaded at the memory of its weights.
pub fn load_into(vs: &mut nn::VarStore, dir: &Path) -> Result<()> {
    let mut found: BTreeMap<String, (Tensor, bool)> = BTreeMap::new();
    for file in weight_files(dir)? {
        let mapped = file.extension().is_some_and(|e| e == "safetensors");
        let tensors = match mapped {
            true => tensor_io::map(&file)?,
            false => read_file(&file)?,
        };
        for (name, t) in tensors {
            if !is_ignored(&name) {
                found.insert(name, (t, mapped));
            }
        }
    }
    let vars = vs.variables();
    let shapes = found
        .iter()
        .map(|(n, (t, _))| (n.clone(), t.size()))
        .collect();
    check_names(&vars, &shapes, &format!("checkpoint {}", dir.display()))?;
    tch::no_grad(|| {
        for (name, mut var) in vars {
            let (src, mapped) = &found[&name];
            let src = src.to_kind(var.kind()).to_device(var.device());
            // A mapped tensor's bytes are its own (safetensors tensors never overlap); one
            // from a pickle may share its storage with another, so it is copied.
            match *mapped {
                true => var.set_data(&src),
                false => {
                    var.copy_(&src);
                }
            }
        }
    });
    Ok(())
}

/// Copies named tensors into `vs` as `load_into` does; `what` names their source in errors.
pub fn load_tensors(
    vs: &mut nn::VarStore,
    found: &BTreeMap<String, Tensor>,
    what: &str,
) -> Result<()> {
    let vars = vs.variables();
    let shapes = found.iter().map(|(n, t)| (n.clone(), t.size())).collect();
    check_names(&vars, &shapes, what)?;
    tch::no_grad(|| {
        for (name, mut var) in vars {
            let src = &found[&name];
            var.copy_(&src.to_kind(var.kind()).to_device(var.device()));
        }
    });
    Ok(())
}

/// Every variable has a tensor of its shape in `found` and `found` has nothing else, or one
/// error listing every difference.
fn check_names(
    vars: &HashMap<String, Tensor>,
    found: &BTreeMap<String, Vec<i64>>,
    what: &str,
) -> Result<()> {
    let mut problems = Vec::new();
    for (name, var) in vars.iter().collect::<BTreeMap<_, _>>() {
        match found.get(name) {
            None => problems.push(format!("missing `{name}`")),
            Some(shape) if *shape != var.size() => problems.push(format!(
                "shape of `{name}`: checkpoint {shape:?}, model {:?}",
                var.size()
            )),
            Some(_) => {}
        }
    }
    for name in found.keys().filter(|n| !vars.contains_key(*n)) {
        problems.push(format!("unexpected `{name}`"));
    }
    if !problems.is_empty() {
        bail!("{what} does not match its config: {}", problems.join("; "));
    }
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

impl ClipModel {
    /// Loads a Hugging Face model directory (`config.json` + safetensors), strictly.
    pub fn load(dir: &Path, device: tch::Device) -> Result<Self> {
        let config = read_config(dir)?;
        let mut model = crate::model::init::uninitialised(|| Self::new(config, device))?;
        load_into(&mut model.vs, dir)?;
        Ok(model)
    }
}
