//! `eval geo`'s files: `metrics.json`, `predictions.csv`, `report.md`, `error_curve.png` and
//! `map.png` for one model, and a side-by-side report when several are compared.

use super::geo_eval::GeoEval;
use super::metrics::THRESHOLDS_KM;
use super::plots;
use crate::formats::tensor_io::write_atomic;
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::Path;

fn errors(e: &GeoEval) -> Vec<f64> {
    e.predictions.iter().map(|p| p.error_km).collect()
}

const THRESHOLD_NOTE: &str =
    "Distances are great-circle (R = 6371 km); a guess exactly at a threshold counts as within it.";

/// The metrics as Markdown table rows, one column per evaluation (and their difference for two).
fn metric_rows(evals: &[&GeoEval]) -> String {
    let mut md = String::new();
    let diff = evals.len() == 2;
    let row =
        |md: &mut String, label: &str, values: Vec<Option<f64>>, unit: &str, digits: usize| {
            let cell =
                |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.digits$}{unit}"));
            let mut cells: Vec<String> = values.iter().map(|&v| cell(v)).collect();
            if let (true, [Some(a), Some(b)]) = (diff, values.as_slice()) {
                cells.push(format!("{:+.digits$}{unit}", b - a));
            }
            let _ = writeln!(md, "| {label} | {} |", cells.join(" | "));
        };
    for t in THRESHOLDS_KM {
        let t = t as u32;
        row(
            &mut md,
            &format!("within {t} km"),
            evals
                .iter()
                .map(|e| e.metrics.within_km.get(&t).map(|f| 100.0 * f))
                .collect(),
            "%",
            1,
        );
    }
    row(
        &mut md,
        "median error",
        evals.iter().map(|e| Some(e.metrics.median_km)).collect(),
        " km",
        0,
    );
    row(
        &mut md,
        "mean error",
        evals.iter().map(|e| Some(e.metrics.mean_km)).collect(),
        " km",
        0,
    );
    row(
        &mut md,
        "country accuracy",
        evals
            .iter()
            .map(|e| e.metrics.country_accuracy.map(|f| 100.0 * f))
            .collect(),
        "%",
        1,
    );
    row(
        &mut md,
        "mean GeoScore",
        evals.iter().map(|e| Some(e.metrics.geoscore)).collect(),
        "",
        0,
    );
    md
}

/// The metrics of several evaluations as a Markdown table, one column each (and their
/// difference for two).
pub fn metric_table(evals: &[&GeoEval]) -> String {
    let names: Vec<String> = evals.iter().map(|e| format!("`{}`", e.name)).collect();
    let delta = if evals.len() == 2 {
        " | Δ (2nd − 1st)"
    } else {
        ""
    };
    let mut md = format!(
        "| metric | {}{delta} |\n|---|{}\n",
        names.join(" | "),
        "---|".repeat(evals.len() + usize::from(evals.len() == 2))
    );
    md += &metric_rows(evals);
    md
}

/// `metrics.json`, `predictions.csv`, `report.md`, `error_curve.png` and `map.png` in `dir`.
pub fn write_outputs(dir: &Path, e: &GeoEval) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_atomic(
        &dir.join("metrics.json"),
        &serde_json::to_vec_pretty(&e.metrics)?,
    )?;
    let mut csv = csv::Writer::from_writer(vec![]);
    for p in &e.predictions {
        csv.serialize(p)?;
    }
    write_atomic(&dir.join("predictions.csv"), &csv.into_inner()?)?;
    if !e.skipped.is_empty() {
        crate::encode::write_skipped(&dir.join("skipped.csv"), &e.skipped)?;
    }
    plots::error_curve(&dir.join("error_curve.png"), &[(e.name.clone(), errors(e))])?;
    let pairs: Vec<_> = e
        .predictions
        .iter()
        .map(|p| ((p.lat, p.lon), (p.pred_lat, p.pred_lon)))
        .collect();
    plots::map_scatter(
        &dir.join("map.png"),
        &format!("{}: truths and guesses", e.name),
        &pairs,
    )?;
    let mut md = format!(
        "# Geolocation evaluation\n\nModel: `{}`; {} images.\n\n| metric | value |\n|---|---|\n",
        e.name, e.metrics.n
    );
    md += &metric_rows(&[e]);
    let _ = write!(
        md,
        "\n{THRESHOLD_NOTE}\n\n![cumulative error](error_curve.png)\n\n![map](map.png)\n"
    );
    write_atomic(&dir.join("report.md"), md.as_bytes())
}

/// Each evaluation's outputs in `dir/<name>/`, and at the top a side-by-side `report.md`,
/// `comparison.json` and one `error_curve.png` with every model's curve.
pub fn write_comparison(dir: &Path, evals: &[GeoEval]) -> Result<()> {
    let mut md = format!(
        "# Geolocation evaluation: {} models compared\n\n{} images each.\n\n",
        evals.len(),
        evals[0].metrics.n
    );
    md += &metric_table(&evals.iter().collect::<Vec<_>>());
    let mut json = serde_json::Map::new();
    for e in evals {
        let sub = slug(&e.name);
        write_outputs(&dir.join(&sub), e)?;
        json.insert(
            e.name.clone(),
            serde_json::json!({"dir": sub, "metrics": e.metrics}),
        );
    }
    let _ = write!(md, "\n{THRESHOLD_NOTE} Per-model predictions, maps and reports: {}.\n\n![cumulative error](error_curve.png)\n", evals.iter().map(|e| format!("[{0}]({0}/report.md)", slug(&e.name))).collect::<Vec<_>>().join(", "));
    plots::error_curve(
        &dir.join("error_curve.png"),
        &evals
            .iter()
            .map(|e| (e.name.clone(), errors(e)))
            .collect::<Vec<_>>(),
    )?;
    write_atomic(
        &dir.join("comparison.json"),
        &serde_json::to_vec_pretty(&json)?,
    )?;
    write_atomic(&dir.join("report.md"), md.as_bytes())
}

/// A folder name for a model name: its letters, digits, `-`, `_` and `.`.
fn slug(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}
