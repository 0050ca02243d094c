"""Python reference for benches/reverse_geocode.rs: nearest city by haversine, vectorised with
numpy over the same gazetteer and the same random points (brute force; no spatial index ships
with the reference stack).

Usage: .venv/bin/python scripts/bench_reverse_geocode.py CITIES_TSV N SEED
Prints one line: `lookups_per_s <float>`.
"""
import sys
import time

import numpy as np

path, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = [line.rstrip("\n").split("\t") for line in open(path, encoding="utf-8").readlines()[1:]]
lat = np.radians(np.array([float(r[5]) for r in rows]))
lon = np.radians(np.array([float(r[6]) for r in rows]))
rng = np.random.default_rng(seed)
qlat = np.arcsin(rng.uniform(-1, 1, n))
qlon = np.radians(rng.uniform(-180, 180, n))
start = time.perf_counter()
for a, b in zip(qlat, qlon):
    h = np.sin((lat - a) / 2) ** 2 + np.cos(a) * np.cos(lat) * np.sin((lon - b) / 2) ** 2
    int(np.argmin(h))
print(f"lookups_per_s {n / (time.perf_counter() - start):.1f}")
