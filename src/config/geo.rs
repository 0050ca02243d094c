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
        }
    }
}
