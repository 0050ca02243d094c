"""PIGEON's haversine-smoothed geocell targets, computed independently with NumPy in float64 on
seeded random cells and points, for tests/geo.rs:

    y_n = exp(-(hav(c_n, x) - hav(c_true, x)) / tau) / sum_m exp(-(hav(c_m, x) - hav(c_true, x)) / tau)

Usage: geocell_targets.py OUT.json
"""
import json
import sys

import numpy as np

R_KM = 6371.0


def haversine_km(lat1, lon1, lat2, lon2):
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(lon2 - lon1)
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * R_KM * np.arcsin(np.minimum(np.sqrt(a), 1.0))


def case(rng, tau, k, b):
    # Clusters of cells tens of km apart (so several share the credit) spread over the globe,
    # including both sides of the antimeridian.
    hubs = np.column_stack([rng.uniform(-60, 70, k // 4), rng.uniform(-180, 180, k // 4)])
    hubs[0] = [10.0, 179.8]
    centroids = np.repeat(hubs, 4, axis=0) + rng.normal(0, 0.4, (k // 4 * 4, 2))
    centroids[:, 1] = (centroids[:, 1] + 180) % 360 - 180
    picked = rng.integers(0, len(centroids), b)
    points = centroids[picked] + rng.normal(0, 0.3, (b, 2))
    points[:, 1] = (points[:, 1] + 180) % 360 - 180
    # A cell follows borders: an image's cell is not always the one with the nearest centroid.
    true = picked.copy()
    d = haversine_km(points[:, None, 0], points[:, None, 1], centroids[None, :, 0], centroids[None, :, 1])
    d_true = d[np.arange(b), true]
    e = np.exp(-(d - d_true[:, None]) / tau)
    targets = e / e.sum(axis=1, keepdims=True)
    return {
        "tau_km": tau,
        "centroids": centroids.tolist(),
        "points": points.tolist(),
        "true": true.tolist(),
        "targets": targets.tolist(),
    }


def main():
    rng = np.random.default_rng(15)
    cases = [case(rng, tau, 40, 64) for tau in (75.0, 25.0, 500.0)]
    with open(sys.argv[1], "w") as f:
        json.dump({"cases": cases}, f)


if __name__ == "__main__":
    main()
