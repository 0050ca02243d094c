//! Candidates ranked by probability: the one shape every ranked output has (`predict`'s
//! ranking, `geolocate`'s top countries, regions and cities).

use serde::Serialize;

/// A candidate and its probability (a fraction).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranked {
    pub label: String,
    pub probability: f64,
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
        .map(|i| Ranked {
            label: labels[i].clone(),
            probability: p[i],
        })
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
            vec![
                Ranked {
                    label: "b".into(),
                    probability: 0.6
                },
                Ranked {
                    label: "c".into(),
                    probability: 0.3
                },
            ]
        );
        assert_eq!(top(&labels, &[0.1, 0.6, 0.3], 9).len(), 3);
    }
}
