//! Zero-shot geolocation: metrics against an independent Python computation, the hierarchy
//! where the answer is known (a stand-in text encoder), its edges, and an end-to-end
//! evaluation on the shared IM2GPS3K sample with the tiny model.

mod common;
use common::*;
use streetclip::config::GeoConfig;
use streetclip::encode::TextEncoder;
use streetclip::eval::geolocate::Geolocator;
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
            let v: Vec<f64> = p
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            haversine_km(v[0], v[1], v[2], v[3])
        })
        .collect();
    for (ours, theirs) in errors.iter().zip(f["errors_km"].as_array().unwrap()) {
        assert!((ours - theirs.as_f64().unwrap()).abs() < 1e-9);
    }
    let correct: Vec<Option<bool>> = f["country_correct"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_bool())
        .collect();
    let m = serde_json::to_value(geo_metrics(&errors, &correct)).unwrap();
    let e = &f["expected"];
    assert_eq!(m["n"], e["n"]);
    for t in ["1", "25", "200", "750", "2500"] {
        assert!(
            (m["within_km"][t].as_f64().unwrap() - e["within_km"][t].as_f64().unwrap()).abs()
                < 1e-9,
            "{t}"
        );
    }
    for k in ["median_km", "mean_km", "country_accuracy", "geoscore"] {
        assert!(
            (m[k].as_f64().unwrap() - e[k].as_f64().unwrap()).abs() < 1e-6,
            "{k}: {} vs {}",
            m[k],
            e[k]
        );
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
                let i = self
                    .names
                    .iter()
                    .position(|n| {
                        t.contains(&format!("from {n},")) || t.ends_with(&format!("in {n}."))
                    })
                    .map_or(d - 1, |i| i as i64);
                Tensor::zeros([d], (Kind::Float, tch::Device::Cpu)).index_fill(
                    0,
                    &Tensor::from_slice(&[i]),
                    1.0,
                )
            })
            .collect();
        Ok(Tensor::stack(&rows, 0))
    }
    fn scale(&self) -> f64 {
        100.0
    }
    fn dim(&self) -> i64 {
        self.names.len() as i64 + 1
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
    let enc = OneHot {
        names: vec![
            "France".into(),
            "Japan".into(),
            "Lyon".into(),
            "Osaka".into(),
            "Fiji".into(),
            "Suva".into(),
        ],
    };
    let cfg = GeoConfig {
        countries: Some(vec!["FR".into(), "JP".into(), "FJ".into()]),
        ..GeoConfig::default()
    };
    let locator = Geolocator::new(&enc, g, cfg).unwrap();
    let guess = &locator
        .locate(&image_like(&enc, &["Japan", "Osaka"]))
        .unwrap()[0];
    assert_eq!(
        (guess.country_code.as_str(), guess.city.as_deref()),
        ("JP", Some("Osaka"))
    );
    let osaka = g.city(g.country("JP").unwrap(), None, "Osaka").unwrap();
    assert_eq!(
        (guess.lat, guess.lon),
        (g.cities[osaka].lat, g.cities[osaka].lon)
    );
    assert!(guess.top_countries[0].probability > 0.99);
    // The country decides first: Lyon's look does not pull a Japanese image to France.
    let guess = &locator
        .locate(&image_like(&enc, &["Japan", "Lyon"]))
        .unwrap()[0];
    assert_eq!(guess.country_code, "JP");
    // Across the antimeridian: a truth just east of it, the guess Suva just west of it.
    let guess = &locator
        .locate(&image_like(&enc, &["Fiji", "Suva"]))
        .unwrap()[0];
    assert_eq!(guess.city.as_deref(), Some("Suva"));
    assert!(haversine_km(-16.5, -179.9, guess.lat, guess.lon) < 300.0);
}

