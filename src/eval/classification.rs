//! Classification metrics (accuracy, balanced accuracy, per-class precision / recall / F1,
//! confusion matrix — the definitions of scikit-learn with `zero_division=0`) and their report:
//! `metrics.json`, `confusion.csv`, `confusion.png`, `report.md`.

use crate::data::classes::LabelledImage;
use crate::formats::tensor_io::write_atomic;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScore {
    pub class: String,
    /// Test images of this class.
    pub support: usize,
    /// Images predicted as this class.
    pub predicted: usize,
    /// Fractions; 0 where undefined (no prediction / no support), as scikit-learn's `zero_division=0`.
    pub precision: f64,
    /// The per-class accuracy.
    pub recall: f64,
    pub f1: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub n: usize,
    /// Fraction of the images whose predicted class is the true one.
    pub accuracy: f64,
    /// Mean recall over the classes that have test images (scikit-learn's balanced accuracy).
    pub balanced_accuracy: f64,
    /// Mean F1 over all classes.
    pub macro_f1: f64,
    pub per_class: Vec<ClassScore>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
}

/// Metrics of predicted vs true class indices into `classes`.
pub fn class_metrics(classes: &[String], truth: &[usize], predicted: &[usize]) -> ClassMetrics {
    let k = classes.len();
    let mut confusion = vec![vec![0usize; k]; k];
    for (&t, &p) in truth.iter().zip(predicted) {
        confusion[t][p] += 1;
    }
    let fraction = |num: usize, den: usize| {
        if den == 0 {
            0.0
        } else {
            num as f64 / den as f64
        }
    };
    let per_class: Vec<ClassScore> = (0..k)
        .map(|c| {
            let tp = confusion[c][c];
            let support = confusion[c].iter().sum();
            let predicted = confusion.iter().map(|row| row[c]).sum();
            let (precision, recall) = (fraction(tp, predicted), fraction(tp, support));
            let f1 = if precision + recall == 0.0 {
                0.0
            } else {
                2.0 * precision * recall / (precision + recall)
            };
            ClassScore {
                class: classes[c].clone(),
                support,
                predicted,
                precision,
                recall,
                f1,
            }
        })
        .collect();
    let present: Vec<&ClassScore> = per_class.iter().filter(|s| s.support > 0).collect();
    let mean = |xs: &mut dyn Iterator<Item = f64>, n: usize| {
        if n == 0 {
            0.0
        } else {
            xs.sum::<f64>() / n as f64
        }
    };
    ClassMetrics {
        n: truth.len(),
        accuracy: fraction((0..k).map(|c| confusion[c][c]).sum(), truth.len()),
        balanced_accuracy: mean(&mut present.iter().map(|s| s.recall), present.len()),
        macro_f1: mean(&mut per_class.iter().map(|s| s.f1), k),
        per_class,
        confusion,
    }
}

/// The Markdown table of one or more methods' headline numbers, best accuracy first.
pub fn comparison_table(rows: &[(String, &ClassMetrics)]) -> String {
    let mut sorted: Vec<&(String, &ClassMetrics)> = rows.iter().collect();
    sorted.sort_by(|a, b| b.1.accuracy.total_cmp(&a.1.accuracy));
    let mut md = String::from(
        "| method | accuracy | balanced accuracy | macro F1 | n |\n|---|---|---|---|---|\n",
    );
    for (name, m) in sorted {
        let _ = writeln!(
            md,
            "| {name} | {:.1}% | {:.1}% | {:.1}% | {} |",
            100.0 * m.accuracy,
            100.0 * m.balanced_accuracy,
            100.0 * m.macro_f1,
            m.n
        );
    }
    md
}

/// Writes `metrics.json`, `confusion.csv`, `confusion.png` and `report.md` into `dir`.
pub fn write_report(dir: &Path, title: &str, about: &str, m: &ClassMetrics) -> Result<()> {
    use crate::formats::tensor_io::write_atomic;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_atomic(&dir.join("metrics.json"), &serde_json::to_vec_pretty(m)?)?;
    let classes: Vec<String> = m.per_class.iter().map(|s| s.class.clone()).collect();
    let mut csv = csv::Writer::from_writer(vec![]);
    csv.write_record(
        std::iter::once("true \\ predicted").chain(classes.iter().map(String::as_str)),
    )?;
    for (c, row) in classes.iter().zip(&m.confusion) {
        csv.write_record(std::iter::once(c.clone()).chain(row.iter().map(usize::to_string)))?;
    }
    write_atomic(&dir.join("confusion.csv"), &csv.into_inner()?)?;
    super::plots::confusion_matrix(&dir.join("confusion.png"), &classes, &m.confusion)?;
    let mut md = format!("# {title}\n\n{about}\n\n");
    let _ = writeln!(
        md,
        "Accuracy **{:.1}%**, balanced accuracy {:.1}%, macro F1 {:.1}% on {} images.\n",
        100.0 * m.accuracy,
        100.0 * m.balanced_accuracy,
        100.0 * m.macro_f1,
        m.n
    );
    md += "| class | support | precision | recall | F1 |\n|---|---|---|---|---|\n";
    for s in &m.per_class {
        let _ = writeln!(
            md,
            "| {} | {} | {:.1}% | {:.1}% | {:.1}% |",
            s.class,
            s.support,
            100.0 * s.precision,
            100.0 * s.recall,
            100.0 * s.f1
        );
    }
    md += "\n![confusion matrix](confusion.png)\n\nPrecision and recall are 0 where undefined (no prediction, no test image), as scikit-learn's `zero_division=0`.\n";
    write_atomic(&dir.join("report.md"), md.as_bytes())
}

/// One image's result.
#[derive(Debug, Clone, Serialize)]
pub struct ClassPrediction {
    pub image: String,
    pub label: String,
    pub predicted: String,
    pub probability: f64,
}

/// Each row's most probable class and its probability, of probabilities `[n, classes]`.
pub fn most_probable(probs: &tch::Tensor) -> Result<Vec<(usize, f64)>> {
    let (best, index) = probs.max_dim(-1, false);
    let best = Vec::<f64>::try_from(best.to_kind(tch::Kind::Double))?;
    let index = Vec::<i64>::try_from(index)?;
    Ok(index.into_iter().map(|i| i as usize).zip(best).collect())
}

/// The rows of `predictions.csv`: each item's true and predicted class (index, probability).
pub fn prediction_rows(
    classes: &[String],
    items: &[LabelledImage],
    guesses: &[(usize, f64)],
) -> Vec<ClassPrediction> {
    items
        .iter()
        .zip(guesses)
        .map(|(item, &(p, prob))| ClassPrediction {
            image: item.path.display().to_string(),
            label: classes[item.class].clone(),
            predicted: classes[p].clone(),
            probability: prob,
        })
        .collect()
}

pub fn write_predictions(path: &Path, rows: &[ClassPrediction]) -> Result<()> {
    let mut csv = csv::Writer::from_writer(vec![]);
    for r in rows {
        csv.serialize(r)?;
    }
    write_atomic(path, &csv.into_inner().context("csv")?)
}
