//! A collection with bad files in it: every good photo gets the answer it gets alone, every bad
//! one is named and left out, and the run succeeds (exit 0) unless nothing could be used (3).

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn streetclip(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_streetclip"))
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Three real photos with three bad files between them: truncated, empty, text named .jpg.
fn collection(dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let good = im2gps3k_images(3);
    let bytes = std::fs::read(&good[0]).unwrap();
    let bad = vec![
        dir.join("truncated.jpg"),
        dir.join("empty.jpg"),
        dir.join("notes.jpg"),
    ];
    std::fs::write(&bad[0], &bytes[..bytes.len() / 3]).unwrap();
    std::fs::write(&bad[1], b"").unwrap();
    std::fs::write(&bad[2], b"shopping list: bread, milk").unwrap();
    (good, bad)
}

fn interleaved(good: &[PathBuf], bad: &[PathBuf]) -> Vec<PathBuf> {
    good.iter()
        .zip(bad)
        .flat_map(|(g, b)| [b.clone(), g.clone()])
        .collect()
}

#[test]
fn predict_and_geolocate_keep_every_good_photo_and_name_the_bad_ones() {
    let tmp = tmpdir();
    let (good, bad) = collection(tmp.path());
    let all = interleaved(&good, &bad);
    let model = fixture("tiny-p14-336");
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"predict",
        &"--model",
        &model,
        &"--labels",
        &"France,Japan,Brazil",
        &"--json",
        &"--batch-size",
        &"2",
    ];
    args.extend(all.iter().map(|p| p as &dyn AsRef<std::ffi::OsStr>));
    let o = streetclip(&args);
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    let together = json(&o);
    assert!(stderr.contains("skipped 3 of 6 images"), "{stderr}");
    for b in &bad {
        assert!(
            stderr.contains(b.to_str().unwrap()),
            "{b:?} named: {stderr}"
        );
    }
    let rows = together.as_array().unwrap();
    assert_eq!(rows.len(), good.len());
    for (row, photo) in rows.iter().zip(&good) {
        assert_eq!(row["image"].as_str().unwrap(), photo.to_str().unwrap());
        let alone = json(&streetclip(&[
            &"predict",
            &"--model",
            &model,
            &"--labels",
            &"France,Japan,Brazil",
            &"--json",
            photo,
        ]));
        let (a, b) = (&row["ranking"], &alone[0]["ranking"]);
        for (x, y) in a.as_array().unwrap().iter().zip(b.as_array().unwrap()) {
            assert_eq!(x["label"], y["label"]);
            let d = (x["probability"].as_f64().unwrap() - y["probability"].as_f64().unwrap()).abs();
            assert!(d <= 1e-6, "{photo:?}: {d}");
        }
    }
    // geolocate: the same photos, the same guesses as one at a time.
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
        vec![&"geolocate", &"--model", &model, &"--json"];
    args.extend(all.iter().map(|p| p as &dyn AsRef<std::ffi::OsStr>));
    let o = streetclip(&args);
    assert!(String::from_utf8_lossy(&o.stderr).contains("skipped 3 of 6 images"));
    let guesses = json(&o);
    assert_eq!(guesses.as_array().unwrap().len(), good.len());
    let alone = json(&streetclip(&[
        &"geolocate",
        &"--model",
        &model,
        &"--json",
        &good[1],
    ]));
    // Batched with others or alone: the same place, probabilities to float rounding.
    assert_close_json(&guesses[1]["guess"], &alone[0]["guess"], 1e-6);
    // Only bad files: nothing produced, exit status 3.
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
        vec![&"predict", &"--model", &model, &"--labels", &"France,Japan"];
    args.extend(bad.iter().map(|p| p as &dyn AsRef<std::ffi::OsStr>));
    let o = streetclip(&args);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn eval_geo_scores_the_good_photos_and_lists_the_bad_in_skipped_csv() {
    let tmp = tmpdir();
    let (good, bad) = collection(tmp.path());
    let manifest = tmp.path().join("m.csv");
    let mut text = String::from("image,lat,lon\n");
    for (i, p) in interleaved(&good, &bad).iter().enumerate() {
        text += &format!("{},{}.5,{}.25\n", p.display(), 10 + i, 20 + i);
    }
    std::fs::write(&manifest, text).unwrap();
    let model = fixture("tiny-p14-336");
    let out = tmp.path().join("eval");
    let o = streetclip(&[
        &"eval",
        &"geo",
        &"--model",
        &model,
        &"--manifest",
        &manifest,
        &"--out",
        &out,
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("skipped 3 of 6 images"), "{stderr}");
    let mut skipped = csv::Reader::from_path(out.join("skipped.csv")).unwrap();
    let rows: Vec<csv::StringRecord> = skipped.records().map(|r| r.unwrap()).collect();
    let names: Vec<&str> = rows.iter().map(|r| r.get(0).unwrap()).collect();
    assert_eq!(names.len(), 3);
    for b in &bad {
        assert!(names.contains(&b.to_str().unwrap()), "{names:?}");
    }
    let mut predictions = csv::Reader::from_path(out.join("predictions.csv")).unwrap();
    assert_eq!(predictions.records().count(), good.len());
}

/// Equal JSON, numbers to `tol`.
fn assert_close_json(a: &serde_json::Value, b: &serde_json::Value, tol: f64) {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let d = (x.as_f64().unwrap() - y.as_f64().unwrap()).abs();
            assert!(d <= tol, "{x} vs {y}");
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len());
            x.iter()
                .zip(y)
                .for_each(|(x, y)| assert_close_json(x, y, tol));
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>());
            x.iter().for_each(|(k, v)| assert_close_json(v, &y[k], tol));
        }
        _ => assert_eq!(a, b),
    }
}

