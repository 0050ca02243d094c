//! Images with a class label, for classification: an ImageFolder tree (`root/<class>/*.jpg`)
//! or a CSV/JSONL manifest with an image and a label column.

use super::collection::{has_image_extension, IMAGE_EXTENSIONS};
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub struct LabelledImage {
    pub path: PathBuf,
    /// Index into `Labelled::classes`.
    pub class: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Labelled {
    /// Sorted class names.
    pub classes: Vec<String>,
    pub items: Vec<LabelledImage>,
    /// Where it came from, for messages.
    pub source: PathBuf,
}

impl Labelled {
    /// A folder is read as ImageFolder, a file as a manifest (`label_column`, default `label`).
    pub fn load(path: &Path, label_column: Option<&str>) -> Result<Self> {
        if path.is_dir() {
            Self::image_folder(path)
        } else if path.is_file() {
            Self::manifest(path, label_column.unwrap_or("label"))
        } else {
            bail!("{} does not exist: give an ImageFolder directory (root/<class>/*.jpg) or a CSV/JSONL manifest with image and label columns", path.display())
        }
    }

    /// `root/<class>/<image>`; every class folder must hold at least one image.
    pub fn image_folder(root: &Path) -> Result<Self> {
        let mut classes = Vec::new();
        for entry in
            std::fs::read_dir(root).with_context(|| format!("cannot list {}", root.display()))?
        {
            let entry = entry?;
            // `Path::is_dir` follows symlinks: a linked class folder is a class.
            if entry.path().is_dir() {
                classes.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        classes.sort();
        if classes.is_empty() {
            bail!(
                "{} has no class folders: expected root/<class>/*.jpg",
                root.display()
            );
        }
        let mut items = Vec::new();
        for (class, name) in classes.iter().enumerate() {
            let dir = root.join(name);
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .with_context(|| format!("cannot list {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| has_image_extension(p))
                .collect();
            if files.is_empty() {
                bail!(
                    "class folder {} holds no images ({}): remove it or add images",
                    dir.display(),
                    IMAGE_EXTENSIONS.join(", ")
                );
            }
            files.sort();
            items.extend(files.into_iter().map(|path| LabelledImage { path, class }));
        }
        Ok(Self {
            classes,
            items,
            source: root.to_path_buf(),
        })
    }

    /// A `.csv` or `.jsonl` manifest; image paths relative to the manifest's folder.
    pub fn manifest(path: &Path, label_column: &str) -> Result<Self> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let is_jsonl = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("jsonl" | "json")
        );
        let rows = match is_jsonl {
            true => jsonl_rows(path, label_column)?,
            false => csv_rows(path, label_column)?,
        };
        if let Some((image, _)) = rows.iter().find(|(_, label)| label.is_empty()) {
            bail!("{}: image {image} has an empty label", path.display());
        }
        let classes: Vec<String> = rows
            .iter()
            .map(|(_, l)| l.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if classes.is_empty() {
            bail!("manifest {} has no rows", path.display());
        }
        let items = rows
            .into_iter()
            .map(|(image, label)| LabelledImage {
                path: dir.join(image),
                class: classes.binary_search(&label).expect("collected above"),
            })
            .collect();
        Ok(Self {
            classes,
            items,
            source: path.to_path_buf(),
        })
    }

    /// Re-indexes onto `classes` (e.g. the training split's); a class this split has and the
    /// reference lacks is an error naming both sides.
    pub fn aligned_to(mut self, classes: &[String]) -> Result<Self> {
        if self.classes == classes {
            return Ok(self);
        }
        let extra: Vec<&String> = self
            .classes
            .iter()
            .filter(|c| !classes.contains(c))
            .collect();
        let missing: Vec<&String> = classes
            .iter()
            .filter(|c| !self.classes.contains(c))
            .collect();
        if !extra.is_empty() {
            bail!("{} has classes the training data lacks: {extra:?} (training classes missing here: {missing:?}); the class folders must be the same in every split", self.source.display());
        }
        let map: Vec<usize> = self
            .classes
            .iter()
            .map(|c| classes.iter().position(|x| x == c).expect("checked"))
            .collect();
        for item in &mut self.items {
            item.class = map[item.class];
        }
        self.classes = classes.to_vec();
        Ok(self)
    }

    /// Class names as they read in a caption (see `caption_name`).
    pub fn caption_names(&self) -> Vec<String> {
        self.classes.iter().map(|c| caption_name(c)).collect()
    }
}

/// Names a manifest's image column may have.
const IMAGE_KEYS: [&str; 5] = ["image", "path", "file", "filename", "image_path"];

/// `(image, label)` of each line of a JSONL manifest.
fn jsonl_rows(path: &Path, label_column: &str) -> Result<Vec<(String, String)>> {
    let mut rows = Vec::new();
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read manifest {}", path.display()))?;
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a JSON object", path.display(), n + 1))?;
        let field = |k: &str| {
            obj.get(k).and_then(|v| {
                v.as_str()
                    .map(String::from)
                    .or_else(|| (!v.is_null()).then(|| v.to_string()))
            })
        };
        let image = IMAGE_KEYS.iter().find_map(|k| field(k)).with_context(|| {
            format!(
                "{}:{}: no image field ({})",
                path.display(),
                n + 1,
                IMAGE_KEYS.join(", ")
            )
        })?;
        let label = field(label_column)
            .with_context(|| format!("{}:{}: no `{label_column}` field", path.display(), n + 1))?;
        rows.push((image, label));
    }
    Ok(rows)
}

/// `(image, label)` of each record of a CSV manifest.
fn csv_rows(path: &Path, label_column: &str) -> Result<Vec<(String, String)>> {
    let mut rows = Vec::new();
    let mut reader = csv::Reader::from_path(path)
        .with_context(|| format!("cannot read manifest {}", path.display()))?;
    let headers: Vec<String> = reader.headers()?.iter().map(String::from).collect();
    let image_col = headers
        .iter()
        .position(|h| IMAGE_KEYS.contains(&h.to_lowercase().as_str()))
        .with_context(|| {
            format!(
                "{}: no image column ({}); columns: {}",
                path.display(),
                IMAGE_KEYS.join(", "),
                headers.join(", ")
            )
        })?;
    let label_col = headers
        .iter()
        .position(|h| h == label_column)
        .with_context(|| {
            format!(
                "{}: no `{label_column}` column (choose one with --label-column); columns: {}",
                path.display(),
                headers.join(", ")
            )
        })?;
    for (n, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{}: row {}", path.display(), n + 2))?;
        rows.push((
            record[image_col].to_string(),
            record[label_col].trim().to_string(),
        ));
    }
    Ok(rows)
}

/// A class name as it reads in a caption: `urban_area` → `urban area`.
pub fn caption_name(class: &str) -> String {
    class.replace(['_', '-'], " ")
}
