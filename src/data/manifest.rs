//! CSV and JSONL manifests: one row per image, with an image path and label columns.
//! Column names are configurable; common names are recognised without configuration
//! (IM2GPS3K's `IMG_ID,LAT,LON` works as it is).

use super::places::RawLabel;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which column holds what; `null` means "recognise it by its usual names".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Columns {
    /// The image path (relative to data.image_root) or IM2GPS3K-style file name.
    pub image: Option<String>,
    /// The city name.
    pub city: Option<String>,
    /// The first-level region (state, province).
    pub region: Option<String>,
    /// The country: a name or an ISO 3166 alpha-2 code.
    pub country: Option<String>,
    /// Latitude in degrees (with `lon`: reverse-geocoded when names are missing).
    pub lat: Option<String>,
    /// Longitude in degrees.
    pub lon: Option<String>,
    /// A ready-made caption, used instead of the templates.
    pub caption: Option<String>,
}

const USUAL: [(&str, &[&str]); 7] = [
    (
        "image",
        &[
            "image",
            "img_id",
            "image_path",
            "path",
            "file",
            "filename",
            "file_name",
            "img",
        ],
    ),
    ("city", &["city", "town"]),
    ("region", &["region", "state", "province", "admin1"]),
    (
        "country",
        &["country", "country_code", "iso2", "countrycode"],
    ),
    ("lat", &["lat", "latitude"]),
    ("lon", &["lon", "lng", "long", "longitude"]),
    ("caption", &["caption", "text"]),
];

impl Columns {
    fn configured(&self, role: &str) -> Option<&String> {
        match role {
            "image" => self.image.as_ref(),
            "city" => self.city.as_ref(),
            "region" => self.region.as_ref(),
            "country" => self.country.as_ref(),
            "lat" => self.lat.as_ref(),
            "lon" => self.lon.as_ref(),
            _ => self.caption.as_ref(),
        }
    }

    /// For each role, the field name it reads in a record with these `keys`.
    pub fn resolve(&self, keys: &[String], source: &Path) -> Result<[Option<String>; 7]> {
        let mut out: [Option<String>; 7] = Default::default();
        for (slot, (role, usual)) in out.iter_mut().zip(USUAL) {
            *slot = match self.configured(role) {
                Some(name) => {
                    if !keys.contains(name) {
                        bail!(
                            "{}: data.columns.{role} = `{name}` is not a column (columns: {})",
                            source.display(),
                            keys.join(", ")
                        );
                    }
                    Some(name.clone())
                }
                None => keys
                    .iter()
                    .find(|k| usual.contains(&k.to_lowercase().as_str()))
                    .cloned(),
            };
        }
        Ok(out)
    }
}

/// One manifest row: where the image is, its label, and where it was read (for messages).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub image: PathBuf,
    pub label: RawLabel,
    pub origin: String,
}

fn coordinate(value: Option<&str>, what: &str) -> std::result::Result<Option<f64>, String> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| format!("{what} `{v}` is not a number")),
    }
}

fn record(
    fields: &[Option<String>; 7],
    get: impl Fn(&str) -> Option<String>,
    root: &Path,
    origin: String,
) -> std::result::Result<Record, (String, String)> {
    let val = |i: usize| {
        fields[i]
            .as_deref()
            .and_then(&get)
            .filter(|s| !s.trim().is_empty())
    };
    let image = val(0).ok_or_else(|| (origin.clone(), "no image path".to_string()))?;
    let lat = coordinate(val(4).as_deref(), "lat").map_err(|e| (origin.clone(), e))?;
    let lon = coordinate(val(5).as_deref(), "lon").map_err(|e| (origin.clone(), e))?;
    let label = RawLabel {
        city: val(1),
        region: val(2),
        country: val(3),
        lat,
        lon,
        caption: val(6),
    };
    Ok(Record {
        image: root.join(image),
        label,
        origin,
    })
}

/// Rows that parse, and `(where, why)` for rows that do not.
pub type ManifestRows = (Vec<Record>, Vec<(String, String)>);

