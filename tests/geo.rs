//! Gazetteer, haversine, reverse geocoding and geocells.

mod common;
use common::*;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use streetclip::geo::{haversine_km, Gazetteer, EARTH_RADIUS_KM};

#[test]
fn haversine_known_distances() {
    let deg = 2.0 * std::f64::consts::PI * EARTH_RADIUS_KM / 360.0;
    assert!((haversine_km(0.0, 0.0, 0.0, 1.0) - deg).abs() < 1e-9);
    assert!(
        (haversine_km(0.0, 179.5, 0.0, -179.5) - deg).abs() < 1e-9,
        "across the antimeridian"
    );
    assert!(
        (haversine_km(90.0, 0.0, -90.0, 0.0) - std::f64::consts::PI * EARTH_RADIUS_KM).abs() < 1e-6
    );
    assert!(
        (haversine_km(89.0, 0.0, 89.0, 180.0) - 2.0 * deg).abs() < 1e-9,
        "over the pole"
    );
    assert_eq!(haversine_km(48.85, 2.35, 48.85, 2.35), 0.0);
    // Paris - London, 343.5 km by the same formula with R = 6371 km (e.g. movable-type.co.uk).
    assert!((haversine_km(48.8566, 2.3522, 51.5074, -0.1278) - 343.5).abs() < 0.1);
}

#[test]
fn loads_quickly_with_everything_in_it() {
    let start = std::time::Instant::now();
    let g = Gazetteer::bundled().unwrap();
    let took = start.elapsed();
    assert!(g.countries.len() >= 245, "{}", g.countries.len());
    assert!(g.regions.len() >= 3500);
    assert!(g.cities.len() >= 30_000);
    assert!(took.as_secs_f64() < 1.0, "loading took {took:?}");
}

#[test]
fn country_lookup_by_code_name_and_alias() {
    let g = Gazetteer::bundled().unwrap();
    let us = g.country("US").unwrap();
    for name in [
        "us",
        "USA",
        "United States",
        "united states of america",
        "the United States",
    ] {
        assert_eq!(g.country(name), Some(us), "{name}");
    }
    assert_eq!(g.countries[us].in_sentence(), "the United States");
    let nl = g.country("NLD").unwrap();
    assert_eq!(g.country("The Netherlands"), Some(nl));
    assert_eq!(g.countries[nl].in_sentence(), "the Netherlands");
    let ci = g.country("CI").unwrap();
    assert_eq!(g.country("Côte d'Ivoire"), g.country("cote d ivoire"));
    assert_eq!(g.country("Ivory Coast"), Some(ci));
    assert_eq!(
        g.countries[g.country("France").unwrap()].in_sentence(),
        "France"
    );
    assert_eq!(g.country("UK"), g.country("GB"));
    assert_eq!(g.country("Atlantis"), None);
}

#[test]
fn region_and_city_lookup() {
    let g = Gazetteer::bundled().unwrap();
    let br = g.country("BR").unwrap();
    let sp_region = g.region(br, "Sao Paulo").unwrap();
    let sp = g.city(br, Some(sp_region), "sao paulo").unwrap();
    assert_eq!(g.cities[sp].name, "São Paulo");
    assert_eq!(
        g.regions[g.cities[sp].region.unwrap()].name,
        g.regions[sp_region].name
    );
    let us = g.country("US").unwrap();
    // Several Springfields: the most populous wins without a region; the region picks one.
    let il = g.region(us, "Illinois").unwrap();
    let springfield_il = g.city(us, Some(il), "Springfield").unwrap();
    assert_eq!(g.cities[springfield_il].region, Some(il));
    let largest = g.largest_cities(us, 3);
    assert_eq!(g.cities[largest[0]].name, "New York City");
}

