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

/// `streetclip ARGS`, which must succeed (its stderr shown if not).
fn succeeds(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let o = streetclip(args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
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

/// The hostile files of hostile_inputs.rs in `dir`: truncated, zero-byte, text renamed .jpg, a
/// header claiming 65535 x 65535 pixels.
fn hostile_files(dir: &Path, jpeg: &[u8]) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let files = [
        ("truncated.jpg", jpeg[..jpeg.len() / 3].to_vec()),
        ("zero-byte.jpg", vec![]),
        ("text.jpg", b"shopping list: bread, milk".to_vec()),
        ("huge-header.jpg", jpeg_claiming(jpeg, 65535, 65535)),
    ];
    files
        .into_iter()
        .map(|(name, bytes)| {
            std::fs::write(dir.join(name), bytes).unwrap();
            dir.join(name)
        })
        .collect()
}

/// The rows of a `skipped.csv`: path → reason.
fn skipped_rows(path: &Path) -> std::collections::BTreeMap<String, String> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    assert_eq!(reader.headers().unwrap(), vec!["path", "reason"]);
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            (r[0].to_string(), r[1].to_string())
        })
        .collect()
}

fn assert_lists_the_bad(skipped: &Path, bad: &[PathBuf]) {
    let rows = skipped_rows(skipped);
    let names: Vec<String> = bad.iter().map(|b| b.display().to_string()).collect();
    assert_eq!(
        rows.keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        names.iter().cloned().collect(),
        "{skipped:?}"
    );
    for (path, why) in &rows {
        assert!(
            why.contains(path.as_str()) && why.len() > path.len() + 10,
            "{why}"
        );
    }
}

fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The shared IM2GPS3K photos in a folder with the hostile files of hostile_inputs.rs in a
/// subfolder (and a text file a folder search passes over).
struct HostileFolder {
    tmp: tempfile::TempDir,
    model: PathBuf,
    folder: PathBuf,
    /// The photos, in the order a folder search gives them.
    good: Vec<PathBuf>,
    bad: Vec<PathBuf>,
}

impl HostileFolder {
    fn new() -> Self {
        let tmp = tmpdir();
        let folder = tmp.path().join("photos");
        std::fs::create_dir_all(&folder).unwrap();
        let mut good: Vec<PathBuf> = im2gps3k_images(4)
            .iter()
            .map(|p| {
                let copy = folder.join(p.file_name().unwrap());
                std::fs::copy(p, &copy).unwrap();
                copy
            })
            .collect();
        good.sort();
        std::fs::write(folder.join("README.txt"), "not an image").unwrap();
        let mut bad = hostile_files(&folder.join("bad"), &std::fs::read(&good[0]).unwrap());
        bad.sort();
        let model = fixture("tiny-p14-336");
        Self {
            tmp,
            model,
            folder,
            good,
            bad,
        }
    }

    /// `geolocate --out FILE.jsonl` of the folder: its rows.
    fn geolocated(&self) -> Vec<serde_json::Value> {
        let file = self.tmp.path().join("geolocated.jsonl");
        succeeds(&[
            &"geolocate",
            &"--model",
            &self.model,
            &"--out",
            &file,
            &self.folder,
        ]);
        jsonl(&file)
    }
}

