//! `--out FILE --format jsonl|csv|geojson|json`: results written as files that GIS tools and
//! spreadsheets open. JSONL and CSV rows are appended and flushed as each batch finishes, so an
//! interrupted run keeps what it did, and `--resume` skips the images already in the file;
//! GeoJSON (a FeatureCollection, RFC 7946) and JSON are written whole at the end.

use crate::eval::geolocate::Guess;
use crate::eval::ranking::Ranked;
use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

/// One image's result as the output formats write it.
pub trait Row: Clone {
    /// Whether rows have a point, so that GeoJSON can hold them.
    const POINTS: bool;
    /// The CSV header.
    const COLUMNS: &'static [&'static str];
    /// The JSON object (`image` first): a JSONL line, an element of the JSON array.
    fn json(&self) -> serde_json::Value;
    fn csv_row(&self) -> Vec<String>;
    /// `[longitude, latitude]` of a GeoJSON point; `None` for results without coordinates.
    fn point(&self) -> Option<[f64; 2]>;
}

/// The file formats of `--format` (default: by --out's extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON document, as `--json` prints.
    Json,
    /// One `{"image": ..., "guess": ...}` object per line, appended per batch.
    Jsonl,
    /// One row per image (candidates as `label fraction` lists), appended per batch.
    Csv,
    /// A FeatureCollection: a point per photo, its guess as properties.
    Geojson,
}

/// A guess: its point and top candidates (lists as `label fraction; label fraction` in CSV).
impl Row for (PathBuf, Guess) {
    const POINTS: bool = true;
    const COLUMNS: &'static [&'static str] = &[
        "image",
        "lat",
        "lon",
        "country",
        "country_code",
        "region",
        "city",
        "top_countries",
        "top_cities",
        "top_cells",
        "note",
    ];

    fn json(&self) -> serde_json::Value {
        serde_json::json!({"image": self.0, "guess": self.1})
    }

    fn csv_row(&self) -> Vec<String> {
        let (image, g) = self;
        vec![
            image.display().to_string(),
            g.lat.to_string(),
            g.lon.to_string(),
            g.country.clone(),
            g.country_code.clone(),
            g.region.clone().unwrap_or_default(),
            g.city.clone().unwrap_or_default(),
            candidates(&g.top_countries),
            candidates(&g.top_cities),
            candidates(&g.top_cells),
            g.note.clone().unwrap_or_default(),
        ]
    }

    fn point(&self) -> Option<[f64; 2]> {
        Some([self.1.lon, self.1.lat])
    }
}