#[test]
fn edges_single_candidate_ties_and_countries_without_cities() {
    let g = Gazetteer::bundled().unwrap();
    let enc = OneHot {
        names: vec!["France".into(), "Japan".into()],
    };
    // One candidate country: always chosen, probability 1.
    let one = Geolocator::new(
        &enc,
        g,
        GeoConfig {
            countries: Some(vec!["FR".into()]),
            ..GeoConfig::default()
        },
    )
    .unwrap();
    let guess = &one.locate(&image_like(&enc, &["Japan"])).unwrap()[0];
    assert_eq!(guess.country_code, "FR");
    assert!((guess.top_countries[0].probability - 1.0).abs() < 1e-12);
    // A tie between countries keeps the candidate order.
    let two = Geolocator::new(
        &enc,
        g,
        GeoConfig {
            countries: Some(vec!["JP".into(), "FR".into()]),
            ..GeoConfig::default()
        },
    )
    .unwrap();
    assert_eq!(
        two.locate(&image_like(&enc, &["France", "Japan"])).unwrap()[0].country_code,
        "JP"
    );
    // Tokelau has no city of 15,000 people: the guess is the country's reference point.
    let tk = Geolocator::new(
        &enc,
        g,
        GeoConfig {
            countries: Some(vec!["Tokelau".into(), "FR".into()]),
            ..GeoConfig::default()
        },
    )
    .unwrap();
    let guess = &tk.locate(&image_like(&enc, &[])).unwrap()[0];
    assert_eq!(guess.country_code, "TK", "tie: first candidate");
    assert!(guess.city.is_none() && guess.top_cities.is_empty());
    let c = &g.countries[g.country("TK").unwrap()];
    assert_eq!((guess.lat, guess.lon), (c.lat, c.lon));
    // A country with neither cities nor coordinates cannot be a candidate.
    assert!(Geolocator::new(
        &enc,
        g,
        GeoConfig {
            countries: Some(vec!["Bouvet Island".into()]),
            ..GeoConfig::default()
        }
    )
    .is_err());
    assert!(Geolocator::new(
        &enc,
        g,
        GeoConfig {
            countries: Some(vec!["Atlantis".into()]),
            ..GeoConfig::default()
        }
    )
    .is_err());
}

fn eval_geo(
    models: &[std::path::PathBuf],
    out: &std::path::Path,
    cache: &std::path::Path,
    limit: Option<&str>,
) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_streetclip"));
    cmd.args(["eval", "geo"]).env("STREETCLIP_CACHE_DIR", cache);
    for m in models {
        cmd.arg("--model").arg(m);
    }
    if let Some(n) = limit {
        cmd.args(["--limit", n]);
    }
    cmd.arg("--manifest")
        .arg(im2gps3k_sample().join("meta.csv"))
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn png_size(path: &std::path::Path) -> (u32, u32) {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{} is not a readable PNG: {e}", path.display()));
    (img.width(), img.height())
}

#[test]
fn evaluation_end_to_end_on_im2gps3k_sample() {
    let tmp = tmpdir();
    let (out, cache) = (tmp.path().join("eval"), tmp.path().join("cache"));
    let first = eval_geo(&[fixture("tiny-p14-336")], &out, &cache, None);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["n"], 300);
    assert!(assert_rates_are_fractions("metrics.json", &metrics) >= 6);
    let within: Vec<f64> = ["1", "25", "200", "750", "2500"]
        .iter()
        .map(|t| metrics["within_km"][t].as_f64().unwrap())
        .collect();
    assert!(
        within.windows(2).all(|w| w[0] <= w[1]),
        "cumulative: {within:?}"
    );
    let csv = std::fs::read_to_string(out.join("predictions.csv")).unwrap();
    assert!(csv.starts_with(
        "image,lat,lon,pred_lat,pred_lon,pred_country,pred_region,pred_city,true_country,error_km"
    ));
    assert_eq!(csv.lines().count(), 301);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("within 2500 km") && report.contains("![map](map.png)"));
    assert_eq!(png_size(&out.join("error_curve.png")), (900, 560));
    assert_eq!(png_size(&out.join("map.png")), (1200, 660));
    // A second run (on the first 40 images) takes every candidate embedding from the cache and
    // makes the same guesses.
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(stderr.contains("0 prompt lists from the cache"), "{stderr}");
    let second = eval_geo(
        &[fixture("tiny-p14-336")],
        &tmp.path().join("again"),
        &cache,
        Some("40"),
    );
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains(" 0 encoded"), "{stderr}");
    let again = std::fs::read_to_string(tmp.path().join("again/predictions.csv")).unwrap();
    assert_eq!(
        again.lines().collect::<Vec<_>>(),
        csv.lines().take(41).collect::<Vec<_>>()
    );
}

