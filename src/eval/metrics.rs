//! Geolocation metrics: the fraction of images within 1 / 25 / 200 / 750 / 2,500 km (great-circle,
//! R = 6371 km, a guess exactly at a threshold counts as within it), median and mean error,
//! country accuracy, and OSV-5M's GeoScore (5000 · exp(−d / 1492.7)).

use serde::Serialize;
use std::collections::BTreeMap;

pub const THRESHOLDS_KM: [f64; 5] = [1.0, 25.0, 200.0, 750.0, 2500.0];

pub fn geoscore(km: f64) -> f64 {
    5000.0 * (-km / 1492.7).exp()
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GeoMetrics {
    pub n: usize,
    /// Fraction of the images within each threshold, keyed 1, 25, 200, 750, 2500 (km, in that
    /// order).
    pub within_km: BTreeMap<u32, f64>,
    pub median_km: f64,
    pub mean_km: f64,
    /// Fraction of the images whose predicted country is the true one (None without labels).
    pub country_accuracy: Option<f64>,
    pub geoscore: f64,
}

/// Metrics of great-circle errors (km) and, where known, whether the country was right.
pub fn geo_metrics(errors_km: &[f64], country_correct: &[Option<bool>]) -> GeoMetrics {
    let n = errors_km.len();
    let fraction = |k: usize| k as f64 / n.max(1) as f64;
    let within_km = THRESHOLDS_KM
        .iter()
        .map(|&t| {
            (
                t as u32,
                fraction(errors_km.iter().filter(|&&d| d <= t).count()),
            )
        })
        .collect();
    let mut sorted = errors_km.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median_km = match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    };
    let known: Vec<bool> = country_correct.iter().flatten().copied().collect();
    GeoMetrics {
        n,
        within_km,
        median_km,
        mean_km: errors_km.iter().sum::<f64>() / n.max(1) as f64,
        country_accuracy: (!known.is_empty())
            .then(|| known.iter().filter(|&&c| c).count() as f64 / known.len() as f64),
        geoscore: errors_km.iter().map(|&d| geoscore(d)).sum::<f64>() / n.max(1) as f64,
    }
}
