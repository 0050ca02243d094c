//! The train / validation / test split of a classification task: given folders or manifests,
//! or per-class seeded fractions of the training data (the same split on every run, so
//! methods are compared on the same images).

use crate::config::FinetuneConfig;
use crate::data::classes::{caption_name, Labelled, LabelledImage};
use crate::seed::sample_seed;
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct Splits {
    /// Sorted class names, as in the data.
    pub classes: Vec<String>,
    /// How each class reads in a caption.
    pub caption_names: Vec<String>,
    pub train: Vec<LabelledImage>,
    pub val: Vec<LabelledImage>,
    pub test: Vec<LabelledImage>,
}

#[derive(Debug, Serialize)]
pub struct SplitSizes {
    pub classes: usize,
    pub train: usize,
    pub val: usize,
    pub test: usize,
}

impl Splits {
    /// `image,label,split` for every image (`train`, `val` or `test`): which images each method
    /// was tested on, to reproduce or inspect the split.
    pub fn write_csv(&self, path: &std::path::Path) -> Result<()> {
        let mut csv = csv::Writer::from_writer(vec![]);
        csv.write_record(["image", "label", "split"])?;
        for (name, items) in [
            ("train", &self.train),
            ("val", &self.val),
            ("test", &self.test),
        ] {
            for item in items {
                let image = item.path.display().to_string();
                csv.write_record([image.as_str(), self.classes[item.class].as_str(), name])?;
            }
        }
        let bytes = csv.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
        crate::formats::tensor_io::write_atomic(path, &bytes)
    }

    pub fn sizes(&self) -> SplitSizes {
        SplitSizes {
            classes: self.classes.len(),
            train: self.train.len(),
            val: self.val.len(),
            test: self.test.len(),
        }
    }
}

/// Moves `fraction` of each group (rounded, at least one when the group has two or more items
/// and the fraction is positive) out of `items`, the group of an item being `group(item)` in
/// `0..groups`; each group shuffled by its own seed, so a group's draw never depends on another.
pub fn take_fraction<T>(
    items: &mut Vec<T>,
    group: impl Fn(&T) -> usize,
    groups: usize,
    fraction: f64,
    seed: u64,
    salt: u64,
) -> Vec<T> {
    let mut by_group: Vec<Vec<T>> = (0..groups).map(|_| Vec::new()).collect();
    for item in items.drain(..) {
        by_group[group(&item)].push(item);
    }
    let mut taken = Vec::new();
    for (g, mut of_group) in by_group.into_iter().enumerate() {
        of_group.shuffle(&mut ChaCha8Rng::seed_from_u64(sample_seed(
            seed, salt, g as u64,
        )));
        let n = of_group.len();
        let k = if fraction > 0.0 && n >= 2 {
            ((n as f64 * fraction).round() as usize).clamp(1, n - 1)
        } else {
            0
        };
        taken.extend(of_group.drain(..k));
        items.extend(of_group);
    }
    taken
}

/// `val_fraction` and `test_fraction` are fractions in [0, 1).
pub fn check_fractions(cfg: &FinetuneConfig) -> Result<()> {
    for (key, f) in [
        ("finetune.val_fraction", cfg.val_fraction),
        ("finetune.test_fraction", cfg.test_fraction),
    ] {
        if !(0.0..1.0).contains(&f) {
            bail!("{key} = {f} must be in [0, 1)");
        }
    }
    Ok(())
}

pub fn load(cfg: &FinetuneConfig, seed: u64) -> Result<Splits> {
    let Some(train_path) = &cfg.train else {
        bail!("finetune.train is not set: give an ImageFolder directory or a manifest with a `{}` column", cfg.label_column)
    };
    check_fractions(cfg)?;
    let train_data =
        Labelled::load(train_path, Some(&cfg.label_column)).context("finetune.train")?;
    if train_data.classes.len() < 2 {
        bail!(
            "{}: classification needs at least two classes, found {:?}",
            train_path.display(),
            train_data.classes
        );
    }
    let classes = train_data.classes.clone();
    let mut train = train_data.items;
    let other = |path: &Option<std::path::PathBuf>,
                 key: &str,
                 fraction: f64,
                 salt: u64,
                 train: &mut Vec<LabelledImage>|
     -> Result<Vec<LabelledImage>> {
        match path {
            Some(p) => Ok(Labelled::load(p, Some(&cfg.label_column))
                .and_then(|d| d.aligned_to(&classes))
                .with_context(|| format!("finetune.{key}"))?
                .items),
            None => Ok(take_fraction(
                train,
                |i: &LabelledImage| i.class,
                classes.len(),
                fraction,
                seed,
                salt,
            )),
        }
    };
    let test = other(
        &cfg.test,
        "test",
        cfg.test_fraction,
        u64::MAX - 2,
        &mut train,
    )?;
    let val = other(&cfg.val, "val", cfg.val_fraction, u64::MAX - 3, &mut train)?;
    if let Some(unknown) = cfg.class_names.keys().find(|k| !classes.contains(k)) {
        bail!(
            "finetune.class_names: `{unknown}` is not a class (classes: {})",
            classes.join(", ")
        );
    }
    let caption_names = classes
        .iter()
        .map(|c| {
            cfg.class_names
                .get(c)
                .cloned()
                .unwrap_or_else(|| caption_name(c))
        })
        .collect();
    if test.is_empty() {
        bail!("the test split is empty: set finetune.test or a positive finetune.test_fraction");
    }
    Ok(Splits {
        classes,
        caption_names,
        train,
        val,
        test,
    })
}
