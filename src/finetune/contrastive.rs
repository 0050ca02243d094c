//! Method `contrastive` (FLYP, Goyal et al., 2023): the main trainer's contrastive loss on the
//! class captions; the model classifies by the zero-shot head of its own (tuned or mixed) text
//! tower.

use super::compare::MethodResult;
use super::head::{ClassHead, PREFIX};
use super::task::Task;
use super::wise;
use crate::config::Method;
use crate::formats::pretrained::Pretrained;
use crate::train::objective::Contrastive;
use anyhow::Result;
use std::path::Path;

pub(super) fn run(task: &Task, dir: &Path) -> Result<MethodResult> {
    let mut objective = Contrastive {
        accumulation: task.cfg.train.accumulation,
    };
    task.fine_tune((Method::Contrastive, &mut objective, zero_shot_head), dir)
}

/// The zero-shot classifier of `clip`'s text tower as its head (attached, or replacing the one
/// it has).
fn zero_shot_head(task: &Task, clip: &mut Pretrained) -> Result<()> {
    let (w, b) = ClassHead::zero_shot(clip, task.names(), task.templates())?;
    if ClassHead::of(clip).is_none() {
        ClassHead::attach_with(clip, &w, &b);
        return Ok(());
    }
    let head = [
        (format!("{PREFIX}.weight"), w),
        (format!("{PREFIX}.bias"), b),
    ];
    wise::assign(&clip.model.vs, &head)
}
