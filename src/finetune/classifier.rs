//! Method `classifier`: a linear head initialised from the class captions' zero-shot
//! classifier, trained with the model by cross-entropy (`head::Classifier`).

use super::compare::MethodResult;
use super::head::{ClassLabels, Classifier};
use super::task::Task;
use crate::config::Method;
use crate::formats::pretrained::Pretrained;
use anyhow::Result;
use std::path::Path;

pub(super) fn run(task: &Task, dir: &Path) -> Result<MethodResult> {
    let labels = task.splits.train.iter().map(|i| i.class as i64).collect();
    let mut objective = Classifier::new(
        task.names().to_vec(),
        task.templates().to_vec(),
        ClassLabels(labels),
    );
    task.fine_tune((Method::Classifier, &mut objective, keep_trained_head), dir)
}

/// The head was trained with the model: nothing to set.
fn keep_trained_head(_: &Task, _: &mut Pretrained) -> Result<()> {
    Ok(())
}