/// predict and geolocate of a folder answer every good photo as alone (to 1e-6) and list every
/// bad one with its reason in FILE.skipped.csv beside --out.
#[test]
fn predict_and_geolocate_answer_a_folders_good_photos_as_alone_and_list_the_bad() {
    let h = HostileFolder::new();
    let (tmp, model, folder) = (&h.tmp, h.model.clone(), h.folder.clone());
    let (good, bad) = (h.good.clone(), h.bad.clone());
    let out = |name: &str| tmp.path().join(name);

    // predict and geolocate: --out FILE, the skipped images beside it.
    for (command, extra, key) in [
        (
            "predict",
            &["--labels", "France,Japan,Brazil"][..],
            "ranking",
        ),
        ("geolocate", &[][..], "guess"),
    ] {
        let file = out(&format!("{command}.jsonl"));
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
            &command,
            &"--model",
            &model,
            &"--batch-size",
            &"3",
            &"--out",
            &file,
        ];
        args.extend(extra.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>));
        args.push(&folder);
        let o = streetclip(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let rows = jsonl(&file);
        let images: Vec<&str> = rows.iter().map(|r| r["image"].as_str().unwrap()).collect();
        assert_eq!(
            images,
            good.iter().map(|g| g.to_str().unwrap()).collect::<Vec<_>>()
        );
        assert_lists_the_bad(&out(&format!("{command}.skipped.csv")), &bad);
        for (row, photo) in rows.iter().zip(&good) {
            let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
                vec![&command, &"--model", &model, &"--json"];
            args.extend(extra.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>));
            args.push(photo);
            let alone = json(&streetclip(&args));
            assert_close_json(&row[key], &alone[0][key], 1e-6);
        }
    }
    // data.on_error: fail stops at the first bad file, naming it, and keeps the rows before it.
    let file = out("fail.jsonl");
    let o = streetclip(&[
        &"predict",
        &"--model",
        &model,
        &"--labels",
        &"France,Japan",
        &"--set",
        &"data.on_error=fail",
        &"--batch-size",
        &"1",
        &"--out",
        &file,
        &folder,
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(bad[0].to_str().unwrap()), "{stderr}");
    assert_eq!(
        jsonl(&file).len(),
        good.len(),
        "the rows before the bad file"
    );
}

/// embed of a folder: each good photo's embedding as alone, in the order the file's metadata
/// lists; the bad ones in the skipped list.
#[test]
fn embed_of_a_folder_lists_its_rows_and_skips_the_bad() {
    let h = HostileFolder::new();
    let (tmp, model, folder) = (&h.tmp, h.model.clone(), h.folder.clone());
    let (good, bad) = (h.good.clone(), h.bad.clone());
    let out = |name: &str| tmp.path().join(name);

    // embed: a folder given to --image; the rows' images in the file's metadata.
    let features = out("features.safetensors");
    succeeds(&[
        &"embed",
        &"--model",
        &model,
        &"--image",
        &folder,
        &"--no-pixels",
        &"--batch-size",
        &"3",
        &"--out",
        &features,
    ]);
    assert_lists_the_bad(&out("features.skipped.csv"), &bad);
    let bytes = std::fs::read(&features).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let listed: Vec<PathBuf> =
        serde_json::from_str(&header.metadata().as_ref().unwrap()["images"]).unwrap();
    assert_eq!(listed, good);
    let together = &tch::Tensor::read_safetensors(&features).unwrap();
    let embeds = |list: &[(String, tch::Tensor)]| {
        list.iter()
            .find(|(n, _)| n == "image_embeds")
            .unwrap()
            .1
            .shallow_clone()
    };
    let together = embeds(together);
    assert!(together.size()[0] == good.len() as i64);
    for (i, photo) in good.iter().enumerate() {
        let alone_file = out(&format!("alone{i}.safetensors"));
        let o = streetclip(&[
            &"embed",
            &"--model",
            &model,
            &"--image",
            photo,
            &"--out",
            &alone_file,
        ]);
        assert!(o.status.success());
        let alone = embeds(&tch::Tensor::read_safetensors(&alone_file).unwrap());
        let d = max_diff(&together.get(i as i64), &alone.get(0));
        let scale = alone.abs().max().double_value(&[]).max(1.0);
        assert!(d <= 1e-6 * scale, "{photo:?}: {d}");
    }
}

