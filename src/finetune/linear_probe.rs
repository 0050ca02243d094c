//! Method `linear_probe`: a multinomial logistic regression on the frozen model's image
//! embeddings, its L2 strength chosen on the validation split (as CLIP's paper probes).

use super::compare::MethodResult;
use super::head::ClassHead;
use super::logistic;
use super::task::Task;
use crate::config::Method;
use crate::eval::classification::{class_metrics, most_probable};
use crate::formats::pretrained::Pretrained;
use anyhow::{bail, Result};
use std::path::Path;
use tch::Tensor;

/// Features of every split, computed once and kept in `dir/features.safetensors` (a rerun
/// resumes from them).
fn features(task: &Task, clip: &Pretrained, dir: &Path) -> Result<[Tensor; 3]> {
    let path = dir.join("features.safetensors");
    let s = &task.splits;
    let wanted = [
        s.train.len() as i64,
        s.val.len() as i64,
        s.test.len() as i64,
    ];
    if let Ok(saved) = crate::formats::tensor_io::read(&path) {
        let map: std::collections::HashMap<String, Tensor> = saved.into_iter().collect();
        if let (Some(a), Some(b), Some(c)) = (map.get("train"), map.get("val"), map.get("test")) {
            if [a.size()[0], b.size()[0], c.size()[0]] == wanted {
                eprintln!("linear_probe: features from {}", path.display());
                return Ok([a.shallow_clone(), b.shallow_clone(), c.shallow_clone()]);
            }
        }
    }
    let f = [
        task.embed(clip, &s.train)?,
        task.embed(clip, &s.val)?,
        task.embed(clip, &s.test)?,
    ];
    std::fs::create_dir_all(dir)?;
    crate::formats::tensor_io::write(
        &path,
        &[
            ("train".into(), f[0].shallow_clone()),
            ("val".into(), f[1].shallow_clone()),
            ("test".into(), f[2].shallow_clone()),
        ],
    )?;
    Ok(f)
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
