//! Checkpoints: `checkpoints/step-00000123/` holding the model (`model.safetensors`, HF keys),
//! the optimizer moments (`optimizer.safetensors`), `state.json` (step, data position,
//! counters), the resolved `config.yaml` and `checksums.json` (each file's size and BLAKE3 hash,
//! written last). Written into a temporary directory private to the writing process, synced,
//! then renamed, so a checkpoint directory is complete or absent; from a host copy of the state
//! (`Snapshot`) on a background thread (`Writer`), so training goes on meanwhile. Resuming verifies the newest
//! checkpoint against its checksums and falls back to the previous one, with a warning, when a
//! file was damaged after it was written.

use super::optim::AdamW;
use crate::data::loader::Position;
use crate::formats::tensor_io::{self, write_atomic};
use crate::formats::weights;
use crate::model::ClipModel;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::Tensor;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps taken.
    pub step: u64,
    /// Where the loader resumes (rank 0's, in a multi-process run).
    pub position: Position,
    /// Every rank's position, for a multi-process run (ranks that skipped bad samples are
    /// further into their shares than others).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rank_positions: Vec<Position>,
    pub samples_seen: u64,
    /// Steps dropped for a non-finite loss.
    pub skipped_steps: u64,
    /// Samples the loader left out (unreadable images).
    pub skipped_samples: u64,
    /// What the run trains and validates on (absent in checkpoints written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<super::config_change::DataFingerprint>,
    /// The best validation so far under `train.keep_best` (exported as RUN_DIR/best/).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<super::summary::Best>,
}

const PREFIX: &str = "step-";

fn dir_name(step: u64) -> String {
    format!("{PREFIX}{step:08}")
}

/// What a checkpoint holds, copied off the device and away from the tensors training goes on
/// changing, so it can be written while the next steps run.
pub struct Snapshot {
    model: Vec<(String, Tensor)>,
    config_json: Vec<u8>,
    optimizer: Vec<(String, Tensor)>,
    state: TrainState,
    config_yaml: String,
}

impl Snapshot {
    /// Copies the weights and optimizer moments to host memory (waiting for the device's queued
    /// work, so the copy is the state after the last step).
    pub fn take(
        model: &ClipModel,
        opt: &AdamW,
        state: &TrainState,
        config_yaml: &str,
    ) -> Result<Self> {
        let host = |named: Vec<(String, Tensor)>| -> Vec<(String, Tensor)> {
            tch::no_grad(|| {
                named
                    .into_iter()
                    .map(|(n, t)| {
                        let t = t.detach();
                        let copy = match t.device() {
                            tch::Device::Cpu => t.copy(),
                            _ => t.to_device(tch::Device::Cpu),
                        };
                        (n, copy)
                    })
                    .collect()
            })
        };
        Ok(Self {
            model: host(weights::named_tensors(&model.vs)),
            config_json: serde_json::to_vec_pretty(&model.config.to_hf_json())?,
            optimizer: host(opt.state()),
            state: state.clone(),
            config_yaml: config_yaml.to_string(),
        })
    }

    pub fn step(&self) -> u64 {
        self.state.step
    }

    /// Writes the checkpoint under `root` and keeps only the newest `keep`.
    pub fn write(&self, root: &Path, keep: usize) -> Result<PathBuf> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("cannot create {}", root.display()))?;
        let final_dir = root.join(dir_name(self.state.step));
        // Private to this process: a second writer (which the run lock should prevent) could
        // not mix its files into this checkpoint.
        let tmp = root.join(format!(
            ".{}.tmp.{}",
            dir_name(self.state.step),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        tensor_io::write(&tmp.join(weights::WEIGHTS_FILE), &self.model)?;
        write_atomic(&tmp.join("config.json"), &self.config_json)?;
        tensor_io::write(&tmp.join("optimizer.safetensors"), &self.optimizer)?;
        write_atomic(&tmp.join("config.yaml"), self.config_yaml.as_bytes())?;
        write_atomic(
            &tmp.join("state.json"),
            &serde_json::to_vec_pretty(&self.state)?,
        )?;
        write_atomic(
            &tmp.join(CHECKSUMS),
            &serde_json::to_vec_pretty(&checksums(&tmp)?)?,
        )?;
        tensor_io::sync_dir(&tmp);
        let _ = std::fs::remove_dir_all(&final_dir);
        std::fs::rename(&tmp, &final_dir)
            .with_context(|| format!("cannot move checkpoint into {}", final_dir.display()))?;
        tensor_io::sync_dir(root);
        let all = list(root);
        for old in all.iter().take(all.len().saturating_sub(keep.max(1))) {
            let _ = std::fs::remove_dir_all(old);
        }
        Ok(final_dir)
    }
}

/// Writes snapshots on a thread of its own, one at a time, so training does not wait for the
/// disk: a new snapshot first waits for the previous write; `finish` and dropping the writer
/// wait for the last. Each write is still atomic (a temporary directory renamed when complete),
/// so a kill at any moment leaves the previous complete checkpoint.
pub struct Writer {
    root: PathBuf,
    keep: usize,
    pending: Option<std::thread::JoinHandle<Result<PathBuf>>>,
}

impl Writer {
    pub fn new(root: PathBuf, keep: usize) -> Self {
        Self {
            root,
            keep,
            pending: None,
        }
    }

