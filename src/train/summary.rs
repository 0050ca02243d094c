//! What a training run reports: its summary (`summary.json`), why it stopped, and the options
//! the command line gives it.

use super::validate::ValMetrics;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What `RUN_DIR/summary.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub steps: u64,
    pub total_steps: u64,
    pub samples_seen: u64,
    pub samples_per_s: f64,
    pub final_loss: Option<f64>,
    pub skipped_steps: u64,
    pub skipped_samples: u64,
    pub train_samples: usize,
    pub val_samples: usize,
    pub validation: Option<ValMetrics>,
    pub stopped_by: StopReason,
    /// The Hugging Face directory written at the end of training (none when stopped early).
    pub export: Option<PathBuf>,
    /// The newest checkpoint: where a rerun resumes, and what `streetclip export` takes.
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
    /// The best validation under `train.keep_best`, exported as RUN_DIR/best/.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<Best>,
}

/// Why a run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum StopReason {
    /// Every configured step is done (the model is exported).
    EndOfTraining,
    /// `--max-steps` / `train.max_steps` reached before the end.
    MaxSteps { at: u64 },
    /// SIGINT/SIGTERM: state saved, the process exits with 128 + signal.
    Signal { signal: i32 },
    /// The loader ran dry before the last step (unreadable samples left batches short).
    DataExhausted,
}

/// Run options from the command line.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop after this many optimizer steps (the schedule still spans the whole run).
    pub max_steps: Option<u64>,
    /// Resume even when the config differs in settings that change the result.
    pub allow_config_change: bool,
}

/// Where `train.keep_best` exports the best validation's weights, in the run directory.
pub const BEST_DIR: &str = "best";
/// Its [`Best`], in that folder.
pub const BEST_SUMMARY: &str = "summary.json";

/// The best validation of a run under `train.keep_best`: `best/summary.json`, and kept in each
/// checkpoint so that a resumed run compares against it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub keep_best: crate::config::KeepBest,
    pub value: f64,
    pub step: u64,
}

impl Best {
    /// The metric's value in `m`.
    pub fn value_in(keep: &crate::config::KeepBest, m: &super::validate::ValMetrics) -> f64 {
        match keep.metric {
            crate::config::ValMetric::BatchAccuracy => m.batch_accuracy,
            crate::config::ValMetric::CountryAccuracy => m.country_accuracy,
        }
    }
}
