//! Hierarchical zero-shot geolocation, StreetCLIP's way: choose the country among candidate
//! countries, optionally the region within it, then the city among its most populous ones; the
//! guess is that city's coordinates (the country's reference point when it has no city).
//! Prompts come from the config; several templates per stage are averaged (prompt ensembling).

use super::ranking::{best_first, Ranked};
use super::text::{ensemble, probabilities};
use crate::config::GeoConfig;
use crate::data::classes::caption_name;
use crate::encode::TextEncoder;
use crate::formats::pretrained::ExportedHead;
use crate::geo::Gazetteer;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::HashMap;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Serialize)]
pub struct Guess {
    pub country: String,
    pub country_code: String,
    pub region: Option<String>,
    pub city: Option<String>,
    pub lat: f64,
    pub lon: f64,
    /// Why the guess's country is not the most probable one, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub top_countries: Vec<Ranked>,
    pub top_regions: Vec<Ranked>,
    pub top_cities: Vec<Ranked>,
    /// A geocell model's most probable cells (empty for hierarchical geolocation).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub top_cells: Vec<Ranked>,
    /// How far the model's belief spreads around the guess (see [`Confidence`]).
    pub confidence: Confidence,
    #[serde(skip)]
    pub country_index: usize,
}

/// The radius around the guess within which places holding `share` of the predicted
/// probability lie: over a geocell model's cells (at their centroids), or hierarchically over
/// the candidate countries (each at its reference point) with the guessed country's
/// probability spread over its ranked cities in proportion to theirs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Confidence {
    pub share: f64,
    /// `None` (JSON null) when no candidate has coordinates.
    pub radius_km: Option<f64>,
}

/// The share of the probability [`Confidence`] states the radius of.
pub const CONFIDENCE_SHARE: f64 = 0.5;

impl Confidence {
    /// Around (lat, lon), of `places` (lat, lon, probability).
    pub fn around(lat: f64, lon: f64, places: &[(f64, f64, f64)]) -> Self {
        Self {
            share: CONFIDENCE_SHARE,
            radius_km: crate::geo::distance::radius_holding(lat, lon, places, CONFIDENCE_SHARE),
        }
    }
}

/// One stage's candidates: gazetteer indices and their ensembled text embeddings.
struct Stage {
    items: Vec<usize>,
    text: Tensor,
}

pub struct Geolocator<'a, E: TextEncoder> {
    encoder: &'a E,
    g: &'a Gazetteer,
    cfg: GeoConfig,
    countries: Stage,
    /// A fine-tuned classifier over countries that replaces the zero-shot country stage.
    country_head: Option<&'a ExportedHead>,
    regions: std::cell::RefCell<HashMap<usize, Option<Stage>>>,
    cities: std::cell::RefCell<HashMap<(usize, Option<usize>), Option<Stage>>>,
}

fn fill(template: &str, city: Option<&str>, region: Option<&str>, country: &str) -> String {
    template
        .replace("{city}", city.unwrap_or_default())
        .replace("{region}", region.unwrap_or_default())
        .replace("{country}", country)
}

/// The country stage's candidate embeddings `[countries, d]`: each template filled with each
/// country as in a sentence, ensembled (also validation's zero-shot country guess).
pub fn country_embeddings(
    encoder: &impl TextEncoder,
    g: &Gazetteer,
    countries: &[usize],
    templates: &[String],
) -> Result<Tensor> {
    ensemble(encoder, templates, |t| {
        countries
            .iter()
            .map(|&c| fill(t, None, None, &g.countries[c].in_sentence()))
            .collect()
    })
}

/// `cfg.countries`, or every country with cities and a reference point.
fn candidate_countries(g: &Gazetteer, cfg: &GeoConfig) -> Result<Vec<usize>> {
    let items: Vec<usize> = match &cfg.countries {
        Some(names) => names
            .iter()
            .map(|n| {
                g.country(n)
                    .ok_or_else(|| anyhow::anyhow!("geo.countries: unknown country `{n}`"))
            })
            .collect::<Result<_>>()?,
        None => (0..g.countries.len())
            .filter(|&c| g.countries[c].lat.is_finite() && !g.largest_cities(c, 1).is_empty())
            .collect(),
    };
    if let Some(&c) = items
        .iter()
        .find(|&&c| !g.countries[c].lat.is_finite() && g.largest_cities(c, 1).is_empty())
    {
        bail!(
            "geo.countries: {} has neither cities nor a reference point in the gazetteer",
            g.countries[c].name
        );
    }
    if items.is_empty() {
        bail!("no candidate countries");
    }
    Ok(items)
}