    /// Starts writing `snapshot` once the previous write is done (its error, if any, is this
    /// call's).
    pub fn submit(&mut self, snapshot: Snapshot) -> Result<()> {
        self.finish()?;
        let (root, keep) = (self.root.clone(), self.keep);
        self.pending = Some(std::thread::spawn(move || snapshot.write(&root, keep)));
        Ok(())
    }

    /// Waits for the write in flight; its checkpoint directory.
    pub fn finish(&mut self) -> Result<Option<PathBuf>> {
        match self.pending.take() {
            None => Ok(None),
            Some(handle) => handle
                .join()
                .map_err(|_| anyhow::anyhow!("the checkpoint writer thread panicked"))?
                .map(Some),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            eprintln!("warning: the last checkpoint was not written: {e:#}");
        }
    }
}

/// Removes the temporary directories (`.step-N.tmp.PID`) of writes a killed run left behind.
/// Only for the process that holds the run directory's lock. Returns a line per removal.
pub fn remove_partial(root: &Path) -> Vec<String> {
    let mut said = vec![];
    let Ok(entries) = std::fs::read_dir(root) else {
        return said;
    };
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with(&format!(".{PREFIX}")) && name.contains(".tmp.") {
            said.push(format!(
                "removing {}, a checkpoint an earlier run did not finish writing",
                path.display()
            ));
            let _ = std::fs::remove_dir_all(&path);
        }
    }
    said
}

/// Complete checkpoint directories, oldest first.
pub fn list(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return vec![];
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(PREFIX))
        })
        .filter(|p| p.join("state.json").is_file() && p.join(weights::WEIGHTS_FILE).is_file())
        .collect();
    dirs.sort();
    dirs
}

const CHECKSUMS: &str = "checksums.json";

/// Size and BLAKE3 hash of a checkpoint file.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct FileSum {
    bytes: u64,
    blake3: String,
}

/// Every file of checkpoint directory `dir` but the checksums themselves.
fn checksums(dir: &Path) -> Result<std::collections::BTreeMap<String, FileSum>> {
    let mut sums = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if name == CHECKSUMS || !path.is_file() {
            continue;
        }
        let mut hasher = blake3::Hasher::new();
        let file = std::fs::File::open(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        hasher
            .update_reader(file)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let bytes = std::fs::metadata(&path)?.len();
        sums.insert(
            name,
            FileSum {
                bytes,
                blake3: hasher.finalize().to_hex().to_string(),
            },
        );
    }
    Ok(sums)
}

/// Checks `dir`'s files against the checksums recorded when it was written. Checkpoints from
/// before checksums were recorded pass (their loading still checks every tensor).
pub fn verify(dir: &Path) -> Result<()> {
    let path = dir.join(CHECKSUMS);
    if !path.exists() {
        return Ok(());
    }
    let recorded: std::collections::BTreeMap<String, FileSum> =
        serde_json::from_slice(&std::fs::read(&path)?)
            .with_context(|| format!("{} is damaged", path.display()))?;
    let actual = checksums(dir)?;
    for (name, sum) in &recorded {
        match actual.get(name) {
            None => bail!("{name} is missing"),
            Some(a) if a.bytes != sum.bytes => bail!(
                "{name} has {} bytes, {} when written (truncated?)",
                a.bytes,
                sum.bytes
            ),
            Some(a) if a != sum => {
                bail!("{name} does not match the hash recorded when it was written (damaged)")
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Restores the newest checkpoint under `root` that verifies and loads, warning about each newer
/// one that does not; `None` when there is no checkpoint, an error when none is usable.
pub fn resume(
    root: &Path,
    model: &mut ClipModel,
    opt: &mut AdamW,
    said: &mut Vec<String>,
) -> Result<Option<(PathBuf, TrainState)>> {
    let all = list(root);
    let mut unusable = vec![];
    for dir in all.iter().rev() {
        match verify(dir).and_then(|()| load(dir, model, opt)) {
            Ok(state) => {
                said.extend(
                    unusable.iter().map(|why| {
                        format!("warning: checkpoint {why}; resuming from an earlier one")
                    }),
                );
                return Ok(Some((dir.clone(), state)));
            }
            Err(e) => unusable.push(format!("{} is unusable ({e:#})", dir.display())),
        }
    }
    if all.is_empty() {
        return Ok(None);
    }
    bail!(
        "none of the {} checkpoints under {} can be resumed: {}; move the directory away to start afresh",
        all.len(),
        root.display(),
        unusable.join("; ")
    )
}

pub fn read_state(dir: &Path) -> Result<TrainState> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a checkpoint state", path.display()))
}

/// Restores model and optimizer from `dir`; returns its training state.
pub fn load(dir: &Path, model: &mut ClipModel, opt: &mut AdamW) -> Result<TrainState> {
    let state = read_state(dir)?;
    weights::load_into(&mut model.vs, dir)?;
    let moments: std::collections::HashMap<_, _> =
        tensor_io::read(&dir.join("optimizer.safetensors"))?
            .into_iter()
            .collect();
    opt.load_state(&moments, state.step)
        .with_context(|| format!("checkpoint {}", dir.display()))?;
    Ok(state)
}