/// A ranked list in one CSV cell: `label fraction; label fraction`.
pub fn candidates(list: &[Ranked]) -> String {
    list.iter()
        .map(|r| format!("{} {}", r.label, r.probability))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Format {
    /// `format`, else the one `path`'s extension names (.json, .jsonl, .csv, .geojson).
    pub fn resolve(format: Option<Format>, path: &Path) -> Result<Format> {
        if let Some(f) = format {
            return Ok(f);
        }
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        <Format as clap::ValueEnum>::from_str(ext, true).map_err(|_| {
            anyhow::anyhow!(
                "--out {}: say which format with --format json|jsonl|csv|geojson (or name the file .json, .jsonl, .csv or .geojson)",
                path.display()
            )
        })
    }
}

/// Where results go, as they come.
pub struct ResultFile<R> {
    path: PathBuf,
    format: Format,
    /// JSONL and CSV: the file, appended to.
    file: Option<std::fs::File>,
    /// JSON and GeoJSON: everything, written at the end.
    whole: Vec<R>,
}

impl<R: Row> ResultFile<R> {
    /// Opens `path` for `format`; with `resume`, keeps its complete rows (a partial last line of
    /// an interrupted run is cut off) and returns the images they hold, to be skipped.
    pub fn open(path: &Path, format: Format, resume: bool) -> Result<(Self, HashSet<String>)> {
        let streams = matches!(format, Format::Jsonl | Format::Csv);
        if format == Format::Geojson && !R::POINTS {
            bail!("--format geojson needs coordinates, which these results have not: use jsonl, csv or json");
        }
        if resume && !streams {
            bail!("--resume needs --format jsonl or csv (rows written as they come); {format:?} is written whole at the end");
        }
        let done = match resume && path.exists() {
            true => complete_rows(path, format)?,
            false => HashSet::new(),
        };
        let file = match streams {
            true => {
                let fresh = done.is_empty();
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(!fresh)
                    .write(true)
                    .truncate(fresh)
                    .open(path)
                    .with_context(|| format!("cannot open {}", path.display()))?;
                if fresh && format == Format::Csv {
                    writeln!(f, "{}", R::COLUMNS.join(","))?;
                }
                Some(f)
            }
            false => None,
        };
        let out = Self {
            path: path.to_path_buf(),
            format,
            file,
            whole: Vec::new(),
        };
        Ok((out, done))
    }

    /// Adds a batch of guesses: appended and flushed for JSONL and CSV.
    pub fn add(&mut self, batch: &[R]) -> Result<()> {
        let Some(file) = self.file.as_mut() else {
            self.whole.extend(batch.iter().cloned());
            return Ok(());
        };
        let mut text = Vec::new();
        for row in batch {
            match self.format {
                Format::Jsonl => {
                    serde_json::to_writer(&mut text, &row.json())?;
                    text.push(b'\n');
                }
                _ => {
                    let mut w = csv::Writer::from_writer(&mut text);
                    w.write_record(row.csv_row())?;
                    w.flush()?;
                }
            }
        }
        // One write per batch, so a kill leaves whole rows but for the last line at most.
        file.write_all(&text)
            .and_then(|_| file.flush())
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// Writes JSON and GeoJSON whole (atomically); JSONL and CSV are already complete.
    pub fn finish(self) -> Result<()> {
        let document = match self.format {
            Format::Json => serde_json::json!(self.whole.iter().map(R::json).collect::<Vec<_>>()),
            Format::Geojson => feature_collection(&self.whole),
            Format::Jsonl | Format::Csv => return Ok(()),
        };
        crate::formats::tensor_io::write_atomic(&self.path, &serde_json::to_vec_pretty(&document)?)
    }
}

/// RFC 7946: each photo a Feature with a Point at [longitude, latitude] (WGS 84) and its
/// result's other keys (and image path) as properties.
fn feature_collection<R: Row>(rows: &[R]) -> serde_json::Value {
    let features: Vec<serde_json::Value> = rows
        .iter()
        .filter_map(|row| {
            let mut properties = row.json();
            // A guess's keys at the top, beside `image`: what QGIS shows as the attribute table.
            if let Some(guess) = properties.get_mut("guess").map(serde_json::Value::take) {
                properties.as_object_mut()?.remove("guess");
                properties
                    .as_object_mut()?
                    .extend(guess.as_object()?.clone());
            }
            Some(serde_json::json!({
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": row.point()?},
                "properties": properties,
            }))
        })
        .collect();
    serde_json::json!({"type": "FeatureCollection", "features": features})
}

/// The images of `path`'s complete rows; a last line without its newline (an interrupted
/// write) is cut off the file first.
fn complete_rows(path: &Path, format: Format) -> Result<HashSet<String>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if whole < bytes.len() {
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.set_len(whole as u64)
            .with_context(|| format!("cannot cut the partial last line of {}", path.display()))?;
    }
    let text = std::str::from_utf8(&bytes[..whole])
        .with_context(|| format!("{} is not UTF-8 text", path.display()))?;
    let mut done = HashSet::new();
    match format {
        Format::Jsonl => {
            for (i, line) in text.lines().enumerate() {
                let row: serde_json::Value = serde_json::from_str(line).with_context(|| {
                    format!(
                        "{}:{}: not a row this command wrote; give a new --out or remove the line",
                        path.display(),
                        i + 1
                    )
                })?;
                done.extend(row["image"].as_str().map(String::from));
            }
        }
        _ => {
            let mut reader = csv::Reader::from_reader(text.as_bytes());
            for record in reader.records() {
                let record = record
                    .with_context(|| format!("{}: not a CSV this command wrote", path.display()))?;
                done.extend(record.get(0).map(String::from));
            }
        }
    }
    Ok(done)
}