#[test]
fn two_models_are_compared_in_one_report() {
    let tmp = tmpdir();
    // The second model: the first with its image tower perturbed ("fine-tuned").
    let tuned = tmp.path().join("tuned");
    let clip = streetclip::formats::pretrained::Pretrained::load(
        &fixture("tiny-p14-336"),
        tch::Device::Cpu,
    )
    .unwrap();
    tch::manual_seed(0);
    tch::no_grad(|| {
        for (name, v) in clip.model.vs.variables() {
            if name.starts_with("vision_model.encoder") {
                let _ = v.shallow_clone().g_add_(&(v.randn_like() * 0.05));
            }
        }
    });
    clip.save(&tuned).unwrap();
    let out = tmp.path().join("cmp");
    let run = eval_geo(
        &[fixture("tiny-p14-336"), tuned],
        &out,
        &tmp.path().join("cache"),
        Some("24"),
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // Same text tower: the second model finds at least the country prompts in the cache.
    let stderr = String::from_utf8_lossy(&run.stderr);
    let hits: Vec<usize> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("text embeddings: "))
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(hits.len() == 2 && hits[0] == 0 && hits[1] >= 1, "{stderr}");
    let cmp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("comparison.json")).unwrap())
            .unwrap();
    assert!(assert_rates_are_fractions("comparison.json", &cmp) >= 12);
    // Thresholds in numeric order, with several models too.
    let text = std::fs::read_to_string(out.join("comparison.json")).unwrap();
    let at = |t: &str| text.find(&format!("\"{t}\":")).unwrap();
    assert!(
        at("1") < at("25")
            && at("25") < at("200")
            && at("200") < at("750")
            && at("750") < at("2500"),
        "{text}"
    );
    for name in ["tiny-p14-336", "tuned"] {
        let own: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(name).join("metrics.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(cmp[name]["metrics"], own, "{name}");
        assert_eq!(own["n"], 24);
        assert!(out.join(name).join("map.png").is_file());
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("| metric | `tiny-p14-336` | `tuned` | Δ (2nd − 1st) |"),
        "{report}"
    );
    let a = cmp["tiny-p14-336"]["metrics"]["mean_km"].as_f64().unwrap();
    let b = cmp["tuned"]["metrics"]["mean_km"].as_f64().unwrap();
    assert_ne!(a, b, "the perturbed model guesses differently");
    assert!(
        report.contains(&format!(
            "| mean error | {a:.0} km | {b:.0} km | {:+.0} km |",
            b - a
        )),
        "{report}"
    );
    png_size(&out.join("error_curve.png"));
}

/// Counts calls, so cache hits are visible.
struct Counting {
    calls: std::cell::Cell<usize>,
}

impl TextEncoder for Counting {
    fn encode(&self, texts: &[String]) -> anyhow::Result<Tensor> {
        self.calls.set(self.calls.get() + 1);
        let lens: Vec<f32> = texts.iter().flat_map(|t| [t.len() as f32, 1.0]).collect();
        Ok(streetclip::model::normalize(
            &Tensor::from_slice(&lens).view([texts.len() as i64, 2]),
        ))
    }
    fn scale(&self) -> f64 {
        1.0
    }
    fn dim(&self) -> i64 {
        2
    }
}

fn counting_and_two_prompts() -> (Counting, Vec<String>) {
    let inner = Counting {
        calls: Default::default(),
    };
    let prompts = vec![
        "A Street View photo in France.".to_string(),
        "A Street View photo in Japan.".to_string(),
    ];
    (inner, prompts)
}

#[test]
fn text_cache_serves_repeats_and_keys_on_model_and_prompts() {
    use streetclip::eval::text_cache::CachedText;
    let tmp = tmpdir();
    let (inner, prompts) = counting_and_two_prompts();
    let cached = CachedText::new(&inner, "model-a".into(), Some(tmp.path()));
    let first = cached.encode(&prompts).unwrap();
    let again = cached.encode(&prompts).unwrap();
    assert_eq!(inner.calls.get(), 1);
    assert_eq!(max_diff(&first, &again), 0.0);
    // Other prompts, or the same prompts for another model, are encoded afresh.
    let _ = cached.encode(&prompts[..1]).unwrap();
    assert_eq!(inner.calls.get(), 2);
    let other_model = CachedText::new(&inner, "model-b".into(), Some(tmp.path()));
    let _ = other_model.encode(&prompts).unwrap();
    assert_eq!(inner.calls.get(), 3);
    // A damaged entry is recomputed and replaced, not trusted.
    let dir = tmp.path().join("text-embeddings");
    for entry in std::fs::read_dir(&dir).unwrap() {
        std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
    }
    let fresh = CachedText::new(&inner, "model-a".into(), Some(tmp.path()));
    assert_eq!(max_diff(&fresh.encode(&prompts).unwrap(), &first), 0.0);
    assert_eq!((inner.calls.get(), fresh.misses.get()), (4, 1));
    assert_eq!(max_diff(&fresh.encode(&prompts).unwrap(), &first), 0.0);
    assert_eq!((inner.calls.get(), fresh.hits.get()), (4, 1));
    // Without a folder nothing is cached.
    let off = CachedText::new(&inner, "model-a".into(), None);
    let _ = off.encode(&prompts).unwrap();
    let _ = off.encode(&prompts).unwrap();
    assert_eq!(inner.calls.get(), 6);
}

