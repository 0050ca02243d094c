//! A run directory: one writer at a time (`.lock`), checkpoints written in the background, and
//! resuming from the newest usable one (refusing a config or data that changed the result).

use super::checkpoint::{self, TrainState};
use super::config_change::{self, DataFingerprint};
use super::optim::AdamW;
use super::trainer::Run;
use crate::data::loader::Position;
use crate::dist::Dist;
use crate::formats::pretrained::Pretrained;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Where and how checkpoints are written.
pub(super) struct Checkpoints<'a> {
    pub root: PathBuf,
    pub config_yaml: &'a str,
    /// Rank 0's background writer.
    pub writer: checkpoint::Writer,
    /// The step of the newest checkpoint (written or being written).
    pub last_step: u64,
}

impl Checkpoints<'_> {
    /// Every rank's loader position gathered to rank 0, which copies the state to host memory
    /// and writes it in the background. All ranks call this at the same steps.
    pub fn save(
        &mut self,
        dist: &Dist,
        clip: &Pretrained,
        opt: &AdamW,
        state: &mut TrainState,
    ) -> Result<()> {
        if dist.world_size > 1 {
            let mine =
                Tensor::from_slice(&[state.position.epoch as i64, state.position.index as i64])
                    .view([1, 2]);
            let all = Vec::<i64>::try_from(dist.all_gather(&mine.to(clip.device()))?.view([-1]))?;
            state.rank_positions = all
                .chunks(2)
                .map(|p| Position {
                    epoch: p[0] as u64,
                    index: p[1] as usize,
                })
                .collect();
        }
        if dist.is_main() {
            let snapshot = checkpoint::Snapshot::take(&clip.model, opt, state, self.config_yaml)?;
            self.writer.submit(snapshot)?;
        }
        self.last_step = state.step;
        Ok(())
    }

    /// Waits until the newest checkpoint is on disk.
    pub fn wait(&mut self) -> Result<()> {
        self.writer.finish().map(|_| ())
    }
}

/// This rank's loader position in a resumed run. With the world size it was saved with, its own;
/// otherwise rank 0's position in the data, re-expressed in this world's shares (exact unless
/// samples were skipped), with a line saying so.
fn resume_position(state: &TrainState, dist: &Dist) -> (Position, Option<String>) {
    let saved_world = state.rank_positions.len().max(1);
    if saved_world == dist.world_size {
        let own = state.rank_positions.get(dist.rank).copied();
        return (own.unwrap_or(state.position), None);
    }
    let index = state.position.index * saved_world / dist.world_size;
    let note = format!("resuming a {saved_world}-rank run on {} ranks: each continues at sample {index} of its share", dist.world_size);
    let position = Position {
        epoch: state.position.epoch,
        index,
    };
    (position, Some(note))
}

/// Locks `out` for this process (created if needed) until the returned file is dropped or the
/// process dies: two runs writing one directory would mix their checkpoints.
pub(super) fn lock_run_dir(out: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create run directory {}", out.display()))?;
    let path = out.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if file.try_lock().is_err() {
        bail!("run directory {} is in use by another streetclip process: wait for it to end (or stop it), or choose another --out", out.display());
    }
    Ok(file)
}

/// Removes writes a killed run left (main rank), restores the newest usable checkpoint under
/// `root`, refuses a config that changed the result since unless allowed, and writes the run's
/// config.yaml (with any accepted changes). Returns the state and the lines to say about it
/// (for the trainer's progress channel).
pub(super) fn resume(
    run: &Run,
    root: &Path,
    clip: &mut Pretrained,
    opt: &mut AdamW,
    data: DataFingerprint,
) -> Result<(TrainState, Vec<String>)> {
    let mut notes = vec![];
    let mut said = match run.dist.is_main() {
        true => checkpoint::remove_partial(root),
        false => vec![],
    };
    let allowed = run.options.allow_config_change;
    let state = match checkpoint::resume(root, &mut clip.model, opt, &mut said)? {
        None => TrainState::default(),
        Some((dir, mut state)) => {
            let saved = std::fs::read_to_string(dir.join("config.yaml"))
                .with_context(|| format!("checkpoint {} has no config.yaml", dir.display()))?;
            let changes = config_change::result_changes(&saved, run.config_yaml)?;
            notes.extend(config_change::check(&changes, allowed, state.step)?);
            notes.extend(config_change::check_data(
                state.data.as_ref(),
                &data,
                allowed,
                state.step,
            )?);
            said.push(format!(
                "resuming from {} (step {})",
                dir.display(),
                state.step
            ));
            said.extend(notes.iter().cloned());
            let (position, reshard) = resume_position(&state, run.dist);
            said.extend(reshard);
            state.position = position;
            state
        }
    };
    let state = TrainState {
        data: Some(data),
        ..state
    };
    if run.dist.is_main() {
        let mut text = run.config_yaml.to_string();
        for n in notes {
            text.push_str(&format!("# {n}\n"));
        }
        crate::formats::tensor_io::write_atomic(&run.out.join("config.yaml"), text.as_bytes())?;
    }
    Ok((state, said))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_run_continues_where_its_ranks_were() {
        let at = |epoch, index| Position { epoch, index };
        let one = Dist::single();
        // Saved by one process: its own position.
        let state = TrainState {
            position: at(1, 40),
            ..TrainState::default()
        };
        assert_eq!(resume_position(&state, &one), (at(1, 40), None));
        // Saved by two ranks, resumed by one: rank 0's place in the data, in the one share.
        let two = TrainState {
            position: at(2, 30),
            rank_positions: vec![at(2, 30), at(2, 31)],
            ..TrainState::default()
        };
        let (position, note) = resume_position(&two, &one);
        assert_eq!(position, at(2, 60));
        assert_eq!(
            note.as_deref(),
            Some("resuming a 2-rank run on 1 ranks: each continues at sample 60 of its share")
        );
    }
}
