//! Country outlines: Natural Earth's 1:110m Admin 0 countries as world-atlas 2.0.2 ships them
//! (TopoJSON, `assets/web/vendor/world-atlas-2.0.2/`), the same file the map page of `serve`
//! draws. Decoded here for the PNG maps of `eval geo`: each country's rings in degrees, split
//! where a ring jumps across the antimeridian so that no edge spans the map.

use anyhow::{bail, Context, Result};
use serde::Deserialize;

const COUNTRIES: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/web/vendor/world-atlas-2.0.2/countries-110m.json"
));

/// A country's outline: its name and rings of (lon, lat) in degrees.
pub struct Country {
    pub name: String,
    pub rings: Vec<Vec<(f64, f64)>>,
}

#[derive(Deserialize)]
struct Topology {
    transform: Transform,
    objects: Objects,
    /// Quantized, delta-encoded positions.
    arcs: Vec<Vec<[i64; 2]>>,
}

#[derive(Deserialize)]
struct Transform {
    scale: [f64; 2],
    translate: [f64; 2],
}

#[derive(Deserialize)]
struct Objects {
    countries: Collection,
}

#[derive(Deserialize)]
struct Collection {
    geometries: Vec<Geometry>,
}

#[derive(Deserialize)]
struct Geometry {
    #[serde(rename = "type")]
    kind: String,
    /// Polygon: rings of arc indices; MultiPolygon: polygons of those.
    #[serde(default)]
    arcs: serde_json::Value,
    #[serde(default)]
    properties: Option<Properties>,
}

#[derive(Deserialize)]
struct Properties {
    name: String,
}

/// Every country of the bundled outlines (decoded once).
pub fn countries() -> Result<&'static [Country]> {
    static DECODED: std::sync::OnceLock<Result<Vec<Country>, String>> = std::sync::OnceLock::new();
    DECODED
        .get_or_init(|| decode(COUNTRIES).map_err(|e| format!("{e:#}")))
        .as_deref()
        .map_err(|e| anyhow::anyhow!("the bundled country outlines: {e}"))
}

fn decode(bytes: &[u8]) -> Result<Vec<Country>> {
    let topology: Topology = serde_json::from_slice(bytes).context("not a TopoJSON topology")?;
    let t = &topology.transform;
    let arcs: Vec<Vec<(f64, f64)>> = topology
        .arcs
        .iter()
        .map(|arc| {
            let (mut x, mut y) = (0, 0);
            arc.iter()
                .map(|&[dx, dy]| {
                    (x, y) = (x + dx, y + dy);
                    (
                        x as f64 * t.scale[0] + t.translate[0],
                        y as f64 * t.scale[1] + t.translate[1],
                    )
                })
                .collect()
        })
        .collect();
    let mut countries = vec![];
    for g in topology.objects.countries.geometries {
        let polygons: Vec<Vec<Vec<i64>>> = match g.kind.as_str() {
            "Polygon" => vec![serde_json::from_value(g.arcs)?],
            "MultiPolygon" => serde_json::from_value(g.arcs)?,
            _ => continue,
        };
        let mut rings = vec![];
        for ring in polygons.iter().flatten() {
            rings.extend(split_at_antimeridian(&join(ring, &arcs)?));
        }
        let name = g.properties.map(|p| p.name).unwrap_or_default();
        countries.push(Country { name, rings });
    }
    Ok(countries)
}

/// A ring from its arcs (a negative index `!i` is arc `i` reversed); each arc after the first
/// starts where the previous ended, so its first point is dropped.
fn join(ring: &[i64], arcs: &[Vec<(f64, f64)>]) -> Result<Vec<(f64, f64)>> {
    let mut points: Vec<(f64, f64)> = vec![];
    for &index in ring {
        let i = if index < 0 { !index } else { index } as usize;
        let Some(arc) = arcs.get(i) else {
            bail!("arc {index} of {} does not exist", arcs.len());
        };
        let skip = usize::from(!points.is_empty());
        match index < 0 {
            true => points.extend(arc.iter().rev().skip(skip)),
            false => points.extend(arc.iter().skip(skip)),
        }
    }
    Ok(points)
}

/// The ring's pieces between its crossings of the antimeridian (jumps of more than 180° of
/// longitude), each starting right after a crossing, so that a piece closed straight runs
/// along the map's edge; a ring that does not cross is one piece.
fn split_at_antimeridian(ring: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    let open = match ring.first() == ring.last() && ring.len() > 1 {
        true => &ring[..ring.len() - 1],
        false => ring,
    };
    let n = open.len();
    let crosses_into = |i: usize| (open[i].0 - open[(i + n - 1) % n].0).abs() > 180.0;
    let Some(first) = (0..n).find(|&i| crosses_into(i)) else {
        return vec![ring.to_vec()];
    };
    let mut pieces: Vec<Vec<(f64, f64)>> = vec![];
    for i in (first..n).chain(0..first) {
        if crosses_into(i) {
            pieces.push(vec![]);
        }
        pieces.last_mut().expect("a piece").push(open[i]);
    }
    pieces.retain(|p| p.len() > 1);
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether (lon, lat) is inside the ring (ray casting).
    fn inside(ring: &[(f64, f64)], (x, y): (f64, f64)) -> bool {
        let mut odd = false;
        for (a, b) in ring.iter().zip(ring.iter().cycle().skip(1)) {
            if (a.1 > y) != (b.1 > y) && x < a.0 + (y - a.1) / (b.1 - a.1) * (b.0 - a.0) {
                odd = !odd;
            }
        }
        odd
    }

    #[test]
    fn the_outlines_put_capitals_in_their_countries_and_stay_on_the_map() {
        let all = countries().unwrap();
        assert_eq!(all.len(), 177, "Natural Earth 1:110m has 177 countries");
        let country = |name: &str| all.iter().find(|c| c.name == name).unwrap();
        let holds = |name: &str, point| country(name).rings.iter().any(|r| inside(r, point));
        assert!(holds("France", (2.35, 48.86)), "Paris");
        assert!(holds("Japan", (139.69, 35.69)), "Tokyo");
        assert!(holds("Brazil", (-47.88, -15.79)), "Brasília");
        assert!(holds("Australia", (149.13, -35.28)), "Canberra");
        assert!(!holds("France", (13.40, 52.52)), "not Berlin");
        for c in all {
            for ring in &c.rings {
                for &(lon, lat) in ring {
                    assert!((-180.0..=180.0).contains(&lon) && (-90.0..=90.0).contains(&lat));
                }
                let jump = ring
                    .windows(2)
                    .map(|w| (w[1].0 - w[0].0).abs())
                    .fold(0.0, f64::max);
                assert!(jump <= 180.0, "{}: an edge across the map", c.name);
            }
        }
    }
}
