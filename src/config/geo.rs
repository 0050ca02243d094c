//! The `geo` section: zero-shot geolocation's prompts and candidates.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct GeoConfig {
    /// `{country}` is the country as in a sentence ("the Netherlands").
    pub country_prompts: Vec<String>,
    /// `{region}`, `{country}`.
    pub region_prompts: Vec<String>,
    /// `{city}`, `{region}`, `{country}`.
    pub city_prompts: Vec<String>,
    /// Add the region stage between country and city.
    pub use_regions: bool,
    /// Cities considered in the chosen country (or region): the N most populous.
    pub cities_per_country: usize,
    /// Candidate countries (names or codes); default: every gazetteer country with a city.
    pub countries: Option<Vec<String>>,
    /// Candidates listed per stage in the output.
    pub top_k: usize,
    /// Keep candidate text embeddings on disk (see `text_cache`), keyed by model and prompts.
    pub cache: bool,
    /// How a geocell model (a `finetune` export of method `geocells`) places an image.
    pub geocells: RefineConfig,
}

/// A geocell model's guess: the top cell's centroid, or with `refine` (when the export has a
/// retrieval index) the similarity-weighted spherical mean of the `neighbours` training images
/// nearest in embedding space among those of the `top_cells` most probable cells.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RefineConfig {
    /// Refine the guess by retrieval (when the export has `index.safetensors`).
    pub refine: bool,
    /// How many of the most probable cells the neighbours are searched in.
    pub top_cells: usize,
    /// How many nearest training images (by embedding) the refined guess weighs.
    pub neighbours: usize,
}

impl Default for RefineConfig {
    fn default() -> Self {
        Self {
            refine: true,
            top_cells: 5,
            neighbours: 16,
        }
    }
}

impl GeoConfig {
    /// Each prompt list non-empty and each prompt naming what its stage ranks (a prompt without
    /// `{country}` would give every country the same score), with no unknown placeholder.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (key, prompts, needed) in [
            ("country_prompts", &self.country_prompts, "{country}"),
            ("region_prompts", &self.region_prompts, "{region}"),
            ("city_prompts", &self.city_prompts, "{city}"),
        ] {
            if prompts.is_empty() {
                anyhow::bail!("geo.{key} is empty: give at least one prompt with {needed}");
            }
            for p in prompts {
                if !p.contains(needed) {
                    anyhow::bail!("geo.{key}: `{p}` has no {needed}, so every candidate would get the same prompt and the same score; add {needed} where the name goes");
                }
                let mut rest = p.as_str();
                while let Some(open) = rest.find('{') {
                    let close = rest[open..].find('}').map_or(rest.len(), |c| open + c + 1);
                    let placeholder = &rest[open..close];
                    if !["{city}", "{region}", "{country}"].contains(&placeholder) {
                        anyhow::bail!("geo.{key}: `{p}` has the unknown placeholder `{placeholder}` (use {{city}}, {{region}}, {{country}})");
                    }
                    rest = &rest[close..];
                }
            }
        }
        for (key, v) in [
            ("cities_per_country", self.cities_per_country),
            ("top_k", self.top_k),
            ("geocells.top_cells", self.geocells.top_cells),
            ("geocells.neighbours", self.geocells.neighbours),
        ] {
            super::at_most(&format!("geo.{key}"), v as u64, super::MAX_COUNT)?;
        }
        Ok(())
    }
}

impl Default for GeoConfig {
    fn default() -> Self {
        Self {
            country_prompts: vec!["A Street View photo in {country}.".into()],
            region_prompts: vec!["A Street View photo in {region}, {country}.".into()],
            city_prompts: vec!["A Street View photo from {city}, {region}, {country}.".into()],
            use_regions: false,
            cities_per_country: 30,
            countries: None,
            top_k: 3,
            cache: true,
            geocells: RefineConfig::default(),
        }
    }
}
