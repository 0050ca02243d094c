//! The GeoNames-derived gazetteer (data/gazetteer, made by scripts/make_gazetteer.py):
//! countries, admin-1 regions, and cities of 15,000+ people, with name lookups and reverse
//! geocoding. The files are compiled into the binary; loading takes a few tens of milliseconds.

use super::distance::unit_vector;
use anyhow::{bail, Context, Result};
use kiddo::{ImmutableKdTree, SquaredEuclidean};
use std::collections::HashMap;
use std::path::Path;

const COUNTRIES: &str = include_str!("../../data/gazetteer/countries.tsv");
const ADMIN1: &str = include_str!("../../data/gazetteer/admin1.tsv");
const CITIES: &str = include_str!("../../data/gazetteer/cities.tsv");

#[derive(Debug, Clone)]
pub struct Country {
    pub iso2: String,
    pub iso3: String,
    pub name: String,
    pub continent: String,
    /// Population-weighted centre of its cities (NaN for the few without any).
    pub lat: f64,
    pub lon: f64,
    pub population: u64,
    /// English puts "the" before the name ("the Netherlands").
    pub article: bool,
    pub aliases: Vec<String>,
}

impl Country {
    /// The name as it reads in a sentence: "the United States", "France".
    pub fn in_sentence(&self) -> String {
        if self.article {
            format!("the {}", self.name)
        } else {
            self.name.clone()
        }
    }
}

#[derive(Debug, Clone)]
pub struct City {
    pub geonameid: u64,
    pub name: String,
    pub ascii: String,
    /// Index into `Gazetteer::regions`, when GeoNames knows the admin-1 region.
    pub region: Option<usize>,
    pub country: usize,
    pub lat: f64,
    pub lon: f64,
    pub population: u64,
}

#[derive(Debug, Clone)]
pub struct Region {
    /// GeoNames admin-1 code, `CC.XX`.
    pub code: String,
    pub name: String,
    pub country: usize,
}

pub struct Gazetteer {
    pub countries: Vec<Country>,
    pub regions: Vec<Region>,
    pub cities: Vec<City>,
    country_keys: HashMap<String, usize>,
    /// (country, normalized name) -> region
    region_keys: HashMap<(usize, String), usize>,
    /// (country, normalized name) -> cities of that name, most populous first
    city_keys: HashMap<(usize, String), Vec<usize>>,
    tree: ImmutableKdTree<f64, 3>,
}

/// Case-, accent- and punctuation-insensitive key for names: "São Paulo" == "sao paulo".
pub fn name_key(s: &str) -> String {
    deunicode::deunicode(s)
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { ' ' })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn rows(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').collect())
}

fn field<'a>(row: &[&'a str], i: usize, file: &str) -> Result<&'a str> {
    row.get(i)
        .copied()
        .with_context(|| format!("{file}: row `{}` has no column {}", row.join("\t"), i + 1))
}

fn number<T: std::str::FromStr>(row: &[&str], i: usize, file: &str) -> Result<T> {
    let s = field(row, i, file)?;
    s.parse()
        .ok()
        .with_context(|| format!("{file}: `{s}` is not a number"))
}