/// eval classify of an ImageFolder with bad files among its classes, and of a folder without
/// labels (classes from --labels): each good image's class as predict gives it alone.
#[test]
fn eval_classify_of_a_folder_scores_the_good_and_lists_the_bad() {
    let h = HostileFolder::new();
    let (tmp, model, folder) = (&h.tmp, h.model.clone(), h.folder.clone());
    let (good, bad) = (h.good.clone(), h.bad.clone());
    let out = |name: &str| tmp.path().join(name);

    // eval classify: an ImageFolder whose class folders hold the good and the bad files.
    let classes = tmp.path().join("classes");
    let mut class_bad = Vec::new();
    for (c, class) in ["france", "japan"].iter().enumerate() {
        std::fs::create_dir_all(classes.join(class)).unwrap();
        for g in &good[2 * c..2 * c + 2] {
            std::fs::copy(g, classes.join(class).join(g.file_name().unwrap())).unwrap();
        }
        for b in &bad[c..c + 1] {
            let to = classes.join(class).join(b.file_name().unwrap());
            std::fs::copy(b, &to).unwrap();
            class_bad.push(to);
        }
    }
    let report = out("classify");
    succeeds(&[
        &"eval",
        &"classify",
        &"--model",
        &model,
        &"--data",
        &classes,
        &"--out",
        &report,
    ]);
    assert_lists_the_bad(&report.join("skipped.csv"), &class_bad);
    let mut predictions = csv::Reader::from_path(report.join("predictions.csv")).unwrap();
    let rows: Vec<csv::StringRecord> = predictions.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), good.len());
    for row in &rows {
        assert_class_as_predict_alone(&model, &row[0], (&row[2], &row[3]));
    }

    let report = out("folder-classify");
    let o = streetclip(&[
        &"eval",
        &"classify",
        &"--model",
        &model,
        &"--labels",
        &"france,japan",
        &"--out",
        &report,
        &folder,
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("nothing to measure"), "{stderr}");
    assert_lists_the_bad(&report.join("predictions.skipped.csv"), &bad);
    let mut predictions = csv::Reader::from_path(report.join("predictions.csv")).unwrap();
    let rows: Vec<csv::StringRecord> = predictions.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), good.len());
    for (row, photo) in rows.iter().zip(&good) {
        assert_eq!(&row[0], photo.to_str().unwrap());
        assert_class_as_predict_alone(&model, &row[0], (&row[1], &row[2]));
    }
}

/// eval geo of a manifest with coordinates, of one without, and of the folder itself: each good
/// photo placed as geolocate places it; the bad ones listed.
#[test]
fn eval_geo_of_a_folder_places_the_good_as_geolocate_and_lists_the_bad() {
    let h = HostileFolder::new();
    let (tmp, model, folder) = (&h.tmp, h.model.clone(), h.folder.clone());
    let (good, bad) = (h.good.clone(), h.bad.clone());
    let out = |name: &str| tmp.path().join(name);
    let guesses = h.geolocated();
    // eval geo: a manifest of the folder's files with coordinates.
    let manifest = out("photos.csv");
    let mut text = String::from("image,lat,lon\n");
    for p in good.iter().chain(&bad) {
        text += &format!("{},48.85,2.35\n", p.display());
    }
    std::fs::write(&manifest, text).unwrap();
    let report = out("geo");
    succeeds(&[
        &"eval",
        &"geo",
        &"--model",
        &model,
        &"--manifest",
        &manifest,
        &"--out",
        &report,
    ]);
    assert_lists_the_bad(&report.join("skipped.csv"), &bad);
    let mut predictions = csv::Reader::from_path(report.join("predictions.csv")).unwrap();
    let rows: Vec<GeoRow> = predictions.deserialize().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), good.len());
    for (row, guess) in rows.iter().zip(&guesses) {
        assert_eq!(row.image, guess["image"].as_str().unwrap());
        assert!((row.pred_lat - guess["guess"]["lat"].as_f64().unwrap()).abs() <= 1e-6);
        assert!((row.pred_lon - guess["guess"]["lon"].as_f64().unwrap()).abs() <= 1e-6);
    }

    // eval geo without coordinates: says there is nothing to measure and geolocates.
    let unlabelled = out("unlabelled.csv");
    let names: Vec<String> = good
        .iter()
        .chain(&bad)
        .map(|p| p.display().to_string())
        .collect();
    std::fs::write(&unlabelled, format!("image\n{}\n", names.join("\n"))).unwrap();
    let report = out("unlabelled");
    let o = streetclip(&[
        &"eval",
        &"geo",
        &"--model",
        &model,
        &"--manifest",
        &unlabelled,
        &"--out",
        &report,
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("nothing to measure"), "{stderr}");
    assert_lists_the_bad(&report.join("guesses.skipped.csv"), &bad);
    for (row, guess) in jsonl(&report.join("guesses.jsonl")).iter().zip(&guesses) {
        assert_close_json(row, guess, 1e-6);
    }

    // The folder itself, to both evals: no labels, so the guesses and classes follow.
    let report = out("folder-geo");
    succeeds(&[
        &"eval", &"geo", &"--model", &model, &"--out", &report, &folder,
    ]);
    assert_lists_the_bad(&report.join("guesses.skipped.csv"), &bad);
    let rows = jsonl(&report.join("guesses.jsonl"));
    assert_eq!(rows.len(), guesses.len());
    for (row, guess) in rows.iter().zip(&guesses) {
        assert_close_json(row, guess, 1e-6);
    }
}

