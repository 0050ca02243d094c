//! The geocell head's training targets, PIGEON's haversine label smoothing: for an image at x in
//! cell c_true, y_n ∝ exp(−(hav(c_n, x) − hav(c_true, x)) / τ) over the cells' centroids c_n, so
//! near cells share the credit and far ones get almost none. Computed on the tensors' device in
//! float64 (a batch at a time: never the whole cells × images matrix).

use super::distance::EARTH_RADIUS_KM;
use tch::{Kind, Tensor};

/// Great-circle distances (km) `[B, K]` between points `[B, 2]` and centres `[K, 2]`, both
/// (latitude, longitude) in degrees, by the haversine formula in float64.
pub fn haversine_matrix(points: &Tensor, centres: &Tensor) -> Tensor {
    let rad = |t: &Tensor| t.to_kind(Kind::Double).deg2rad();
    let (p, c) = (rad(points), rad(centres));
    let (p_lat, p_lon) = (p.select(1, 0).unsqueeze(1), p.select(1, 1).unsqueeze(1));
    let (c_lat, c_lon) = (c.select(1, 0).unsqueeze(0), c.select(1, 1).unsqueeze(0));
    let half_dlat = ((&c_lat - &p_lat) / 2.0).sin().square();
    let half_dlon = ((&c_lon - &p_lon) / 2.0).sin().square();
    let a = half_dlat + p_lat.cos() * c_lat.cos() * half_dlon;
    a.sqrt().clamp_max(1.0).asin() * (2.0 * EARTH_RADIUS_KM)
}

/// The smoothed targets `[B, K]` (float64, rows summing to 1) of points `[B, 2]` whose cells are
/// `true_cell` `[B]`, over cells with centroids `[K, 2]`.
pub fn smoothed_targets(
    points: &Tensor,
    true_cell: &Tensor,
    centroids: &Tensor,
    tau_km: f64,
) -> Tensor {
    let d = haversine_matrix(points, centroids);
    let d_true = d.gather(1, &true_cell.unsqueeze(1), false);
    // Subtracting the true cell's distance leaves the distribution as it is and keeps the
    // exponent of the true cell at 0.
    ((d_true - d) / tau_km).softmax(1, Kind::Double)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_scalar_haversine() {
        let points = Tensor::from_slice(&[48.8566, 2.3522, -33.86, 151.2, 0.0, 179.5]).view([3, 2]);
        let centres = Tensor::from_slice(&[51.5074, -0.1278, 0.0, -179.5]).view([2, 2]);
        let d = haversine_matrix(&points, &centres);
        for (b, &(la, lo)) in [(48.8566, 2.3522), (-33.86, 151.2), (0.0, 179.5)]
            .iter()
            .enumerate()
        {
            for (k, &(cla, clo)) in [(51.5074, -0.1278), (0.0, -179.5)].iter().enumerate() {
                let want = super::super::haversine_km(la, lo, cla, clo);
                let got = d.double_value(&[b as i64, k as i64]);
                assert!((got - want).abs() < 1e-9, "{got} vs {want}");
            }
        }
    }

    #[test]
    fn the_true_cell_leads_and_rows_sum_to_one() {
        let points = Tensor::from_slice(&[10.0, 10.0, 10.5, 10.5]).view([2, 2]);
        let centroids = Tensor::from_slice(&[10.0, 10.1, 20.0, 20.0, 10.0, 11.0]).view([3, 2]);
        let y = smoothed_targets(&points, &Tensor::from_slice(&[0i64, 2]), &centroids, 75.0);
        let sums = Vec::<f64>::try_from(y.sum_dim_intlist(1, false, Kind::Double)).unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-12));
        assert!(y.double_value(&[0, 0]) > y.double_value(&[0, 2]));
        // 1,540 km away at τ = 75 km: exp(−20.4).
        assert!(
            y.double_value(&[0, 1]) < 2e-9,
            "{}",
            y.double_value(&[0, 1])
        );
    }
}
