//! The `finetune` section: which methods, on which labelled images, with which captions.

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// No training: class captions as the classifier.
    ZeroShot,
    /// Logistic regression on frozen image embeddings.
    LinearProbe,
    /// The main trainer on class captions (FLYP).
    Contrastive,
    /// A linear head initialised from the class captions, trained with cross-entropy.
    Classifier,
    /// Geolocation by a head over geocells built from the training coordinates, trained
    /// against haversine-smoothed targets (PIGEON's recipe); exports a retrieval index.
    Geocells,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::ZeroShot => "zero_shot",
            Method::LinearProbe => "linear_probe",
            Method::Contrastive => "contrastive",
            Method::Classifier => "classifier",
            Method::Geocells => "geocells",
        }
    }
}

/// `method: classifier` or `method: [zero_shot, linear_probe, classifier]`.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Method>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let names = match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    };
    names
        .iter()
        .map(|n| {
            Method::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(n))
                .map_err(|_| serde::de::Error::custom(format!("unknown method `{n}`: choose from zero_shot, linear_probe, contrastive, classifier, geocells")))
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FinetuneConfig {
    /// One method or a list, run in turn on the same split.
    #[serde(deserialize_with = "one_or_many")]
    pub method: Vec<Method>,
    /// Training images: an ImageFolder directory or a CSV/JSONL manifest.
    pub train: Option<PathBuf>,
    /// Validation images (default: `val_fraction` of `train`, per class).
    pub val: Option<PathBuf>,
    /// Test images (default: `test_fraction` of `train`, per class).
    pub test: Option<PathBuf>,
    /// The manifest column holding the class.
    pub label_column: String,
    /// Fraction of each class held out for validation when `val` is not given.
    pub val_fraction: f64,
    /// Fraction of each class held out for testing when `test` is not given.
    pub test_fraction: f64,
    /// Caption templates; `{}` is the class name. Several: averaged for zero-shot and the head's
    /// initialisation, cycled over the samples for contrastive training.
    pub templates: Vec<String>,
    /// How a class reads in a caption, by folder / label name (default: `_` and `-` as spaces).
    pub class_names: BTreeMap<String, String>,
    /// Inverse L2 strengths tried by the linear probe; the best on the validation split wins.
    pub c_grid: Vec<f64>,
    /// WiSE-FT mixing weights exported besides the fine-tuned model (0: the initial weights,
    /// 1: the fine-tuned ones), for `contrastive` and `classifier`.
    pub wise_ft: Vec<f64>,
    /// The `geocells` method: how cells are built and how the targets are smoothed.
    pub geocells: GeocellsConfig,
}

/// `finetune.geocells`: cells from the training split's coordinates (see `geo::geocells`) and
/// the label smoothing of the head's targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct GeocellsConfig {
    /// An admin-1 region with fewer training images joins its nearest neighbour.
    pub min_samples: usize,
    /// A region with more training images is bisected by spherical 2-means until it fits.
    pub max_samples: usize,
    /// Distance scale of the targets: y_n ∝ exp(−(hav(c_n, x) − hav(c_true, x)) / tau_km).
    pub tau_km: f64,
}

impl FinetuneConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        let g = &self.geocells;
        super::at_most(
            "finetune.geocells.min_samples",
            g.min_samples as u64,
            super::MAX_COUNT,
        )?;
        super::at_most(
            "finetune.geocells.max_samples",
            g.max_samples as u64,
            super::MAX_COUNT,
        )
    }
}

impl Default for GeocellsConfig {
    fn default() -> Self {
        Self {
            min_samples: 50,
            max_samples: 2000,
            tau_km: 75.0,
        }
    }
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            method: vec![Method::ZeroShot],
            train: None,
            val: None,
            test: None,
            label_column: "label".into(),
            val_fraction: 0.15,
            test_fraction: 0.2,
            templates: vec!["A Street View photo of {}.".into()],
            class_names: BTreeMap::new(),
            c_grid: vec![1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0],
            wise_ft: vec![],
            geocells: GeocellsConfig::default(),
        }
    }
}
