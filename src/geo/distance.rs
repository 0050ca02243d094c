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
