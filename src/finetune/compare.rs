//! What each classification method leaves in `RUN_DIR/<method>/` (report, `metrics.json`,
//! `predictions.csv`) and `RUN_DIR/comparison.md` / `.json`, the methods side by side.

use super::task::Task;
use crate::config::Method;
use crate::eval::classification::{comparison_table, prediction_rows, write_predictions};
use crate::eval::classification::{write_report, ClassMetrics};
use crate::formats::tensor_io::write_atomic;
use crate::train::summary::Summary;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One WiSE-FT mix's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WiseResult {
    pub alpha: f64,
    pub val_accuracy: Option<f64>,
    pub test: ClassMetrics,
    pub export: PathBuf,
}

/// What `RUN_DIR/<method>/metrics.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodResult {
    pub method: Method,
    pub classes: Vec<String>,
    pub train_images: usize,
    pub val_images: usize,
    /// Validation accuracy (a fraction), when there is a validation split.
    pub val_accuracy: Option<f64>,
    /// The test split's metrics.
    pub test: ClassMetrics,
    /// The linear probe's chosen inverse L2 strength.
    pub chosen_c: Option<f64>,
    pub wise_ft: Vec<WiseResult>,
    pub export: PathBuf,
    #[serde(default, skip_deserializing)]
    pub training: Option<Summary>,
    /// Each test image's predicted class and its probability (`predictions.csv`).
    #[serde(skip)]
    pub test_predictions: Vec<(usize, f64)>,
}

/// Writes a method's report, `metrics.json` and `predictions.csv` into `dir`.
pub(super) fn write_method(task: &Task, dir: &Path, result: MethodResult) -> Result<()> {
    let name = result.method.name();
    let about = format!(
        "Method `{name}` on {} test images of {} classes.",
        result.test.n,
        result.classes.len()
    );
    write_report(dir, &format!("Fine-tuning: {name}"), &about, &result.test)?;
    write_atomic(
        &dir.join("metrics.json"),
        &serde_json::to_vec_pretty(&result)?,
    )?;
    let rows = prediction_rows(&result.classes, &task.splits.test, &result.test_predictions);
    write_predictions(&dir.join("predictions.csv"), &rows)?;
    eprintln!(
        "finetune: {name}: test accuracy {:.1}%",
        100.0 * result.test.accuracy
    );
    Ok(())
}

/// `comparison.md` and `comparison.json` over every method's `metrics.json` in `out`.
pub fn write_comparison(out: &Path) -> Result<()> {
    let mut rows: Vec<(String, ClassMetrics)> = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(out)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("metrics.json").is_file())
        .collect();
    dirs.sort();
    for d in dirs {
        let Ok(r) = serde_json::from_slice::<MethodResult>(&std::fs::read(d.join("metrics.json"))?)
        else {
            continue;
        };
        rows.push((r.method.name().to_string(), r.test.clone()));
        for w in r.wise_ft {
            rows.push((
                format!("{} + WiSE-FT α={}", r.method.name(), w.alpha),
                w.test,
            ));
        }
    }
    let table = comparison_table(&rows.iter().map(|(n, m)| (n.clone(), m)).collect::<Vec<_>>());
    let md = format!("# Fine-tuning: methods compared on the same test split\n\n{table}\nEach method's report: `<method>/report.md`.\n");
    write_atomic(&out.join("comparison.md"), md.as_bytes())?;
    let json: serde_json::Map<String, serde_json::Value> = rows.iter().map(|(n, m)| (n.clone(), serde_json::json!({"accuracy": m.accuracy, "balanced_accuracy": m.balanced_accuracy, "macro_f1": m.macro_f1, "n": m.n}))).collect();
    write_atomic(
        &out.join("comparison.json"),
        &serde_json::to_vec_pretty(&json)?,
    )
}
