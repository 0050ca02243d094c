//! Synthetic captions from place labels, StreetCLIP-style.
//!
//! Template syntax: `{city}`, `{region}`, `{country}` are replaced by the place's names
//! (`{country}` with "the" where English uses it); a `[...]` segment is left out when a
//! placeholder inside it has no value — missing from the label, or dropped at random
//! (`drop_city`, `drop_region`), as StreetCLIP/PIGEON did to vary the captions.

use crate::seed::sample_seed;
use anyhow::{bail, Result};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// StreetCLIP's wording (PIGEON code), with the town and region parts optional.
pub const DEFAULT_TEMPLATE: &str =
    "A Street View photo[ close to the town of {city}][ in the region of {region}] in {country}.";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CaptionConfig {
    /// One is drawn at random per sample and epoch when there are several.
    pub templates: Vec<String>,
    /// Probability of leaving out the city part of a caption.
    pub drop_city: f64,
    /// Probability of leaving out the region part.
    pub drop_region: f64,
    /// Seeds the template choice and the random drops (with the sample and epoch).
    pub seed: u64,
}

impl Default for CaptionConfig {
    fn default() -> Self {
        Self {
            templates: vec![DEFAULT_TEMPLATE.into()],
            drop_city: 0.0,
            drop_region: 0.0,
            seed: 0,
        }
    }
}

/// The names a caption can use; `country` already in sentence form ("the Netherlands").
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PlaceNames {
    pub city: Option<String>,
    pub region: Option<String>,
    pub country: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Slot(Slot),
    Optional(Vec<Piece>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Slot {
    City,
    Region,
    Country,
}

#[derive(Debug, Clone)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Self> {
        let mut stack: Vec<Vec<Piece>> = vec![vec![]];
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            match c {
                '[' => {
                    stack.push(vec![]);
                    rest = &rest[1..];
                }
                ']' => {
                    let inner = stack.pop().filter(|_| !stack.is_empty());
                    let Some(inner) = inner else {
                        bail!("template `{text}`: `]` without `[`")
                    };
                    stack
                        .last_mut()
                        .expect("outer level")
                        .push(Piece::Optional(inner));
                    rest = &rest[1..];
                }
                '{' => {
                    let Some(end) = rest.find('}') else {
                        bail!("template `{text}`: `{{` without `}}`")
                    };
                    let slot = match &rest[1..end] {
                        "city" => Slot::City,
                        "region" => Slot::Region,
                        "country" => Slot::Country,
                        other => bail!("template `{text}`: unknown placeholder `{{{other}}}` (use {{city}}, {{region}}, {{country}})"),
                    };
                    stack.last_mut().expect("a level").push(Piece::Slot(slot));
                    rest = &rest[end + 1..];
                }
                _ => {
                    let end = rest.find(['[', ']', '{']).unwrap_or(rest.len());
                    stack
                        .last_mut()
                        .expect("a level")
                        .push(Piece::Text(rest[..end].to_string()));
                    rest = &rest[end..];
                }
            }
        }
        if stack.len() != 1 {
            bail!("template `{text}`: `[` without `]`");
        }
        Ok(Self {
            pieces: stack.pop().expect("top level"),
        })
    }

    /// The caption, or None when a placeholder outside `[...]` has no value.
    pub fn render(&self, names: &PlaceNames) -> Option<String> {
        fn go(pieces: &[Piece], names: &PlaceNames, out: &mut String) -> bool {
            for p in pieces {
                match p {
                    Piece::Text(t) => out.push_str(t),
                    Piece::Slot(s) => {
                        let value = match s {
                            Slot::City => &names.city,
                            Slot::Region => &names.region,
                            Slot::Country => &names.country,
                        };
                        match value {
                            Some(v) => out.push_str(v),
                            None => return false,
                        }
                    }
                    Piece::Optional(inner) => {
                        let mut part = String::new();
                        if go(inner, names, &mut part) {
                            out.push_str(&part);
                        }
                    }
                }
            }
            true
        }
        let mut out = String::new();
        go(&self.pieces, names, &mut out).then_some(out)
    }
}

/// Turns place names into captions, reproducibly: the random choices of a sample depend only
/// on the seed, the epoch and the sample's index, so resumed runs caption identically.
pub struct Captioner {
    templates: Vec<Template>,
    config: CaptionConfig,
}

impl Captioner {
    pub fn new(config: &CaptionConfig) -> Result<Self> {
        if config.templates.is_empty() {
            bail!("captions.templates is empty");
        }
        for (key, p) in [
            ("captions.drop_city", config.drop_city),
            ("captions.drop_region", config.drop_region),
        ] {
            if !(0.0..=1.0).contains(&p) {
                bail!("{key} = {p} is not a probability in [0, 1]");
            }
        }
        let templates = config
            .templates
            .iter()
            .map(|t| Template::parse(t))
            .collect::<Result<_>>()?;
        Ok(Self {
            templates,
            config: config.clone(),
        })
    }

    pub fn caption(&self, names: &PlaceNames, epoch: u64, index: u64) -> Option<String> {
        let mut rng = ChaCha8Rng::seed_from_u64(sample_seed(self.config.seed, epoch, index));
        let template = &self.templates[rng.random_range(0..self.templates.len())];
        let mut names = names.clone();
        if rng.random_bool(self.config.drop_city) {
            names.city = None;
        }
        if rng.random_bool(self.config.drop_region) {
            names.region = None;
        }
        template.render(&names)
    }
}
