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

/// Valid WGS84 coordinates in degrees.
pub fn valid_coordinates(lat: f64, lon: f64) -> bool {
    (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)
}