/// Reads a `.csv` or `.jsonl` manifest of labelled images (`read_images`, and a manifest
/// without any label column recognised is an error).
pub fn read(path: &Path, columns: &Columns, image_root: Option<&Path>) -> Result<ManifestRows> {
    let rows = read_images(path, columns, image_root)?;
    if rows
        .0
        .first()
        .is_some_and(|r| r.label == RawLabel::default())
        && columns == &Columns::default()
    {
        bail!(
            "manifest {}: no label columns recognised; name them under data.columns",
            path.display()
        );
    }
    Ok(rows)
}

/// Reads a `.csv` or `.jsonl` manifest's rows, labelled or not. Relative image paths are taken
/// from `image_root`, else from the manifest's folder, or its `images/` subfolder when that is
/// where they are.
pub fn read_images(
    path: &Path,
    columns: &Columns,
    image_root: Option<&Path>,
) -> Result<ManifestRows> {
    if let Some(why) = super::not_a_file(path) {
        bail!("manifest {} {why}", path.display());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let is_jsonl = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("jsonl" | "json")
    );
    let (mut records, mut bad) = (Vec::new(), Vec::new());
    let mut push = |r| match r {
        Ok(rec) => records.push(rec),
        Err(e) => bad.push(e),
    };
    match is_jsonl {
        true => jsonl_rows(path, columns, &mut push)?,
        false => csv_rows(path, columns, &mut push)?,
    }
    if records.is_empty() && bad.is_empty() {
        bail!("manifest {} has no rows", path.display());
    }
    // Relative paths start at `image_root` when given; otherwise at the manifest's folder, or at
    // its `images/` subfolder for a row whose file is there and not beside the manifest (decided
    // per row: one missing file must not move every other row).
    let images_dir = dir.join("images");
    for r in &mut records {
        let Ok(rel) = r.image.strip_prefix(dir).map(Path::to_path_buf) else {
            continue;
        };
        match image_root {
            Some(root) => r.image = root.join(rel),
            None if !r.image.exists() && images_dir.join(&rel).exists() => {
                r.image = images_dir.join(rel)
            }
            None => {}
        }
    }
    Ok((records, bad))
}

/// A row read, or `(where, why)` it could not be.
type RowResult = std::result::Result<Record, (String, String)>;

/// Each line of a JSONL manifest as a row; the columns are those of all rows together (rows may
/// omit keys).
fn jsonl_rows(path: &Path, columns: &Columns, push: &mut impl FnMut(RowResult)) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read manifest {}", path.display()))?;
    let mut objects = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let origin = format!("{}:{}", path.display(), n + 1);
        match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(line) {
            Ok(o) => objects.push((origin, o)),
            Err(e) => push(Err((origin, format!("not a JSON object: {e}")))),
        }
    }
    let mut keys: Vec<String> = objects
        .iter()
        .flat_map(|(_, o)| o.keys().cloned())
        .collect();
    keys.sort();
    keys.dedup();
    let fields = columns.resolve(&keys, path)?;
    for (origin, obj) in objects {
        let get = |k: &str| {
            obj.get(k).filter(|v| !v.is_null()).map(|v| {
                v.as_str()
                    .map(String::from)
                    .unwrap_or_else(|| v.to_string())
            })
        };
        push(record(&fields, get, dir, origin));
    }
    Ok(())
}

/// Each record of a CSV manifest as a row, its columns named by the header.
fn csv_rows(path: &Path, columns: &Columns, push: &mut impl FnMut(RowResult)) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // Trimmed: `image, country` (a space after each comma) is a common hand-written header.
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(path)
        .with_context(|| format!("cannot read manifest {}", path.display()))?;
    let headers: Vec<String> = reader
        .headers()
        .with_context(|| format!("{}: no header row", path.display()))?
        .iter()
        .map(String::from)
        .collect();
    let fields = columns.resolve(&headers, path)?;
    for (n, row) in reader.records().enumerate() {
        let origin = format!("{}:{}", path.display(), n + 2);
        match row {
            Ok(row) => {
                let get = |k: &str| {
                    headers
                        .iter()
                        .position(|h| h == k)
                        .and_then(|i| row.get(i))
                        .map(String::from)
                };
                push(record(&fields, get, dir, origin));
            }
            Err(e) => push(Err((origin, format!("unreadable CSV row: {e}")))),
        }
    }
    Ok(())
}
