//! How a model directory geolocates: a geocell export (`geocells.json` + its head) by its
//! cells, anything else hierarchically (zero-shot, or with a fine-tuned country head). Both
//! `geolocate` and `eval geo` choose here, and say on stderr what they chose.

use super::geocell_locate::{GeocellLocator, GeocellModel};
use super::geolocate::{Geolocator, Guess};
use super::text_cache::CachedText;
use crate::config::GeoConfig;
use crate::formats::pretrained::{ExportedHead, Pretrained};
use crate::geo::Gazetteer;
use anyhow::Result;
use std::path::Path;
use tch::Tensor;

pub enum GeoModel {
    /// Country → (region →) city by caption similarity; the country from a head when given.
    Hierarchical(Option<ExportedHead>),
    Geocells(GeocellModel),
}

impl GeoModel {
    /// What `dir` carries, unless `zero_shot` (which ignores heads and cells).
    pub fn read(dir: &Path, clip: &Pretrained, zero_shot: bool, cfg: &GeoConfig) -> Result<Self> {
        if !zero_shot {
            if let Some(model) = GeocellModel::read(dir, clip)? {
                let how = match (&model.index, cfg.geocells.refine) {
                    (Some(index), true) => format!(
                        "refined by the {} nearest of {} training images in the top {} cells",
                        cfg.geocells.neighbours,
                        index.len(),
                        cfg.geocells.top_cells
                    ),
                    (Some(_), false) => {
                        "at the top cell's centroid (geo.geocells.refine is off)".into()
                    }
                    (None, _) => "at the top cell's centroid (no retrieval index)".into(),
                };
                eprintln!(
                    "{}: geocell model ({} cells), guesses {how}; --zero-shot geolocates by caption similarity instead",
                    dir.display(),
                    model.cells.len()
                );
                return Ok(Self::Geocells(model));
            }
        }
        let head = ExportedHead::unless_zero_shot(dir, clip, zero_shot, None, "the country")?;
        Ok(Self::Hierarchical(head))
    }

    /// The text encoder its locators read candidate captions with (cached on disk when
    /// `cache`): for hierarchical geolocation only.
    pub fn text_encoder<'c>(
        &self,
        clip: &'c Pretrained,
        cache: bool,
    ) -> Result<Option<CachedText<'c, Pretrained>>> {
        match self {
            Self::Hierarchical(_) => Ok(Some(super::text_cache::for_model(clip, cache)?)),
            Self::Geocells(_) => Ok(None),
        }
    }

    /// The ways it places images, by name suffix: one, or for a refining geocell model also
    /// `-centroid` (its top cell's centroid), so one evaluation shows what refinement adds.
    /// `encoder` is [`text_encoder`](Self::text_encoder)'s.
    pub fn locators<'a>(
        &'a self,
        encoder: Option<&'a CachedText<'a, Pretrained>>,
        g: &'a Gazetteer,
        cfg: &GeoConfig,
    ) -> Result<Vec<(&'static str, Locator<'a>)>> {
        match self {
            Self::Hierarchical(head) => {
                let encoder = encoder.expect("hierarchical geolocation reads captions");
                let locator =
                    Geolocator::with_country_head(encoder, g, cfg.clone(), head.as_ref())?;
                Ok(vec![("", Locator::Hierarchical(Box::new(locator)))])
            }
            Self::Geocells(model) => {
                let main = GeocellLocator::new(model, g, cfg.geocells.clone(), cfg.top_k)?;
                let mut out = vec![];
                if main.refines() {
                    let centroid = crate::config::RefineConfig {
                        refine: false,
                        ..cfg.geocells.clone()
                    };
                    let plain = GeocellLocator::new(model, g, centroid, cfg.top_k)?;
                    out.push(("", Locator::Geocells(main)));
                    out.push(("-centroid", Locator::Geocells(plain)));
                } else {
                    out.push(("", Locator::Geocells(main)));
                }
                Ok(out)
            }
        }
    }
}

pub enum Locator<'a> {
    Hierarchical(Box<Geolocator<'a, CachedText<'a, Pretrained>>>),
    Geocells(GeocellLocator<'a>),
}

impl Locator<'_> {
    /// Guesses for L2-normalised image embeddings `[B, d]`.
    pub fn locate(&self, images: &Tensor) -> Result<Vec<Guess>> {
        match self {
            Self::Hierarchical(l) => l.locate(images),
            Self::Geocells(l) => l.locate(images),
        }
    }
}