#[test]
fn geolocate_restricts_candidates_like_eval_geo() {
    let model = fixture("tiny-p14-336");
    let photo = im2gps3k_images(1).remove(0);
    let guess = |extra: &[&str]| {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
            vec![&"geolocate", &"--model", &model, &"--json"];
        args.extend(extra.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>));
        args.push(&photo);
        json(&streetclip(&args))[0]["guess"].clone()
    };
    let labels = |g: &serde_json::Value| -> Vec<String> {
        g["top_countries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["label"].as_str().unwrap().to_string())
            .collect()
    };
    let two = guess(&["--countries", "FR,Japan,BR", "--top-k", "2"]);
    assert_eq!(labels(&two).len(), 2);
    for l in labels(&two) {
        assert!(["France", "Japan", "Brazil"].contains(&l.as_str()), "{l}");
    }
    assert!(["France", "Japan", "Brazil"].contains(&two["country"].as_str().unwrap()));
    let one = guess(&["--countries", "FR,Japan,BR", "--set", "geo.top_k=1"]);
    assert_eq!(labels(&one), labels(&two)[..1]);
    // The same restriction from a config file.
    let tmp = tmpdir();
    let cfg = tmp.path().join("geo.yaml");
    std::fs::write(&cfg, "geo: {countries: [FR, Japan, BR], top_k: 2}\n").unwrap();
    let from_config = guess(&["--config", cfg.to_str().unwrap()]);
    assert_close_json(&from_config, &two, 0.0);
}

#[test]
fn geolocate_writes_jsonl_csv_and_geojson_that_other_tools_read() {
    let tmp = tmpdir();
    let model = fixture("tiny-p14-336");
    let photos = im2gps3k_images(4);
    let run = |extra: &[&dyn AsRef<std::ffi::OsStr>]| {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"geolocate", &"--model", &model];
        args.extend_from_slice(extra);
        args.extend(photos.iter().map(|p| p as &dyn AsRef<std::ffi::OsStr>));
        streetclip(&args)
    };
    let printed = json(&run(&[&"--json"]));
    let out = |ext: &str| tmp.path().join(format!("guesses.{ext}"));
    for (format, file) in [
        ("jsonl", out("jsonl")),
        ("csv", out("csv")),
        ("geojson", out("geojson")),
    ] {
        let o = run(&[&"--out", &file, &"--format", &format]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // JSONL: the printed JSON, a row per line.
    let text = std::fs::read_to_string(out("jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(serde_json::Value::Array(rows), printed);
    // CSV through Python's csv module; GeoJSON through the geojson library's RFC 7946 checks.
    let read_back = run_python([
        "-c",
        "import csv, json, sys, geojson\n\
         rows = list(csv.DictReader(open(sys.argv[1], newline='')))\n\
         fc = geojson.load(open(sys.argv[2]))\n\
         assert fc.is_valid, fc.errors()\n\
         assert fc['type'] == 'FeatureCollection'\n\
         points = [f['geometry']['coordinates'] for f in fc['features']]\n\
         print(json.dumps({'csv': [[r['image'], float(r['lat']), float(r['lon']), r['country'], r['city']] for r in rows], 'points': points, 'images': [f['properties']['image'] for f in fc['features']]}))",
        out("csv").to_str().unwrap(),
        out("geojson").to_str().unwrap(),
    ]);
    let back: serde_json::Value = serde_json::from_str(read_back.trim()).unwrap();
    for (i, row) in printed.as_array().unwrap().iter().enumerate() {
        let g = &row["guess"];
        let csv_row = &back["csv"][i];
        assert_eq!(csv_row[0], row["image"]);
        assert_eq!(csv_row[1].as_f64(), g["lat"].as_f64());
        assert_eq!(csv_row[2].as_f64(), g["lon"].as_f64());
        assert_eq!((&csv_row[3], &csv_row[4]), (&g["country"], &g["city"]));
        // GeoJSON points are [longitude, latitude].
        assert_eq!(back["points"][i], serde_json::json!([g["lon"], g["lat"]]));
        assert_eq!(back["images"][i], row["image"]);
    }
}

#[test]
fn a_killed_jsonl_run_resumes_to_the_same_rows() {
    let tmp = tmpdir();
    let model = fixture("tiny-p14-336");
    let photos = im2gps3k_images(300);
    let file = tmp.path().join("guesses.jsonl");
    let command = |out: &Path, resume: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_streetclip"));
        // One image a batch: every guess is the image's own, whatever batch it falls in.
        c.args(["geolocate", "--batch-size", "1", "--model"])
            .arg(&model)
            .arg("--out")
            .arg(out)
            .args(if resume { &["--resume"][..] } else { &[][..] })
            .args(&photos)
            .stderr(std::process::Stdio::null());
        c
    };
    let mut child = command(&file, false).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while std::fs::read_to_string(&file).map_or(0, |t| t.lines().count()) < 8 {
        assert!(std::time::Instant::now() < deadline, "no rows written");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let partial = std::fs::read_to_string(&file).unwrap();
    let kept = partial
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
        .count();
    assert!(
        kept >= 8 && kept < photos.len(),
        "{kept} whole rows when killed"
    );
    assert!(command(&file, true).status().unwrap().success());
    let whole = tmp.path().join("whole.jsonl");
    assert!(command(&whole, false).status().unwrap().success());
    let by_image = |path: &Path| -> std::collections::BTreeMap<String, serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                let row: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    row["image"].as_str().unwrap().to_string(),
                    row["guess"].clone(),
                )
            })
            .collect()
    };
    let (resumed, uninterrupted) = (by_image(&file), by_image(&whole));
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().lines().count(),
        photos.len(),
        "each image once"
    );
    assert_eq!(resumed, uninterrupted);
}