/// The gazetteer countries a classifier head's classes name.
fn head_countries(g: &Gazetteer, head: &ExportedHead) -> Result<Vec<usize>> {
    head.classes
        .iter()
        .map(|class| {
            let c = g
                .country(class)
                .or_else(|| g.country(&caption_name(class)))
                .with_context(|| format!("the model's classifier head has class `{class}`, which is not a country in the gazetteer: geolocation uses a head over countries only (add --zero-shot to ignore the head)"))?;
            if !g.countries[c].lat.is_finite() && g.largest_cities(c, 1).is_empty() {
                bail!("the classifier head's class {} has neither cities nor a reference point in the gazetteer", g.countries[c].name);
            }
            Ok(c)
        })
        .collect()
}

/// `items` with their probabilities `[n]`, best first (ties keep candidate order).
fn ranked(items: &[usize], probs: Tensor) -> Vec<(usize, f64)> {
    let p = Vec::<f64>::try_from(probs.to_kind(Kind::Double)).expect("probabilities");
    best_first(&p)
        .into_iter()
        .map(|i| (items[i], p[i]))
        .collect()
}

impl<'a, E: TextEncoder> Geolocator<'a, E> {
    /// Zero-shot at every stage.
    pub fn new(encoder: &'a E, g: &'a Gazetteer, cfg: GeoConfig) -> Result<Self> {
        Self::with_country_head(encoder, g, cfg, None)
    }

    /// The country chosen by `head` (a `finetune` export's classifier) when given, else
    /// zero-shot among `cfg.countries`; regions and cities zero-shot. The head's classes must
    /// name gazetteer countries (by name or code, `_` read as a space); with a head the country
    /// prompts are never encoded.
    pub fn with_country_head(
        encoder: &'a E,
        g: &'a Gazetteer,
        cfg: GeoConfig,
        head: Option<&'a ExportedHead>,
    ) -> Result<Self> {
        cfg.validate()?;
        let countries = match head {
            Some(head) => Stage {
                items: head_countries(g, head)?,
                text: Tensor::zeros([0], (Kind::Float, tch::Device::Cpu)),
            },
            None => {
                let items = candidate_countries(g, &cfg)?;
                let text = country_embeddings(encoder, g, &items, &cfg.country_prompts)?;
                Stage { items, text }
            }
        };
        Ok(Self {
            encoder,
            g,
            cfg,
            countries,
            country_head: head,
            regions: Default::default(),
            cities: Default::default(),
        })
    }

    /// The country stage for one image, best first: the head's probabilities when there is one.
    fn rank_countries(&self, image: &Tensor) -> Vec<(usize, f64)> {
        match &self.country_head {
            Some(head) => {
                let p = head.probabilities(&image.unsqueeze(0)).squeeze_dim(0);
                ranked(&self.countries.items, p)
            }
            None => self.rank(image, &self.countries),
        }
    }

    fn region_stage(&self, country: usize) -> Result<()> {
        if self.regions.borrow().contains_key(&country) {
            return Ok(());
        }
        let g = self.g;
        let mut items: Vec<usize> = g
            .largest_cities(country, usize::MAX)
            .iter()
            .filter_map(|&c| g.cities[c].region)
            .collect();
        items.sort();
        items.dedup();
        let stage = if items.is_empty() {
            None
        } else {
            let name = g.countries[country].in_sentence();
            let text = ensemble(self.encoder, &self.cfg.region_prompts, |t| {
                items
                    .iter()
                    .map(|&r| fill(t, None, Some(&g.regions[r].name), &name))
                    .collect()
            })?;
            Some(Stage { items, text })
        };
        self.regions.borrow_mut().insert(country, stage);
        Ok(())
    }