/// `(class, probability)` is what `predict` gives `image` alone as its most probable of France
/// and Japan (eval classify's default template), to 1e-6.
fn assert_class_as_predict_alone(model: &Path, image: &str, (class, probability): (&str, &str)) {
    let alone = json(&streetclip(&[
        &"predict",
        &"--model",
        &model,
        &"--labels",
        &"france,japan",
        &"--template",
        &"A Street View photo of {}.",
        &"--json",
        &image,
    ]));
    let best = &alone[0]["ranking"][0];
    assert_eq!(best["label"].as_str().unwrap(), class, "{image}");
    let p: f64 = probability.parse().unwrap();
    assert!(
        (p - best["probability"].as_f64().unwrap()).abs() <= 1e-6,
        "{image}: {p}"
    );
}

#[derive(serde::Deserialize)]
struct GeoRow {
    image: String,
    pred_lat: f64,
    pred_lon: f64,
}

/// Photos geotagged by Pillow (JPEG, PNG, WebP; N/S, E/W; with and without a capture time),
/// one without EXIF and one with EXIF but no GPS: the manifest holds the written positions (to
/// 1e-6 degrees) and times, counts the two without, and `captions` reads it as training data.
#[test]
fn a_manifest_from_exif_holds_the_written_positions_and_counts_the_untagged() {
    let tmp = tmpdir();
    let photos = tmp.path().join("photos");
    let written = run_python([
        root().join("scripts/write_geotagged_photos.py").as_os_str(),
        im2gps3k_images(1)[0].as_os_str(),
        photos.as_os_str(),
    ]);
    let written: std::collections::BTreeMap<String, (f64, f64, Option<String>)> =
        serde_json::from_str(written.trim()).unwrap();
    let manifest = tmp.path().join("manifest.csv");
    let o = streetclip(&[&"manifest", &"--from-exif", &photos, &"--out", &manifest]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("4 of 6 photos geotagged; 2 without a GPS position"),
        "{stderr}"
    );
    let mut reader = csv::Reader::from_path(&manifest).unwrap();
    assert_eq!(
        reader.headers().unwrap(),
        vec!["image", "lat", "lon", "captured"]
    );
    let rows: std::collections::BTreeMap<String, (f64, f64, Option<String>)> = reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            let captured = Some(r[3].to_string()).filter(|c| !c.is_empty());
            (
                r[0].to_string(),
                (r[1].parse().unwrap(), r[2].parse().unwrap(), captured),
            )
        })
        .collect();
    // Paths relative to the manifest's folder: photos/<name>.
    let expected: std::collections::BTreeMap<String, (f64, f64, Option<String>)> = written
        .into_iter()
        .map(|(name, row)| (format!("photos/{name}"), row))
        .collect();
    assert_eq!(
        rows.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (name, (lat, lon, captured)) in &rows {
        let (e_lat, e_lon, e_captured) = &expected[name];
        assert!(
            (lat - e_lat).abs() <= 1e-6 && (lon - e_lon).abs() <= 1e-6,
            "{name}"
        );
        assert_eq!(captured, e_captured, "{name}");
    }
    // Training data as it is: captions reverse-geocode the positions.
    let o = streetclip(&[&"captions", &"--manifest", &manifest, &"--json"]);
    let captions = json(&o);
    let countries: Vec<&str> = captions
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["country"].as_str().unwrap())
        .collect();
    assert_eq!(countries.len(), 4);
    for country in ["France", "Brazil", "Japan", "South Africa"] {
        assert!(countries.contains(&country), "{country} in {countries:?}");
    }
}

