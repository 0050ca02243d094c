//! Candidates ranked by probability: the one shape every ranked output has (`predict`'s
//! ranking, `geolocate`'s top countries, regions and cities).

use serde::Serialize;

/// A candidate and its probability (a fraction); a place also has its point (a city's
/// coordinates, a cell's centroid, a country's reference point).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranked {
    pub label: String,
    pub probability: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lat: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lon: Option<f64>,
}

impl Ranked {
    pub fn new(label: String, probability: f64) -> Self {
        Self {
            label,
            probability,
            lat: None,
            lon: None,
        }
    }

    /// A place at (lat, lon); coordinates that are not a place on Earth (a country without
    /// cities has NaN) are left out.
    pub fn at(label: String, probability: f64, lat: f64, lon: f64) -> Self {
        let valid = crate::geo::distance::valid_coordinates(lat, lon);
        Self {
            lat: valid.then_some(lat),
            lon: valid.then_some(lon),
            ..Self::new(label, probability)
        }
    }
}

/// Candidate indices, most probable first; ties keep candidate order.
pub fn best_first(p: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    order
}

/// The `k` most probable of `labels` (probabilities `p`), most probable first.
pub fn top(labels: &[String], p: &[f64], k: usize) -> Vec<Ranked> {
    best_first(p)
        .into_iter()
        .take(k)
        .map(|i| Ranked::new(labels[i].clone(), p[i]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_probable_first_and_ties_in_candidate_order() {
        assert_eq!(best_first(&[0.2, 0.5, 0.2, 0.1]), vec![1, 0, 2, 3]);
        let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let top2 = top(&labels, &[0.1, 0.6, 0.3], 2);
        assert_eq!(
            top2,
            vec![Ranked::new("b".into(), 0.6), Ranked::new("c".into(), 0.3),]
        );
        assert_eq!(top(&labels, &[0.1, 0.6, 0.3], 9).len(), 3);
    }
}