impl Gazetteer {
    /// The gazetteer compiled into the binary, parsed (and its k-d tree built) once per process.
    pub fn bundled() -> Result<&'static Self> {
        static BUNDLED: std::sync::OnceLock<Gazetteer> = std::sync::OnceLock::new();
        if let Some(g) = BUNDLED.get() {
            return Ok(g);
        }
        let parsed = Self::parse(COUNTRIES, ADMIN1, CITIES)?;
        Ok(BUNDLED.get_or_init(|| parsed))
    }

    /// A gazetteer directory with the same three files (e.g. a larger GeoNames extract).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .with_context(|| format!("cannot read {}", dir.join(name).display()))
        };
        Self::parse(
            &read("countries.tsv")?,
            &read("admin1.tsv")?,
            &read("cities.tsv")?,
        )
    }

    fn parse(countries_tsv: &str, admin1_tsv: &str, cities_tsv: &str) -> Result<Self> {
        let mut countries = Vec::new();
        for r in rows(countries_tsv) {
            let f = "countries.tsv";
            let aliases = field(&r, 8, f)
                .unwrap_or("")
                .split('|')
                .filter(|a| !a.is_empty())
                .map(String::from)
                .collect();
            countries.push(Country {
                iso2: field(&r, 0, f)?.into(),
                iso3: field(&r, 1, f)?.into(),
                name: field(&r, 2, f)?.into(),
                continent: field(&r, 3, f)?.into(),
                lat: number(&r, 4, f)?,
                lon: number(&r, 5, f)?,
                population: number(&r, 6, f)?,
                article: field(&r, 7, f)? == "1",
                aliases,
            });
        }
        let by_iso2: HashMap<String, usize> = countries
            .iter()
            .enumerate()
            .map(|(i, c)| (c.iso2.clone(), i))
            .collect();
        let mut regions = Vec::new();
        for r in rows(admin1_tsv) {
            let code = field(&r, 0, "admin1.tsv")?;
            let Some(&country) = code.split('.').next().and_then(|cc| by_iso2.get(cc)) else {
                continue;
            };
            regions.push(Region {
                code: code.into(),
                name: field(&r, 1, "admin1.tsv")?.into(),
                country,
            });
        }
        let region_by_code: HashMap<&str, usize> = regions
            .iter()
            .enumerate()
            .map(|(i, r)| (r.code.as_str(), i))
            .collect();
        let mut cities = Vec::new();
        for r in rows(cities_tsv) {
            let f = "cities.tsv";
            let Some(&country) = by_iso2.get(field(&r, 4, f)?) else {
                bail!("{f}: unknown country `{}`", r[4])
            };
            cities.push(City {
                geonameid: number(&r, 0, f)?,
                name: field(&r, 1, f)?.into(),
                ascii: field(&r, 2, f)?.into(),
                region: region_by_code.get(field(&r, 3, f)?).copied(),
                country,
                lat: number(&r, 5, f)?,
                lon: number(&r, 6, f)?,
                population: number(&r, 7, f)?,
            });
        }
        if cities.is_empty() {
            bail!("the gazetteer has no cities");
        }
        Ok(Self::index(countries, regions, cities))
    }

    fn index(countries: Vec<Country>, regions: Vec<Region>, cities: Vec<City>) -> Self {
        let mut country_keys = HashMap::new();
        for (i, c) in countries.iter().enumerate() {
            for key in [&c.iso2, &c.iso3, &c.name].into_iter().chain(&c.aliases) {
                country_keys.entry(name_key(key)).or_insert(i);
            }
        }
        let region_keys = regions
            .iter()
            .enumerate()
            .map(|(i, r)| ((r.country, name_key(&r.name)), i))
            .collect();
        let mut city_keys: HashMap<(usize, String), Vec<usize>> = HashMap::new();
        for (i, c) in cities.iter().enumerate() {
            for key in [name_key(&c.name), name_key(&c.ascii)] {
                let entry = city_keys.entry((c.country, key)).or_default();
                if !entry.contains(&i) {
                    entry.push(i);
                }
            }
        }
        for list in city_keys.values_mut() {
            list.sort_by_key(|&i| std::cmp::Reverse(cities[i].population));
        }
        let points: Vec<[f64; 3]> = cities.iter().map(|c| unit_vector(c.lat, c.lon)).collect();
        let tree = ImmutableKdTree::new_from_slice(&points).expect("a k-d tree over the cities");
        Self {
            countries,
            regions,
            cities,
            country_keys,
            region_keys,
            city_keys,
            tree,
        }
    }

    /// By ISO 3166 alpha-2 or alpha-3 code, GeoNames name or a common alias, ignoring case,
    /// accents and punctuation ("us", "USA", "United States of America", "Côte d'Ivoire").
    pub fn country(&self, name: &str) -> Option<usize> {
        let key = name_key(name);
        self.country_keys
            .get(&key)
            .or_else(|| self.country_keys.get(key.strip_prefix("the ")?))
            .copied()
    }

    /// An admin-1 region of `country` by name.
    pub fn region(&self, country: usize, name: &str) -> Option<usize> {
        self.region_keys.get(&(country, name_key(name))).copied()
    }

    /// The most populous city of that name in `country` (in `region` when given and matching).
    pub fn city(&self, country: usize, region: Option<usize>, name: &str) -> Option<usize> {
        let candidates = self.city_keys.get(&(country, name_key(name)))?;
        region
            .and_then(|r| {
                candidates
                    .iter()
                    .find(|&&c| self.cities[c].region == Some(r))
            })
            .or(candidates.first())
            .copied()
    }

    /// The nearest city by great-circle distance.
    pub fn nearest_city(&self, lat: f64, lon: f64) -> usize {
        let hit = self
            .tree
            .query(&unit_vector(lat, lon))
            .nearest_one::<SquaredEuclidean<f64>>()
            .execute();
        hit.item as usize
    }

    /// The `n` most populous cities of a country, most populous first.
    pub fn largest_cities(&self, country: usize, n: usize) -> Vec<usize> {
        let mut list: Vec<usize> = (0..self.cities.len())
            .filter(|&i| self.cities[i].country == country)
            .collect();
        list.sort_by_key(|&i| std::cmp::Reverse(self.cities[i].population));
        list.truncate(n);
        list
    }
}
