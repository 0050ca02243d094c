//! Great-circle distance: the one place the Earth's radius is defined.

/// Mean Earth radius (km), as the geolocation benchmarks use.
pub const EARTH_RADIUS_KM: f64 = 6371.0;

/// Haversine distance in km between two (latitude, longitude) points in degrees.
pub fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
}

/// The point on the unit sphere; straight-line distance between such points grows
/// monotonically with great-circle distance, so a 3-D nearest neighbour is the nearest place,
/// with no special case at the antimeridian or the poles.
pub fn unit_vector(lat: f64, lon: f64) -> [f64; 3] {
    let (la, lo) = (lat.to_radians(), lon.to_radians());
    [la.cos() * lo.cos(), la.cos() * lo.sin(), la.sin()]
}

/// (latitude, longitude) in degrees of a unit vector.
pub fn lat_lon(v: [f64; 3]) -> (f64, f64) {
    (
        v[2].clamp(-1.0, 1.0).asin().to_degrees(),
        v[1].atan2(v[0]).to_degrees(),
    )
}

/// The weighted mean of points (latitude, longitude in degrees) on the unit sphere: the
/// direction of the weighted sum of their unit vectors (right across the antimeridian).
pub fn spherical_mean(points: &[(f64, f64)], weights: &[f64]) -> (f64, f64) {
    let mut sum = [0.0; 3];
    for (&(lat, lon), &w) in points.iter().zip(weights) {
        let v = unit_vector(lat, lon);
        sum.iter_mut().zip(v).for_each(|(s, x)| *s += w * x);
    }
    let n = (sum[0] * sum[0] + sum[1] * sum[1] + sum[2] * sum[2])
        .sqrt()
        .max(1e-300);
    lat_lon(sum.map(|x| x / n))
}

/// Valid WGS84 coordinates in degrees.
pub fn valid_coordinates(lat: f64, lon: f64) -> bool {
    (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)
}

/// The smallest great-circle radius (km) around `(lat, lon)` within which places holding
/// `share` of the total weight lie: `places` are (lat, lon, weight); places with invalid
/// coordinates or weight are left out. 0 when the centre itself holds the share; `None` when
/// no place counts.
pub fn radius_holding(lat: f64, lon: f64, places: &[(f64, f64, f64)], share: f64) -> Option<f64> {
    let mut by_distance: Vec<(f64, f64)> = places
        .iter()
        .filter(|&&(a, b, w)| valid_coordinates(a, b) && w.is_finite() && w > 0.0)
        .map(|&(a, b, w)| (haversine_km(lat, lon, a, b), w))
        .collect();
    let total: f64 = by_distance.iter().map(|&(_, w)| w).sum();
    by_distance.sort_by(|x, y| x.0.total_cmp(&y.0));
    let mut held = 0.0;
    for (km, w) in by_distance {
        held += w;
        if held >= share * total {
            return Some(km);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_radius_holding_a_share_is_the_distance_of_the_place_that_completes_it() {
        let places = [
            (0.0, 10.0, 0.4),
            (0.0, 0.0, 0.3),
            (0.0, 1.0, 0.3),
            (f64::NAN, 0.0, 9.0),
        ];
        let at = |share| radius_holding(0.0, 0.0, &places, share).unwrap();
        assert_eq!(at(0.3), 0.0);
        assert_eq!(at(0.5), haversine_km(0.0, 0.0, 0.0, 1.0));
        assert_eq!(at(0.61), haversine_km(0.0, 0.0, 0.0, 10.0));
        // Weights need not sum to one: the share is of their total.
        let doubled: Vec<_> = places.iter().map(|&(a, b, w)| (a, b, 2.0 * w)).collect();
        assert_eq!(radius_holding(0.0, 0.0, &doubled, 0.5), Some(at(0.5)));
        assert_eq!(radius_holding(0.0, 0.0, &[], 0.5), None);
    }
}