#[test]
fn the_model_fingerprint_follows_the_text_tower_only() {
    use streetclip::eval::text_cache::text_fingerprint;
    let clip = streetclip::formats::pretrained::Pretrained::load(
        &fixture("tiny-p32-224"),
        tch::Device::Cpu,
    )
    .unwrap();
    let before = text_fingerprint(&clip).unwrap();
    assert_eq!(before, text_fingerprint(&clip).unwrap());
    let vars = clip.model.vs.variables();
    tch::no_grad(|| {
        let _ = vars["vision_model.post_layernorm.weight"]
            .shallow_clone()
            .g_add_scalar_(1.0);
    });
    assert_eq!(
        before,
        text_fingerprint(&clip).unwrap(),
        "vision weights do not change text embeddings"
    );
    tch::no_grad(|| {
        let _ = vars["text_model.final_layer_norm.bias"]
            .shallow_clone()
            .g_add_scalar_(1e-3);
    });
    assert_ne!(before, text_fingerprint(&clip).unwrap());
}

#[test]
fn geolocate_prints_places_and_fractions() {
    let images = im2gps3k_images(2);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_streetclip"))
        .args(["geolocate", "--json", "--model"])
        .arg(fixture("tiny-p14-336"))
        .args(&images)
        .env("STREETCLIP_CACHE_DIR", tmpdir().path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    for row in rows.as_array().unwrap() {
        let guess = &row["guess"];
        assert!(guess["country"].is_string() && guess["lat"].is_f64() && guess["lon"].is_f64());
        assert_eq!(guess["top_countries"].as_array().unwrap().len(), 3);
    }
    // Every listed candidate's probability is a fraction.
    let listed: usize = rows
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            ["top_countries", "top_regions", "top_cities"]
                .map(|k| r["guess"][k].as_array().unwrap().len())
        })
        .sum();
    assert!(listed >= 8);
    assert_eq!(
        assert_rates_are_fractions("geolocate --json", &rows),
        listed
    );
}

/// A geocell model over `cells` (name, centroid) whose head scores cell `i` by `logits[i]` for
/// every image, with an index of `index` (embedding, coordinates, cell).
fn geocell_model(
    cells: &[(&str, f64, f64)],
    logits: &[f32],
    index: &[(Vec<f32>, (f64, f64), usize)],
    scale: f64,
) -> streetclip::eval::geocell_locate::GeocellModel {
    use streetclip::eval::geocell_locate::{GeocellModel, RetrievalIndex};
    let d = index[0].0.len() as i64;
    let k = cells.len() as i64;
    let embeddings: Vec<f32> = index.iter().flat_map(|r| r.0.clone()).collect();
    GeocellModel {
        head: streetclip::formats::pretrained::ExportedHead {
            classes: cells.iter().map(|c| c.0.to_string()).collect(),
            weight: Tensor::zeros([k, d], (Kind::Float, tch::Device::Cpu)),
            bias: Tensor::from_slice(logits),
        },
        cells: cells
            .iter()
            .map(|&(name, lat, lon)| streetclip::geo::geocells::Cell {
                name: name.into(),
                country: "Nigeria".into(),
                countries: vec![],
                regions: vec![name.into()],
                lat,
                lon,
                samples: 1,
            })
            .collect(),
        index: Some(RetrievalIndex::new(
            &Tensor::from_slice(&embeddings).view([index.len() as i64, d]),
            index.iter().map(|r| r.1).collect(),
            index.iter().map(|r| r.2).collect(),
            tch::Device::Cpu,
        )),
        scale,
    }
}

