//! `streetclip captions`: the caption each sample would train on, without decoding images.

use crate::config::Config;
use crate::data::Dataset;
use crate::geo::Gazetteer;
use crate::text::Captioner;
use anyhow::Result;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct CaptionRow {
    pub image: String,
    pub caption: String,
    pub city: Option<String>,
    pub region: Option<String>,
    pub country: Option<String>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
}

/// Captions for the first `limit` samples (epoch 0), and the data report.
pub fn run(
    cfg: &Config,
    limit: Option<usize>,
) -> Result<(Vec<CaptionRow>, crate::data::dataset::DataReport)> {
    let g = Gazetteer::bundled()?;
    let (data, report) = Dataset::load(&cfg.data, g)?;
    let captioner = Captioner::new(&cfg.captions)?;
    let rows = data
        .samples
        .iter()
        .enumerate()
        .take(limit.unwrap_or(usize::MAX))
        .map(|(i, s)| {
            let caption = s
                .place
                .caption
                .clone()
                .or_else(|| captioner.caption(&s.place.names, 0, i as u64))
                .unwrap_or_default();
            CaptionRow {
                image: s.image.to_string(),
                caption,
                city: s.place.names.city.clone(),
                region: s.place.names.region.clone(),
                country: s.place.names.country.clone(),
                lat: s.place.lat,
                lon: s.place.lon,
            }
        })
        .collect();
    Ok((rows, report))
}
