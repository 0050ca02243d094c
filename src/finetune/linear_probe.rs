//! Method `linear_probe`: a multinomial logistic regression on the frozen model's image
//! embeddings, its L2 strength chosen on the validation split (as CLIP's paper probes).

use super::compare::MethodResult;
use super::head::ClassHead;
use super::logistic;
use super::task::Task;
use crate::config::Method;
use crate::data::classes::LabelledImage;
use crate::eval::classification::{class_metrics, most_probable};
use crate::formats::pretrained::Pretrained;
use crate::formats::tensor_io::{raw_bytes, read_with_metadata, write_with_metadata};
use crate::formats::weights::named_tensors;
use anyhow::{bail, Result};
use std::path::Path;
use tch::Tensor;

/// Features of every split, computed once and kept in `dir/features.safetensors`, which a rerun
/// takes only when they are this model's features of these images (`features_key`), whole
/// (their checksum) and finite; otherwise it says why and computes them again.
fn features(task: &Task, clip: &Pretrained, dir: &Path) -> Result<[Tensor; 3]> {
    let path = dir.join("features.safetensors");
    let s = &task.splits;
    let key = features_key(clip, [&s.train, &s.val, &s.test])?;
    match saved_features(&path, &key, clip.model.config.projection_dim) {
        Ok(Some(f)) => {
            eprintln!("linear_probe: features from {}", path.display());
            return Ok(f);
        }
        Ok(None) => {}
        Err(why) => eprintln!("linear_probe: {} {why}: recomputed", path.display()),
    }
    let f = [
        task.embed(clip, &s.train)?,
        task.embed(clip, &s.val)?,
        task.embed(clip, &s.test)?,
    ];
    std::fs::create_dir_all(dir)?;
    let named: Vec<(String, Tensor)> = SPLITS
        .iter()
        .zip(&f)
        .map(|(n, t)| (n.to_string(), t.shallow_clone()))
        .collect();
    let checksum = checksum(&named);
    write_with_metadata(&path, &named, &[(KEY, key), (CHECKSUM, checksum)])?;
    Ok(f)
}

const SPLITS: [&str; 3] = ["train", "val", "test"];
/// Metadata keys of the features file: what they are features of, and their checksum.
const KEY: &str = "features_of";
const CHECKSUM: &str = "blake3";

/// The features saved at `path` when they are usable; `None` when there are none; why not
/// otherwise.
fn saved_features(path: &Path, key: &str, d: i64) -> Result<Option<[Tensor; 3]>, String> {
    if !path.exists() {
        return Ok(None);
    }
    let (tensors, meta) =
        read_with_metadata(path).map_err(|e| format!("cannot be read ({e:#})"))?;
    if meta.get(KEY).map(String::as_str) != Some(key) {
        return Err("holds the features of another model or other images".into());
    }
    if meta.get(CHECKSUM) != Some(&checksum(&tensors)) {
        return Err("does not match its checksum (damaged)".into());
    }
    let mut by_name: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
    let mut take = |name: &str| {
        let t = by_name
            .remove(name)
            .ok_or(format!("has no `{name}` features"))?;
        match t.dim() == 2
            && t.size()[1] == d
            && bool::try_from(t.isfinite().all()).unwrap_or(false)
        {
            true => Ok(t),
            false => Err(format!(
                "holds `{name}` features that are not finite rows of {d}"
            )),
        }
    };
    Ok(Some([take("train")?, take("val")?, take("test")?]))
}

/// What makes the features what they are, hashed: the image tower's tensors (names, shapes,
/// bytes), the preprocessing, the device kind, and each split's images (path, size and
/// modification time).
fn features_key(clip: &Pretrained, splits: [&[LabelledImage]; 3]) -> Result<String> {
    let mut h = blake3::Hasher::new();
    for (name, t) in named_tensors(&clip.model.vs) {
        if name.starts_with("vision_model.") || name.starts_with("visual_projection.") {
            h.update(format!("{name} {:?} {:?}\n", t.kind(), t.size()).as_bytes());
            h.update(&raw_bytes(&t));
        }
    }
    h.update(serde_json::to_string(&clip.preprocess)?.as_bytes());
    h.update(if clip.device().is_cuda() {
        b"cuda"
    } else {
        b"cpu"
    });
    for (name, items) in SPLITS.iter().zip(splits) {
        h.update(name.as_bytes());
        for item in items {
            let meta = std::fs::metadata(&item.path).ok();
            let size = meta.as_ref().map(|m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            h.update(format!("{}\0{size:?}\0{modified:?}\n", item.path.display()).as_bytes());
        }
    }
    Ok(h.finalize().to_hex().to_string())
}

/// BLAKE3 of the tensors' names, shapes and bytes.
fn checksum(tensors: &[(String, Tensor)]) -> String {
    let mut h = blake3::Hasher::new();
    let mut sorted: Vec<&(String, Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in sorted {
        h.update(format!("{name} {:?}\n", t.size()).as_bytes());
        h.update(&raw_bytes(t));
    }
    h.finalize().to_hex().to_string()
}

pub(super) fn run(task: &Task, dir: &Path) -> Result<MethodResult> {
    let s = &task.splits;
    if s.val.is_empty() {
        bail!("the linear probe chooses its L2 strength on a validation split: set finetune.val or a positive finetune.val_fraction");
    }
    if task.cfg.finetune.c_grid.is_empty() || task.cfg.finetune.c_grid.iter().any(|&c| c <= 0.0) {
        bail!("finetune.c_grid must list positive values");
    }
    let mut clip = task.initial_model()?;
    let [train, val, test] = features(task, &clip, dir)?;
    let (train_y, val_y) = (Task::truth(&s.train), Task::truth(&s.val));
    let mut best: Option<(f64, f64, logistic::Logistic)> = None;
    for &c in &task.cfg.finetune.c_grid {
        let model = logistic::fit(&train, &train_y, s.classes.len(), c)?;
        let acc = class_metrics(&s.classes, &val_y, &model.predict(&val)).accuracy;
        eprintln!(
            "linear_probe: C = {c:e}: validation accuracy {:.1}% ({} L-BFGS iterations)",
            100.0 * acc,
            model.iterations
        );
        // Ties keep the stronger regularisation (the grid's earlier value).
        if best.as_ref().is_none_or(|(_, a, _)| acc > *a) {
            best = Some((c, acc, model));
        }
    }
    let (c, val_acc, model) = best.expect("a non-empty grid");
    let test_m = task.test_result(most_probable(&model.probabilities(&test))?);
    ClassHead::attach_with(&mut clip, &model.weight, &model.bias);
    task.export(&clip, &dir.join("export"), Method::LinearProbe, None)?;
    Ok(MethodResult {
        chosen_c: Some(c),
        ..task.result(
            Method::LinearProbe,
            Some(val_acc),
            test_m,
            dir.join("export"),
        )
    })
}
