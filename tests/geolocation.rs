//! Zero-shot geolocation: metrics against an independent Python computation, the hierarchy
//! where the answer is known (a stand-in text encoder), its edges, and an end-to-end
//! evaluation on the shared IM2GPS3K sample with the tiny model.

mod common;
use common::*;
use streetclip::eval::geolocate::{GeoConfig, Geolocator, TextEncoder};
use streetclip::eval::metrics::geo_metrics;
use streetclip::geo::{haversine_km, Gazetteer};
use tch::{Kind, Tensor};

#[test]
fn metrics_match_an_independent_python_computation() {
    let text = std::fs::read_to_string(fixture("geo_metrics.json")).unwrap();
    let f: serde_json::Value = serde_json::from_str(&text).unwrap();
    let errors: Vec<f64> = f["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let v: Vec<f64> = p.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            haversine_km(v[0], v[1], v[2], v[3])
        })
        .collect();
    for (ours, theirs) in errors.iter().zip(f["errors_km"].as_array().unwrap()) {
        assert!((ours - theirs.as_f64().unwrap()).abs() < 1e-9);
    }
    let correct: Vec<Option<bool>> = f["country_correct"].as_array().unwrap().iter().map(|c| c.as_bool()).collect();
    let m = serde_json::to_value(geo_metrics(&errors, &correct)).unwrap();
    let e = &f["expected"];
    assert_eq!(m["n"], e["n"]);
    for t in ["1", "25", "200", "750", "2500"] {
        assert!((m["within_km"][t].as_f64().unwrap() - e["within_km"][t].as_f64().unwrap()).abs() < 1e-9, "{t}");
    }
    for k in ["median_km", "mean_km", "country_accuracy", "geoscore"] {
        assert!((m[k].as_f64().unwrap() - e[k].as_f64().unwrap()).abs() < 1e-6, "{k}: {} vs {}", m[k], e[k]);
    }
}

/// A text encoder where a prompt's embedding is the one-hot of the first known name it
/// mentions, so an image "looks like" exactly the places we say.
struct OneHot {
    names: Vec<String>,
}

impl TextEncoder for OneHot {
    fn encode(&self, texts: &[String]) -> anyhow::Result<Tensor> {
        let d = self.names.len() as i64 + 1;
        let rows: Vec<Tensor> = texts
            .iter()
            .map(|t| {
                // City prompts read "from {city}, ..."; country prompts end "in {country}.".
                let i = self.names.iter().position(|n| t.contains(&format!("from {n},")) || t.ends_with(&format!("in {n}."))).map_or(d - 1, |i| i as i64);
                Tensor::zeros([d], (Kind::Float, tch::Device::Cpu)).index_fill(0, &Tensor::from_slice(&[i]), 1.0)
            })
            .collect();
        Ok(Tensor::stack(&rows, 0))
    }
    fn scale(&self) -> f64 {
        100.0
    }
}

fn image_like(enc: &OneHot, names: &[&str]) -> Tensor {
    let d = enc.names.len() as i64 + 1;
    let mut v = vec![0f32; d as usize];
    for n in names {
        v[enc.names.iter().position(|x| x == n).unwrap()] = 1.0;
    }
    streetclip::model::normalize(&Tensor::from_slice(&v).view([1, d]))
}

