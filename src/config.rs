//! The YAML run configuration. Unknown keys and wrong types are errors that name the key and
//! the line; every section has defaults, so a config only states what differs.

use crate::data::dataset::DataConfig;
use crate::text::CaptionConfig;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub data: DataConfig,
    pub captions: CaptionConfig,
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        Self::from_yaml(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    pub fn from_yaml(text: &str) -> Result<Self> {
        Ok(serde_yaml::from_str(text)?)
    }
}