fn brute_force(g: &Gazetteer, lat: f64, lon: f64) -> (usize, f64) {
    g.cities
        .iter()
        .enumerate()
        .map(|(i, c)| (i, haversine_km(lat, lon, c.lat, c.lon)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap()
}

#[test]
fn reverse_geocoding_equals_brute_force() {
    let g = Gazetteer::bundled().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut points: Vec<(f64, f64)> = (0..3000)
        .map(|_| {
            (
                rng.random_range(-1.0f64..1.0).asin().to_degrees(),
                rng.random_range(-180.0..180.0),
            )
        })
        .collect();
    // The antimeridian (Fiji, Chukotka) and the poles.
    points.extend((0..500).map(|i| {
        (
            rng.random_range(-70.0..70.0),
            if i % 2 == 0 { 179.99 } else { -179.99 },
        )
    }));
    points.extend((0..200).map(|i| {
        (
            if i % 2 == 0 { 89.9 } else { -89.9 },
            rng.random_range(-180.0..180.0),
        )
    }));
    points.extend([
        (-17.8, 179.9),
        (-17.8, -179.9),
        (65.0, -179.0),
        (90.0, 0.0),
        (-90.0, 0.0),
    ]);
    for (lat, lon) in points {
        let ours = g.nearest_city(lat, lon);
        let (best, best_km) = brute_force(g, lat, lon);
        let ours_km = haversine_km(lat, lon, g.cities[ours].lat, g.cities[ours].lon);
        // Ties between equidistant cities may resolve either way; the distance must be minimal.
        assert!(
            ours == best || (ours_km - best_km).abs() < 1e-6,
            "({lat}, {lon}): {} at {ours_km} km vs {} at {best_km} km",
            g.cities[ours].name,
            g.cities[best].name
        );
    }
}

#[test]
fn reverse_geocoding_known_places() {
    let g = Gazetteer::bundled().unwrap();
    let paris = &g.cities[g.nearest_city(48.8566, 2.3522)];
    assert_eq!(
        (
            paris.name.as_str(),
            g.countries[paris.country].iso2.as_str()
        ),
        ("Paris", "FR")
    );
    let suva = &g.cities[g.nearest_city(-18.14, 178.44)];
    assert_eq!(g.countries[suva.country].iso2, "FJ");
}

/// `streetclip geocells` on the IM2GPS3K sample's coordinates: every photo in one cell, cells
/// merged up to the minimum, the JSON names each cell's country and regions.
#[test]
fn geocells_of_a_manifest_cover_every_photo() {
    let tmp = tmpdir();
    let out = tmp.path().join("cells.json");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_streetclip"))
        .args([
            "geocells",
            "--min-samples",
            "5",
            "--max-samples",
            "40",
            "--manifest",
        ])
        .arg(im2gps3k_sample().join("meta.csv"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("from 300 samples"), "{stdout}");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let cells = json["cells"].as_array().unwrap();
    let total: u64 = cells.iter().map(|c| c["samples"].as_u64().unwrap()).sum();
    assert_eq!(total, 300);
    assert!(
        cells.iter().all(|c| c["samples"].as_u64().unwrap() >= 5),
        "merged up to the minimum"
    );
    assert!(cells
        .iter()
        .all(|c| !c["regions"].as_array().unwrap().is_empty() || c["name"] == c["country"]));
    assert_eq!(json["sizes"]["min_samples"], 5);
}

#[test]
fn smoothed_geocell_targets_match_an_independent_python_computation() {
    let tmp = tmpdir();
    let file = tmp.path().join("targets.json");
    run_python([
        root().join("scripts/geocell_targets.py").into_os_string(),
        file.clone().into_os_string(),
    ]);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let matrix = |v: &serde_json::Value| -> tch::Tensor {
        let rows: Vec<Vec<f64>> = serde_json::from_value(v.clone()).unwrap();
        let (n, d) = (rows.len() as i64, rows[0].len() as i64);
        tch::Tensor::from_slice(&rows.concat()).view([n, d])
    };
    let cases = json["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let tau = case["tau_km"].as_f64().unwrap();
        let truth: Vec<i64> = serde_json::from_value(case["true"].clone()).unwrap();
        let expected = matrix(&case["targets"]);
        let ours = streetclip::geo::cell_targets::smoothed_targets(
            &matrix(&case["points"]),
            &tch::Tensor::from_slice(&truth),
            &matrix(&case["centroids"]),
            tau,
        );
        let d = max_diff(&ours, &expected);
        // Spread over the cells, not one-hot: the comparison tests the smoothing itself.
        let shared = Vec::<f64>::try_from(expected.max_dim(1, false).0).unwrap();
        eprintln!(
            "tau {tau} km: max |diff| {d:.1e}; smallest top target {:.3}",
            shared.iter().cloned().fold(1.0, f64::min)
        );
        assert!(shared.iter().any(|&m| m < 0.9), "tau {tau}: no smoothing");
        assert!(d <= 1e-6, "tau {tau} km: {d:e}");
    }
}
