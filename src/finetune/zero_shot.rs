//! Method `zero_shot`: the initial model with the zero-shot classifier of the class captions as
//! its head; nothing is trained.

use super::compare::MethodResult;
use super::head::ClassHead;
use super::task::Task;
use crate::config::Method;
use anyhow::Result;
use std::path::Path;

pub(super) fn run(task: &Task, dir: &Path) -> Result<MethodResult> {
    let mut clip = task.initial_model()?;
    let (w, b) = ClassHead::zero_shot(&clip, task.names(), task.templates())?;
    let (val, test) = task.score(&clip, &w, &b)?;
    ClassHead::attach_with(&mut clip, &w, &b);
    task.export(&clip, &dir.join("export"), Method::ZeroShot, None)?;
    Ok(task.result(Method::ZeroShot, val, test, dir.join("export")))
}