/// Runs `args` and returns its exit status and peak resident memory in bytes (wait4's rusage of
/// that child alone).
fn peak_rss(args: &[&dyn AsRef<std::ffi::OsStr>]) -> (i32, u64) {
    #[allow(clippy::zombie_processes)] // reaped by wait4 below, which std cannot see
    let child = Command::new(env!("CARGO_BIN_EXE_streetclip"))
        .args(args.iter().map(|a| a.as_ref()))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    // SAFETY: waits for our own child, writing into the two locals.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    (libc::WEXITSTATUS(status), usage.ru_maxrss as u64 * 1024)
}

/// A million paths, all but three of them missing, through `--files-from`: the run finishes
/// with the three predicted and the rest in the skipped list, and its peak memory exceeds that
/// of a run over a thousand paths by less than 32 MB — 32 bytes a path, less than holding the
/// paths (each a 24-byte PathBuf plus its ~40 bytes of text) would take.
#[test]
fn a_million_listed_paths_run_in_bounded_memory() {
    let tmp = tmpdir();
    let model = fixture("tiny-p14-336");
    let good = im2gps3k_images(3);
    let list = |n: usize| {
        let path = tmp.path().join(format!("list-{n}.txt"));
        let mut text = String::with_capacity(n * 48);
        for i in 0..n {
            match good.get(i / (n / 3)).filter(|_| i % (n / 3) == 0) {
                Some(photo) => text += &format!("{}\n", photo.display()),
                None => text += &format!("/nonexistent/collection/photo-{i:07}.jpg\n"),
            }
        }
        std::fs::write(&path, text).unwrap();
        path
    };
    let run = |n: usize| {
        let out = tmp.path().join(format!("predictions-{n}.jsonl"));
        let list = list(n);
        let args: [&dyn AsRef<std::ffi::OsStr>; 10] = [
            &"predict",
            &"--model",
            &model,
            &"--labels",
            &"France,Japan",
            &"--batch-size",
            &"64",
            &"--files-from",
            &list,
            &"--out",
        ];
        let mut args = args.to_vec();
        args.push(&out);
        let (status, peak) = peak_rss(&args);
        assert_eq!(status, 0, "{n} paths");
        assert_eq!(jsonl(&out).len(), 3, "{n} paths");
        let skipped =
            std::fs::read_to_string(tmp.path().join(format!("predictions-{n}.skipped.csv")))
                .unwrap();
        assert_eq!(
            skipped.lines().count(),
            1 + n - 3,
            "{n} paths: header + the missing ones"
        );
        peak
    };
    let (small, large) = (run(1_000), run(1_000_000));
    assert!(
        large < small + (32 << 20),
        "peak RSS {} MB for 1,000,000 paths vs {} MB for 1,000",
        large >> 20,
        small >> 20
    );
}