#[test]
fn refinement_finds_the_close_neighbour_in_a_large_cell() {
    use streetclip::config::RefineConfig;
    use streetclip::eval::geocell_locate::GeocellLocator;
    let g = Gazetteer::bundled().unwrap();
    let unit = |i: usize| {
        let mut v = vec![0f32; 4];
        v[i] = 1.0;
        v
    };
    // One large cell centred at (9, 8) whose training images lie far apart; the photo looks like
    // the one at (12.5, 4.5), 540 km from the centroid. A second, improbable cell elsewhere.
    let model = geocell_model(
        &[("North", 9.0, 8.0), ("South", 5.0, 7.0)],
        &[3.0, 0.0],
        &[
            (unit(0), (12.5, 4.5), 0),
            (unit(1), (6.0, 12.0), 0),
            (unit(2), (11.0, 13.0), 0),
            (unit(3), (5.2, 7.1), 1),
        ],
        100.0,
    );
    let truth = (12.45, 4.52);
    let photo = Tensor::from_slice(&[0.98f32, 0.1, 0.1, 0.1]);
    let photo = (&photo / photo.norm()).view([1, 4]);
    let locate = |refine: bool| {
        let cfg = RefineConfig {
            refine,
            top_cells: 2,
            neighbours: 4,
        };
        let guess = GeocellLocator::new(&model, g, cfg, 3)
            .unwrap()
            .locate(&photo)
            .unwrap()
            .remove(0);
        assert_eq!(guess.top_cells[0].label, "North");
        assert_eq!(guess.country_code, "NG");
        haversine_km(truth.0, truth.1, guess.lat, guess.lon)
    };
    let (centroid, refined) = (locate(false), locate(true));
    eprintln!("error at the centroid {centroid:.0} km, refined {refined:.1} km");
    assert!(centroid > 500.0, "{centroid}");
    assert!(refined < 10.0, "{refined}");
}

#[test]
fn the_index_search_is_exact_across_chunks_and_respects_the_cells() {
    use streetclip::eval::geocell_locate::RetrievalIndex;
    // More rows than one chunk of the search (65,536), in 7 cells.
    let n = 70_000i64;
    tch::manual_seed(3);
    let embeddings = Tensor::randn([n, 8], (Kind::Float, tch::Device::Cpu));
    let cells: Vec<usize> = (0..n as usize).map(|i| (i * 7919) % 7).collect();
    let index = RetrievalIndex::new(
        &embeddings,
        vec![(0.0, 0.0); n as usize],
        cells.clone(),
        tch::Device::Cpu,
    );
    let images = Tensor::randn([3, 8], (Kind::Float, tch::Device::Cpu));
    let allowed = Tensor::from_slice(&[
        true, false, false, false, false, false, true, // image 0: cells 0 and 6
        false, false, false, true, false, false, false, // image 1: cell 3
        true, true, true, true, true, true, true, // image 2: all
    ])
    .view([3, 7]);
    let (sims, rows) = index.nearest(&images, &allowed, 5);
    let full = images.matmul(&embeddings.tr());
    let cell_ids = Tensor::from_slice(&cells.iter().map(|&c| c as i64).collect::<Vec<_>>());
    let admitted = allowed.index_select(1, &cell_ids);
    let (want, want_rows) = full
        .masked_fill(&admitted.logical_not(), f64::NEG_INFINITY)
        .topk(5, 1, true, true);
    assert_eq!(max_diff(&sims, &want), 0.0);
    assert_eq!(
        Vec::<Vec<i64>>::try_from(rows).unwrap(),
        Vec::<Vec<i64>>::try_from(want_rows).unwrap()
    );
}