#[test]
fn the_hierarchy_finds_the_known_answer() {
    let g = Gazetteer::bundled().unwrap();
    let enc = OneHot { names: vec!["France".into(), "Japan".into(), "Lyon".into(), "Osaka".into(), "Fiji".into(), "Suva".into()] };
    let cfg = GeoConfig { countries: Some(vec!["FR".into(), "JP".into(), "FJ".into()]), ..GeoConfig::default() };
    let locator = Geolocator::new(&enc, &g, cfg).unwrap();
    let guess = &locator.locate(&image_like(&enc, &["Japan", "Osaka"])).unwrap()[0];
    assert_eq!((guess.country_code.as_str(), guess.city.as_deref()), ("JP", Some("Osaka")));
    let osaka = g.city(g.country("JP").unwrap(), None, "Osaka").unwrap();
    assert_eq!((guess.lat, guess.lon), (g.cities[osaka].lat, g.cities[osaka].lon));
    assert!(guess.top_countries[0].probability > 0.99);
    // The country decides first: Lyon's look does not pull a Japanese image to France.
    let guess = &locator.locate(&image_like(&enc, &["Japan", "Lyon"])).unwrap()[0];
    assert_eq!(guess.country_code, "JP");
    // Across the antimeridian: a truth just east of it, the guess Suva just west of it.
    let guess = &locator.locate(&image_like(&enc, &["Fiji", "Suva"])).unwrap()[0];
    assert_eq!(guess.city.as_deref(), Some("Suva"));
    assert!(haversine_km(-16.5, -179.9, guess.lat, guess.lon) < 300.0);
}

#[test]
fn edges_single_candidate_ties_and_countries_without_cities() {
    let g = Gazetteer::bundled().unwrap();
    let enc = OneHot { names: vec!["France".into(), "Japan".into()] };
    // One candidate country: always chosen, probability 1.
    let one = Geolocator::new(&enc, &g, GeoConfig { countries: Some(vec!["FR".into()]), ..GeoConfig::default() }).unwrap();
    let guess = &one.locate(&image_like(&enc, &["Japan"])).unwrap()[0];
    assert_eq!(guess.country_code, "FR");
    assert!((guess.top_countries[0].probability - 1.0).abs() < 1e-12);
    // A tie between countries keeps the candidate order.
    let two = Geolocator::new(&enc, &g, GeoConfig { countries: Some(vec!["JP".into(), "FR".into()]), ..GeoConfig::default() }).unwrap();
    assert_eq!(two.locate(&image_like(&enc, &["France", "Japan"])).unwrap()[0].country_code, "JP");
    // Tokelau has no city of 15,000 people: the guess is the country's reference point.
    let tk = Geolocator::new(&enc, &g, GeoConfig { countries: Some(vec!["Tokelau".into(), "FR".into()]), ..GeoConfig::default() }).unwrap();
    let guess = &tk.locate(&image_like(&enc, &[])).unwrap()[0];
    assert_eq!(guess.country_code, "TK", "tie: first candidate");
    assert!(guess.city.is_none() && guess.top_cities.is_empty());
    let c = &g.countries[g.country("TK").unwrap()];
    assert_eq!((guess.lat, guess.lon), (c.lat, c.lon));
    // A country with neither cities nor coordinates cannot be a candidate.
    assert!(Geolocator::new(&enc, &g, GeoConfig { countries: Some(vec!["Bouvet Island".into()]), ..GeoConfig::default() }).is_err());
    assert!(Geolocator::new(&enc, &g, GeoConfig { countries: Some(vec!["Atlantis".into()]), ..GeoConfig::default() }).is_err());
}

#[test]
fn evaluation_end_to_end_on_im2gps3k_sample() {
    let tmp = tmpdir();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_streetclip"))
        .args(["eval", "geo", "--model"])
        .arg(fixture("tiny-p14-336"))
        .arg("--manifest")
        .arg(im2gps3k_sample().join("meta.csv"))
        .arg("--out")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metrics: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tmp.path().join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["n"], 300);
    let within: Vec<f64> = ["1", "25", "200", "750", "2500"].iter().map(|t| metrics["within_km"][t].as_f64().unwrap()).collect();
    assert!(within.windows(2).all(|w| w[0] <= w[1]), "cumulative: {within:?}");
    let csv = std::fs::read_to_string(tmp.path().join("predictions.csv")).unwrap();
    assert!(csv.starts_with("image,lat,lon,pred_lat,pred_lon,pred_country,pred_region,pred_city,true_country,error_km"));
    assert_eq!(csv.lines().count(), 301);
    assert!(std::fs::read_to_string(tmp.path().join("report.md")).unwrap().contains("within 2500 km"));
}
