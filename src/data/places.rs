//! A sample's location label, as given (any of city, region, country, lat, lon), resolved
//! against the gazetteer into canonical names for its caption.

use crate::geo::distance::valid_coordinates;
use crate::geo::Gazetteer;
use crate::text::PlaceNames;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RawLabel {
    pub city: Option<String>,
    pub region: Option<String>,
    pub country: Option<String>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    /// A ready-made caption (e.g. a WebDataset `.txt`), used as it is.
    pub caption: Option<String>,
}

/// A label resolved for training and evaluation.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Place {
    pub names: PlaceNames,
    /// Gazetteer index of the country, when known.
    pub country: Option<usize>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub caption: Option<String>,
}

/// Why a label cannot make a sample.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LabelError {
    #[error("unknown country `{0}`")]
    UnknownCountry(String),
    #[error("coordinates ({0}, {1}) are out of range")]
    BadCoordinates(f64, f64),
    #[error("only one of lat/lon is given")]
    HalfCoordinates,
    #[error("no country, coordinates or caption to describe the place")]
    NoLocation,
}

/// Names that were given but are not in the gazetteer: dropped from the caption and counted.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UnknownNames {
    pub cities: usize,
    pub regions: usize,
}

/// Canonical names for a label. Missing names are filled from the nearest city when
/// coordinates are given (and, when a country is given, only from a city in that country).
pub fn resolve(
    g: &Gazetteer,
    raw: &RawLabel,
    unknown: &mut UnknownNames,
) -> Result<Place, LabelError> {
    let coords = match (raw.lat, raw.lon) {
        (Some(lat), Some(lon)) if valid_coordinates(lat, lon) => Some((lat, lon)),
        (Some(lat), Some(lon)) => return Err(LabelError::BadCoordinates(lat, lon)),
        (None, None) => None,
        _ => return Err(LabelError::HalfCoordinates),
    };
    let given_country = match raw
        .country
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        Some(name) => Some(
            g.country(name)
                .ok_or_else(|| LabelError::UnknownCountry(name.to_string()))?,
        ),
        None => None,
    };
    let nearest = coords
        .map(|(lat, lon)| g.nearest_city(lat, lon))
        .filter(|&c| given_country.is_none_or(|k| g.cities[c].country == k));
    let Some(country) = given_country.or(nearest.map(|c| g.cities[c].country)) else {
        if raw.caption.is_some() {
            return Ok(Place {
                caption: raw.caption.clone(),
                lat: raw.lat,
                lon: raw.lon,
                ..Place::default()
            });
        }
        return Err(LabelError::NoLocation);
    };
    let mut region = None;
    if let Some(name) = raw.region.as_deref().filter(|s| !s.trim().is_empty()) {
        region = g.region(country, name);
        unknown.regions += usize::from(region.is_none());
    }
    let mut city = None;
    if let Some(name) = raw.city.as_deref().filter(|s| !s.trim().is_empty()) {
        city = g.city(country, region, name);
        unknown.cities += usize::from(city.is_none());
    } else if raw.region.is_none() {
        city = nearest;
    }
    let region = region.or(city.and_then(|c| g.cities[c].region));
    let names = PlaceNames {
        city: city.map(|c| g.cities[c].name.clone()),
        region: region.map(|r| g.regions[r].name.clone()),
        country: Some(g.countries[country].in_sentence()),
    };
    Ok(Place {
        names,
        country: Some(country),
        lat: raw.lat,
        lon: raw.lon,
        caption: raw.caption.clone(),
    })
}