    fn city_stage(&self, country: usize, region: Option<usize>) -> Result<()> {
        if self.cities.borrow().contains_key(&(country, region)) {
            return Ok(());
        }
        let g = self.g;
        let mut items: Vec<usize> = g
            .largest_cities(country, usize::MAX)
            .into_iter()
            .filter(|&c| region.is_none() || g.cities[c].region == region)
            .collect();
        items.truncate(self.cfg.cities_per_country);
        let stage = if items.is_empty() {
            None
        } else {
            let name = g.countries[country].in_sentence();
            let region_name = |c: usize| g.cities[c].region.map(|r| g.regions[r].name.clone());
            let text = ensemble(self.encoder, &self.cfg.city_prompts, |t| {
                items
                    .iter()
                    .map(|&c| {
                        fill(t, Some(&g.cities[c].name), region_name(c).as_deref(), &name)
                            .replace(" , ", " ")
                            .replace(", ,", ",")
                    })
                    .collect()
            })?;
            Some(Stage { items, text })
        };
        self.cities.borrow_mut().insert((country, region), stage);
        Ok(())
    }

    /// Probabilities over a stage for one image, best first (ties keep candidate order).
    fn rank(&self, image: &Tensor, stage: &Stage) -> Vec<(usize, f64)> {
        let probs =
            probabilities(&image.unsqueeze(0), &stage.text, self.encoder.scale()).squeeze_dim(0);
        ranked(&stage.items, probs)
    }

    /// [`Confidence`] around `guess`: the first of `countries` (all candidates, ranked) spread
    /// over its `cities` (ranked, probabilities given the country), the others at their
    /// reference points.
    fn confidence(
        &self,
        (lat, lon): (f64, f64),
        countries: &[(usize, f64)],
        cities: &[(usize, f64)],
    ) -> Confidence {
        let g = self.g;
        let (first, others) = countries.split_first().expect("a candidate country");
        let country_at = |&(c, p): &(usize, f64)| (g.countries[c].lat, g.countries[c].lon, p);
        let mut places: Vec<(f64, f64, f64)> = others.iter().map(country_at).collect();
        match cities.is_empty() {
            true => places.push(country_at(first)),
            false => places.extend(
                cities
                    .iter()
                    .map(|&(c, p)| (g.cities[c].lat, g.cities[c].lon, first.1 * p)),
            ),
        }
        Confidence::around(lat, lon, &places)
    }

    /// Guesses for L2-normalised image embeddings `[B, d]`.
    pub fn locate(&self, images: &Tensor) -> Result<Vec<Guess>> {
        let g = self.g;
        let k = self.cfg.top_k.max(1);
        let mut out = Vec::new();
        for row in 0..images.size()[0] {
            let image = images.get(row).to_kind(Kind::Float);
            let countries = self.rank_countries(&image);
            let country = countries[0].0;
            let mut region = None;
            let mut top_regions = vec![];
            if self.cfg.use_regions {
                self.region_stage(country)?;
                if let Some(stage) = &self.regions.borrow()[&country] {
                    let ranked = self.rank(&image, stage);
                    region = Some(ranked[0].0);
                    top_regions = ranked
                        .iter()
                        .take(k)
                        .map(|&(r, p)| Ranked::new(g.regions[r].name.clone(), p))
                        .collect();
                }
            }
            self.city_stage(country, region)?;
            let cities = match &self.cities.borrow()[&(country, region)] {
                Some(stage) => self.rank(&image, stage),
                None => vec![],
            };
            let city = cities.first().map(|&(c, _)| c);
            let city_at = |&(c, p): &(usize, f64)| {
                let c = &g.cities[c];
                Ranked::at(c.name.clone(), p, c.lat, c.lon)
            };
            let top_cities = cities.iter().take(k).map(city_at).collect();
            let c = &g.countries[country];
            let (lat, lon) = match city {
                Some(i) => (g.cities[i].lat, g.cities[i].lon),
                None => (c.lat, c.lon),
            };
            out.push(Guess {
                country: c.name.clone(),
                country_code: c.iso2.clone(),
                region: city
                    .and_then(|i| g.cities[i].region)
                    .or(region)
                    .map(|r| g.regions[r].name.clone()),
                city: city.map(|i| g.cities[i].name.clone()),
                lat,
                lon,
                top_countries: countries
                    .iter()
                    .take(k)
                    .map(|&(i, p)| {
                        let c = &g.countries[i];
                        Ranked::at(c.name.clone(), p, c.lat, c.lon)
                    })
                    .collect(),
                top_regions,
                top_cities,
                top_cells: vec![],
                confidence: self.confidence((lat, lon), &countries, &cities),
                note: None,
                country_index: country,
            });
        }
        Ok(out)
    }
}