#[test]
fn a_tampered_text_cache_entry_is_recomputed_not_trusted() {
    use streetclip::eval::text_cache::CachedText;
    let tmp = tmpdir();
    let (inner, prompts) = counting_and_two_prompts();
    let truth = CachedText::new(&inner, "m".into(), Some(tmp.path()))
        .encode(&prompts)
        .unwrap();
    let entry = std::fs::read_dir(tmp.path().join("text-embeddings"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let good = std::fs::read(&entry).unwrap();
    let write = |t: Tensor| {
        streetclip::formats::tensor_io::write(&entry, &[("embeddings".to_string(), t)]).unwrap()
    };
    type Tampering<'a> = (&'a str, Box<dyn Fn() + 'a>);
    let tamperings: Vec<Tampering> = vec![
        ("NaN", Box::new(|| write(truth.full_like(f64::NAN)))),
        ("zeros", Box::new(|| write(truth.zeros_like()))),
        (
            "a wrong shape",
            Box::new(|| write(Tensor::ones([2, 3], (Kind::Float, tch::Device::Cpu)))),
        ),
        (
            "three flipped exponent bits",
            Box::new(|| {
                let mut bytes = good.clone();
                let n = bytes.len();
                // The last three floats' high bytes (little-endian): sign and exponent bits.
                for k in [1, 5, 9] {
                    bytes[n - k] ^= 0x08;
                }
                std::fs::write(&entry, bytes).unwrap();
            }),
        ),
    ];
    for (what, tamper) in tamperings {
        tamper();
        let calls = inner.calls.get();
        let cached = CachedText::new(&inner, "m".into(), Some(tmp.path()));
        let got = cached.encode(&prompts).unwrap();
        assert_eq!(max_diff(&got, &truth), 0.0, "{what}");
        assert_eq!(
            (inner.calls.get(), cached.misses.get()),
            (calls + 1, 1),
            "{what}: recomputed"
        );
        let reread = CachedText::new(&inner, "m".into(), Some(tmp.path()));
        assert_eq!(max_diff(&reread.encode(&prompts).unwrap(), &truth), 0.0);
        assert_eq!(reread.hits.get(), 1, "{what}: replaced by a good entry");
    }
}

/// A geocell export beside a copy of the tiny model: 2 cells, an index of 3 rows.
fn geocell_export(dir: &std::path::Path) {
    for entry in std::fs::read_dir(fixture("tiny-p32-224")).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    let d = 40;
    streetclip::formats::tensor_io::write(
        &dir.join("head.safetensors"),
        &[
            (
                "classifier_head.weight".into(),
                Tensor::zeros([2, d], (Kind::Float, tch::Device::Cpu)),
            ),
            (
                "classifier_head.bias".into(),
                Tensor::from_slice(&[1.0f32, 0.0]),
            ),
        ],
    )
    .unwrap();
    std::fs::write(
        dir.join("head.json"),
        r#"{"method": "geocells", "classes": ["Bayern, Germany", "Tokyo, Japan"]}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("geocells.json"),
        r#"{"cells": [
            {"name": "Bayern, Germany", "country": "Germany", "regions": ["Bayern"], "lat": 48.1, "lon": 11.6, "samples": 2},
            {"name": "Tokyo, Japan", "country": "Japan", "regions": ["Tokyo"], "lat": 35.7, "lon": 139.7, "samples": 1}]}"#,
    )
    .unwrap();
    write_index(
        dir,
        &[48.1, 11.6, 48.2, 11.5, 35.7, 139.7],
        &[0, 0, 1],
        None,
    );
}

fn write_index(dir: &std::path::Path, coords: &[f64], cells: &[i64], embedding: Option<f32>) {
    let n = cells.len() as i64;
    let e = Tensor::ones([n, 40], (Kind::Float, tch::Device::Cpu)) / (40f64).sqrt();
    let e = match embedding {
        Some(v) => e.index_fill(0, &Tensor::from_slice(&[1i64]), v as f64),
        None => e,
    };
    streetclip::formats::tensor_io::write(
        &dir.join("index.safetensors"),
        &[
            ("embeddings".into(), e.to_kind(Kind::Half)),
            ("coords".into(), Tensor::from_slice(coords).view([n, 2])),
            ("cells".into(), Tensor::from_slice(cells)),
        ],
    )
    .unwrap();
}

