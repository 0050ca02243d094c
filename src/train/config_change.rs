//! Resuming with another config: which differences change the trained result.
//!
//! A rerun resumes from the run directory's newest checkpoint. Settings that only change how
//! the run is observed or executed (logging, checkpoint cadence, loader threads, device, the
//! process group) may differ; anything else (learning rate, seed, data, model, schedule, ...)
//! would silently make the result neither the old run nor a new one, so it is refused unless the
//! user accepts it (`--allow-config-change`), and then listed in the log and in `config.yaml`.

use crate::data::dataset::Sample;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use serde_yaml::Value;
use std::collections::BTreeMap;

/// Keys (or sections, by prefix) that do not change what is trained.
const OBSERVATIONAL: &[&str] = &[
    "train.log_every",
    "train.profile",
    "train.eval_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.keep_best",
    "train.keep_best.",
    "train.activation_checkpointing",
    "train.max_steps",
    "data.workers",
    "data.prefetch",
    "model.device",
    "dist.",
    "geo.",
];

/// `key: old -> new` for every setting that differs between two resolved configs and changes
/// the result.
pub fn result_changes(old_yaml: &str, new_yaml: &str) -> Result<Vec<String>> {
    let (old, new) = (
        flatten(serde_yaml::from_str(old_yaml)?),
        flatten(serde_yaml::from_str(new_yaml)?),
    );
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    Ok(keys
        .into_iter()
        .filter(|k| {
            !OBSERVATIONAL
                .iter()
                .any(|o| k.as_str() == *o || (o.ends_with('.') && k.starts_with(o)))
        })
        .filter(|k| old.get(*k) != new.get(*k))
        .map(|k| {
            let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(absent)".into());
            format!("{k}: {} -> {}", show(old.get(k)), show(new.get(k)))
        })
        .collect())
}

/// Refuses `changes` unless `allowed`; returns the note to log and record when allowed.
pub fn check(changes: &[String], allowed: bool, step: u64) -> Result<Option<String>> {
    if changes.is_empty() {
        return Ok(None);
    }
    if !allowed {
        bail!(
            "the config differs from the one this run was started with, in settings that change the result ({}); rerun with the original config, choose a new --out, or pass --allow-config-change to resume anyway",
            changes.join("; ")
        );
    }
    Ok(Some(format!(
        "config changes accepted when resuming at step {step} (--allow-config-change): {}",
        changes.join("; ")
    )))
}

fn flatten(v: Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(&v, String::new(), &mut out);
    out
}

fn walk(v: &Value, path: String, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Mapping(m) => {
            for (k, v) in m {
                let k = k
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| format!("{k:?}"));
                walk(
                    v,
                    if path.is_empty() {
                        k
                    } else {
                        format!("{path}.{k}")
                    },
                    out,
                );
            }
        }
        other => {
            let text = serde_yaml::to_string(other).unwrap_or_default();
            out.insert(path, text.trim().replace('\n', " "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_rate_seed_and_data_change_the_result_logging_does_not() {
        let old = "optim:\n  lr: 1.0e-6\ntrain:\n  seed: 0\n  log_every: 10\ndata:\n  manifest: a.csv\n  workers: 2\n";
        let new = "optim:\n  lr: 1.0e-5\ntrain:\n  seed: 1\n  log_every: 1\ndata:\n  manifest: b.csv\n  workers: 8\n";
        let changes = result_changes(old, new).unwrap();
        assert_eq!(
            changes,
            [
                "data.manifest: a.csv -> b.csv",
                "optim.lr: 1e-6 -> 0.00001",
                "train.seed: 0 -> 1"
            ]
        );
        assert!(check(&changes, false, 3)
            .unwrap_err()
            .to_string()
            .contains("--allow-config-change"));
        assert!(check(&changes, true, 3)
            .unwrap()
            .unwrap()
            .contains("optim.lr"));
        assert!(result_changes(old, old).unwrap().is_empty());
    }
}

/// What determines the sample order and the split: every training and validation sample's
/// image (file path, or shard, member, offset and length) and label, in order, hashed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataFingerprint {
    pub blake3: String,
    pub train_samples: usize,
    pub val_samples: usize,
}

impl DataFingerprint {
    pub fn of(train: &[Sample], val: &[Sample]) -> Self {
        let mut h = blake3::Hasher::new();
        for (part, samples) in [("train", train), ("val", val)] {
            h.update(format!("{part} {}\n", samples.len()).as_bytes());
            for s in samples {
                let row = format!("{}\t{:?}", s.image, s.place);
                h.update(&(row.len() as u64).to_le_bytes());
                h.update(row.as_bytes());
            }
        }
        Self {
            blake3: h.finalize().to_hex().to_string(),
            train_samples: train.len(),
            val_samples: val.len(),
        }
    }
}

/// Refuses resuming on data other than the run's (rows added, removed, reordered or relabelled:
/// the sample order, the split and the schedule would all change) unless `allowed`; returns the
/// note to log and record when allowed.
pub fn check_data(
    saved: Option<&DataFingerprint>,
    now: &DataFingerprint,
    allowed: bool,
    step: u64,
) -> Result<Option<String>> {
    let Some(saved) = saved.filter(|s| *s != now) else {
        return Ok(None);
    };
    let what = format!(
        "the data differs from the data this run was trained on until step {step} ({} training and {} validation samples then, {} and {} now{})",
        saved.train_samples,
        saved.val_samples,
        now.train_samples,
        now.val_samples,
        if (saved.train_samples, saved.val_samples) == (now.train_samples, now.val_samples) {
            "; rows changed, moved or were relabelled"
        } else {
            ""
        }
    );
    if !allowed {
        bail!("{what}: the sample order, the validation split and the schedule would change; restore the data, choose a new --out, or pass --allow-config-change to resume on the new data");
    }
    Ok(Some(format!("{what}; accepted (--allow-config-change)")))
}