#[test]
fn a_damaged_geocell_export_is_an_error_naming_the_file_and_row() {
    use streetclip::eval::geocell_locate::GeocellModel;
    let tmp = tmpdir();
    let dir = tmp.path();
    geocell_export(dir);
    let clip = streetclip::formats::pretrained::Pretrained::load(dir, tch::Device::Cpu).unwrap();
    assert!(
        GeocellModel::read(dir, &clip).unwrap().is_some(),
        "the intact export reads"
    );
    let expect_error = |must: &[&str]| {
        let e = format!(
            "{:#}",
            GeocellModel::read(dir, &clip).err().expect("an error")
        );
        for m in must {
            assert!(e.contains(m), "`{m}` in: {e}");
        }
        geocell_export(dir);
    };
    let ok = [48.1, 11.6, 48.2, 11.5, 35.7, 139.7];
    write_index(
        dir,
        &[48.1, 11.6, f64::NAN, 11.5, 35.7, 139.7],
        &[0, 0, 1],
        None,
    );
    expect_error(&["index.safetensors", "row 1", "coords"]);
    write_index(
        dir,
        &[48.1, 11.6, 1000.0, 1000.0, 35.7, 139.7],
        &[0, 0, 1],
        None,
    );
    expect_error(&["index.safetensors", "row 1", "(1000, 1000)"]);
    write_index(dir, &ok, &[0, 0, 7], None);
    expect_error(&["index.safetensors", "row 2", "cell id 7"]);
    write_index(dir, &ok, &[0, 0, 1], Some(f32::NAN));
    expect_error(&["index.safetensors", "row 1", "embeddings", "not finite"]);
    let cells = std::fs::read_to_string(dir.join("geocells.json")).unwrap();
    std::fs::write(
        dir.join("geocells.json"),
        cells.replace("\"lat\": 35.7, \"lon\": 139.7", "\"lat\": 91, \"lon\": 540"),
    )
    .unwrap();
    expect_error(&["geocells.json", "cell 1 (Tokyo, Japan)", "(91, 540)"]);
    let head = dir.join("head.safetensors");
    streetclip::formats::tensor_io::write(
        &head,
        &[
            (
                "classifier_head.weight".into(),
                Tensor::zeros([2, 40], (Kind::Float, tch::Device::Cpu)),
            ),
            (
                "classifier_head.bias".into(),
                Tensor::from_slice(&[f32::NAN, 0.0]),
            ),
        ],
    )
    .unwrap();
    expect_error(&["head.safetensors", "not finite"]);
}

#[test]
fn a_geocell_guess_names_the_place_it_points_at() {
    use streetclip::config::RefineConfig;
    use streetclip::eval::geocell_locate::GeocellLocator;
    let g = Gazetteer::bundled().unwrap();
    // Both cells say Nigeria, but the first one's centroid lies at Niamey, in Niger.
    let mut model = geocell_model(
        &[("North", 13.51, 2.11), ("South", 6.45, 3.39)],
        &[3.0, 0.0],
        &[
            (vec![1.0, 0.0], (13.5, 2.1), 0),
            (vec![0.0, 1.0], (6.5, 3.4), 1),
        ],
        100.0,
    );
    let photo = Tensor::from_slice(&[1.0f32, 0.0]).view([1, 2]);
    let cfg = RefineConfig {
        refine: false,
        top_cells: 1,
        neighbours: 1,
    };
    let guess = GeocellLocator::new(&model, g, cfg.clone(), 3)
        .unwrap()
        .locate(&photo)
        .unwrap()
        .remove(0);
    assert_eq!(
        (guess.country.as_str(), guess.country_code.as_str()),
        ("Niger", "NE")
    );
    assert_eq!(guess.city.as_deref(), Some("Niamey"));
    assert_eq!(guess.top_countries[0].label, "Nigeria");
    let note = guess.note.expect("the contradiction is explained");
    assert!(
        note.contains("lies in Niger") && note.contains("Nigeria") && note.contains("North"),
        "{note}"
    );
    // A cell merged across a border ranks each country by its share of the cell's samples.
    use streetclip::geo::geocells::CountryShare;
    model.cells[0].countries = vec![
        CountryShare {
            country: "Niger".into(),
            samples: 30,
        },
        CountryShare {
            country: "Nigeria".into(),
            samples: 10,
        },
    ];
    let guess = GeocellLocator::new(&model, g, cfg, 3)
        .unwrap()
        .locate(&photo)
        .unwrap()
        .remove(0);
    // The head's softmax runs in float32.
    let p_north = 3f64.exp() / (3f64.exp() + 1.0);
    assert_eq!(guess.top_countries[0].label, "Niger");
    assert!((guess.top_countries[0].probability - 0.75 * p_north).abs() < 1e-6);
    assert!((guess.top_countries[1].probability - (0.25 * p_north + 1.0 - p_north)).abs() < 1e-6);
    assert!(guess.note.is_none(), "no contradiction: {:?}", guess.note);
}
