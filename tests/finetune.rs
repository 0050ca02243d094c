//! Downstream fine-tuning: the linear probe against scikit-learn, every method end to end on
//! synthetic scenes with a tiny model (learns, checkpoints, resumes, exports the head), WiSE-FT
//! endpoints, and bad configs.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use streetclip::finetune::logistic;
use tch::{Kind, Tensor};

#[test]
fn the_linear_probe_matches_scikit_learn() {
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture("logistic_cases.json")).unwrap())
            .unwrap();
    let matrix = |v: &serde_json::Value| -> Tensor {
        let rows: Vec<Vec<f64>> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect()
            })
            .collect();
        let (n, d) = (rows.len() as i64, rows[0].len() as i64);
        Tensor::from_slice(&rows.concat()).view([n, d])
    };
    for case in &cases {
        let (k, c) = (
            case["classes"].as_u64().unwrap() as usize,
            case["c"].as_f64().unwrap(),
        );
        let x = matrix(&case["x"]);
        let y: Vec<usize> = case["y"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let model = logistic::fit(&x, &y, k, c).unwrap();
        let proba_diff = max_diff(&model.probabilities(&x), &matrix(&case["proba"]));
        // scikit-learn's binary model has one weight vector: ours is row 1 (row 0 is zero).
        let (coef, intercept) = if k == 2 {
            (model.weight.narrow(0, 1, 1), model.bias.narrow(0, 1, 1))
        } else {
            (model.weight.shallow_clone(), model.bias.shallow_clone())
        };
        let coef_diff = max_diff(&coef, &matrix(&case["coef"]));
        let theirs_b: Vec<f64> = case["intercept"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let intercept_diff = max_diff(&intercept, &Tensor::from_slice(&theirs_b));
        eprintln!("K={k} C={c}: probabilities {proba_diff:.1e}, coefficients {coef_diff:.1e}, intercepts {intercept_diff:.1e} ({} iterations)", model.iterations);
        // Both solvers reach gradients of ~1e-13; measured agreement is ~1e-11.
        assert!(
            proba_diff < 1e-9 && coef_diff < 1e-9 && intercept_diff < 1e-9,
            "K={k} C={c}"
        );
    }
}

/// Synthetic scenes of three countries, classified by their `country` column.
fn config(dir: &Path, method: &str, extra: &str) -> PathBuf {
    let data = dir.join("scenes");
    if !data.join("manifest.csv").is_file() {
        let o = Command::new(env!("CARGO_BIN_EXE_streetclip"))
            .args([
                "synth-data",
                "--countries",
                "3",
                "--cities-per-country",
                "2",
                "--per-city",
                "14",
                "--out",
            ])
            .arg(&data)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let text = format!(
        r#"{TINY_MODEL_YAML}train:
  micro_batch_size: 8
  grad_accum_steps: 1
  epochs: 8
  seed: 2
  checkpoint_every: 5
optim: {{lr: 3.0e-3, weight_decay: 0.01, schedule: cosine, warmup_steps: 2}}
finetune:
  method: {method}
  train: {data}/manifest.csv
  label_column: country
  class_names: {{AU: Australia, KE: Kenya}}
  templates: ["A Street View photo in {{}}.", "A photo taken in {{}}."]
  c_grid: [0.1, 1.0, 10.0, 100.0]
{extra}"#,
        data = data.display()
    );
    let path = dir.join(format!("{}.yaml", method.replace(['[', ']', ',', ' '], "")));
    std::fs::write(&path, text).unwrap();
    path
}

fn finetune(cfg: &Path, out: &Path, extra: &[&str]) -> Output {
    run_command("finetune", cfg, out, extra)
}

/// A finetune run that must succeed; returns `comparison.md`, which it must have printed.
fn finetune_comparison(cfg: &Path, out: &Path) -> String {
    let o = finetune(cfg, out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let comparison = std::fs::read_to_string(out.join("comparison.md")).unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), comparison);
    comparison
}

fn metrics(dir: &Path) -> serde_json::Value {
    let m =
        serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap();
    assert!(assert_rates_are_fractions("finetune metrics.json", &m) > 3);
    m
}

fn weights(dir: &Path) -> Vec<(String, Tensor)> {
    let mut all = streetclip::formats::tensor_io::read(&dir.join("model.safetensors")).unwrap();
    all.extend(streetclip::formats::tensor_io::read(&dir.join("head.safetensors")).unwrap());
    all
}

fn same_weights(a: &Path, b: &Path) {
    let (x, y) = (weights(a), weights(b));
    assert_eq!(x.len(), y.len());
    for ((n, s), (m, t)) in x.iter().zip(&y) {
        assert_eq!(n, m);
        assert_eq!(
            max_diff(s, t),
            0.0,
            "{n}: {} vs {}",
            a.display(),
            b.display()
        );
    }
}

#[test]
fn every_method_runs_learns_exports_and_is_compared() {
    let tmp = tmpdir();
    let cfg = config(
        tmp.path(),
        "[zero_shot, linear_probe, contrastive, classifier]",
        "  wise_ft: [0.0, 0.5, 1.0]",
    );
    let out = tmp.path().join("run");
    // One row per method and WiSE-FT mix.
    let comparison = finetune_comparison(&cfg, &out);
    let comparison_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("comparison.json")).unwrap()).unwrap();
    assert!(assert_rates_are_fractions("comparison.json", &comparison_json) >= 18);
    for row in [
        "| zero_shot |",
        "| linear_probe |",
        "| contrastive |",
        "| classifier |",
        "| classifier + WiSE-FT α=0.5 |",
        "| contrastive + WiSE-FT α=1 |",
    ] {
        assert!(comparison.contains(row), "{row}\n{comparison}");
    }
    let split: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("split.json")).unwrap()).unwrap();
    assert_eq!(split["classes"], 3);
    let chance = 1.0 / 3.0;
    for method in ["zero_shot", "linear_probe", "contrastive", "classifier"] {
        let dir = out.join(method);
        let m = metrics(&dir);
        assert_eq!(m["test"]["n"], split["test"], "{method}");
        assert_eq!(m["classes"].as_array().unwrap().len(), 3);
        for f in [
            "report.md",
            "confusion.png",
            "confusion.csv",
            "export/config.json",
            "export/model.safetensors",
            "export/head.safetensors",
            "export/head.json",
            "export/tokenizer.json",
        ] {
            assert!(dir.join(f).is_file(), "{method}: {f}");
        }
        // The export is a plain CLIP directory; the head sits beside it.
        streetclip::formats::pretrained::Pretrained::load(&dir.join("export"), tch::Device::Cpu)
            .unwrap();
        let accuracy = m["test"]["accuracy"].as_f64().unwrap();
        eprintln!("{method}: test accuracy {accuracy:.3} (chance {chance:.3})");
        if method != "zero_shot" {
            assert!(accuracy > chance + 0.15, "{method} learned: {accuracy}");
        }
    }
    assert!(metrics(&out.join("linear_probe"))["chosen_c"]
        .as_f64()
        .is_some());
    for method in ["contrastive", "classifier"] {
        let dir = out.join(method);
        assert!(
            !streetclip::train::checkpoint::list(&dir.join("checkpoints")).is_empty(),
            "{method} checkpoints"
        );
        // WiSE-FT: alpha 1 is the fine-tuned model, alpha 0 the initial one (which is what the
        // zero-shot method exports), bit for bit.
        same_weights(&dir.join("export-wise-1"), &dir.join("export"));
        same_weights(&dir.join("export-wise-0"), &out.join("zero_shot/export"));
        let head: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("export-wise-0.5/head.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(head["wise_ft_alpha"], 0.5);
        assert_eq!(head["caption_names"][0], "Australia");
    }
    for method in ["classifier", "linear_probe"] {
        predict_uses_the_exported_head(
            &out.join(method).join("export"),
            &tmp.path().join("scenes"),
        );
        eval_classify_and_geolocate_use_the_head(&out, method);
    }
    for method in ["zero_shot", "linear_probe", "contrastive", "classifier"] {
        predictions_and_split_are_written(&out, method, &split);
    }
    // The classifier's head starts as the zero-shot classifier: after zero steps it predicts the same.
    let cfg0 = config(tmp.path(), "classifier", "");
    let o = finetune(&cfg0, &tmp.path().join("zero-steps"), &["--max-steps", "0"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        metrics(&tmp.path().join("zero-steps/classifier"))["test"]["confusion"],
        metrics(&out.join("zero_shot"))["test"]["confusion"]
    );
}

#[test]
fn a_stopped_classifier_resumes() {
    let tmp = tmpdir();
    let cfg = config(tmp.path(), "classifier", "");
    let out = tmp.path().join("run");
    let first = finetune(&cfg, &out, &["--max-steps", "6"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(metrics(&out.join("classifier"))["training"]["steps"], 6);
    // `export` writes a classifier checkpoint's head beside the model.
    let last = streetclip::train::checkpoint::list(&out.join("classifier/checkpoints"))
        .pop()
        .unwrap();
    let exported = tmp.path().join("exported");
    let o = Command::new(env!("CARGO_BIN_EXE_streetclip"))
        .args(["export", "--checkpoint"])
        .arg(&last)
        .arg("--out")
        .arg(&exported)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    streetclip::formats::pretrained::Pretrained::load(&exported, tch::Device::Cpu).unwrap();
    let saved: Vec<(String, Tensor)> =
        streetclip::formats::tensor_io::read(&last.join("model.safetensors"))
            .unwrap()
            .into_iter()
            .filter(|(n, _)| n.starts_with("classifier_head"))
            .collect();
    let head = streetclip::formats::tensor_io::read(&exported.join("head.safetensors")).unwrap();
    assert_eq!(head.len(), 2);
    for ((a, x), (b, y)) in saved.iter().zip(&head) {
        assert_eq!((a, max_diff(x, y)), (b, 0.0));
    }
    let second = finetune(&cfg, &out, &[]);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        second.status.success() && stderr.contains("resuming from") && stderr.contains("(step 6)"),
        "{stderr}"
    );
    let m = metrics(&out.join("classifier"));
    assert_eq!(m["training"]["steps"], m["training"]["total_steps"]);
    // The linear probe resumes from its saved features.
    let lp = config(tmp.path(), "linear_probe", "");
    assert!(finetune(&lp, &out, &[]).status.success());
    let again = finetune(&lp, &out, &[]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("linear_probe: features from"));
    let probe = |extra: &[&str]| {
        let o = finetune(&lp, &out, extra);
        let stderr = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{stderr}");
        (stderr, metrics(&out.join("linear_probe"))["test"].clone())
    };
    let (_, expected) = probe(&[]);
    // Another model's features (another seed draws other weights) are not taken for this one's.
    let (stderr, _) = probe(&["--set", "train.seed=3"]);
    assert!(
        !stderr.contains("features from") && stderr.contains("recomputed"),
        "{stderr}"
    );
    // Nor are damaged ones: NaN in place of the training features, the metadata kept.
    let (_, seed2) = probe(&[]);
    assert_eq!(seed2, expected);
    let file = out.join("linear_probe/features.safetensors");
    let (tensors, meta) = streetclip::formats::tensor_io::read_with_metadata(&file).unwrap();
    let damaged: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(n, t)| match n.as_str() {
            "train" => (n, t.fill(f64::NAN)),
            _ => (n, t),
        })
        .collect();
    let meta: Vec<(&str, String)> = meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    streetclip::formats::tensor_io::write_with_metadata(&file, &damaged, &meta).unwrap();
    let (stderr, after) = probe(&[]);
    assert!(stderr.contains("recomputed"), "{stderr}");
    assert_eq!(after, expected);
}

/// `optim.groups` with `head`: the classifier's head trains in its own group; the contrastive
/// method of the same config, which has no head, runs with the group empty.
#[test]
fn a_head_group_applies_where_a_method_has_a_head() {
    let tmp = tmpdir();
    let groups = "optim.groups=[{params: [head], lr_scale: 10, weight_decay: 0}]";
    for method in ["classifier", "contrastive"] {
        let cfg = config(tmp.path(), method, "");
        let out = tmp.path().join(method);
        let o = finetune(&cfg, &out, &["--max-steps", "2", "--set", groups]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{method}: {stderr}");
        // 3 classes x 32 dimensions + 3 biases.
        let said = stderr.contains(
            "optim group 0 [head]: 99 of 99 parameters trainable, lr 3.000e-2, weight decay 0",
        );
        assert_eq!(said, method == "classifier", "{method}: {stderr}");
    }
}

#[test]
fn bad_configs_are_clear_errors() {
    let tmp = tmpdir();
    let check = |cfg: &Path, extra: &[&str], wants: &[&str]| {
        let o = finetune(cfg, &tmp.path().join("bad"), extra);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        for w in wants {
            assert!(stderr.contains(w), "wanted `{w}` in: {stderr}");
        }
    };
    let cfg = config(tmp.path(), "nearest_neighbour", "");
    check(
        &cfg,
        &[],
        &["finetune", "unknown method `nearest_neighbour`", "line 14"],
    );
    // ImageFolder splits: an empty class folder, and class folders that differ between splits.
    let photos = im2gps3k_images(4);
    for (split, classes) in [("train", ["urban", "rural"]), ("test", ["urban", "forest"])] {
        for (i, c) in classes.iter().enumerate() {
            std::fs::create_dir_all(tmp.path().join(split).join(c)).unwrap();
            std::fs::copy(
                &photos[i],
                tmp.path().join(split).join(c).join(format!("{i}.jpg")),
            )
            .unwrap();
        }
    }
    let folders = config(tmp.path(), "zero_shot", "");
    let train = format!("finetune.train={}", tmp.path().join("train").display());
    let test = format!("finetune.test={}", tmp.path().join("test").display());
    check(
        &folders,
        &["--set", &train, "--set", &test],
        &["finetune.test", "forest"],
    );
    std::fs::create_dir_all(tmp.path().join("train/empty")).unwrap();
    check(&folders, &["--set", &train], &["empty", "holds no images"]);
    check(
        &folders,
        &["--set", "finetune.label_column=continent"],
        &["continent"],
    );
    // Geocells: alone, with a positive tau, on images with coordinates, and the classification
    // methods stay one process.
    let mixed = config(tmp.path(), "[zero_shot, geocells]", "");
    check(
        &mixed,
        &[],
        &["run it alone (method: geocells)", "eval geo"],
    );
    let cells = config(tmp.path(), "geocells", "");
    check(
        &cells,
        &["--set", "finetune.geocells.tau_km=0"],
        &["finetune.geocells.tau_km = 0"],
    );
    let unlocated = tmp.path().join("unlocated.csv");
    std::fs::write(
        &unlocated,
        format!("image,country\n{},KE\n", photos[0].display()),
    )
    .unwrap();
    let set = format!("finetune.train={}", unlocated.display());
    check(
        &cells,
        &["--set", &set],
        &["finetune.train", "no row has coordinates", "lat and lon"],
    );
    check(
        &folders,
        &["--nproc-per-node", "2"],
        &["only finetune.method geocells trains data-parallel"],
    );
}

#[test]
fn wise_ft_mixes_linearly_and_keeps_the_endpoints() {
    let a = vec![("w".to_string(), Tensor::from_slice(&[1.0f32, -2.0, 0.3]))];
    let b = vec![("w".to_string(), Tensor::from_slice(&[3.0f32, 2.0, -0.7]))];
    use streetclip::finetune::wise::interpolate;
    assert_eq!(
        max_diff(&interpolate(&a, &b, 0.0).unwrap()[0].1, &a[0].1),
        0.0
    );
    assert_eq!(
        max_diff(&interpolate(&a, &b, 1.0).unwrap()[0].1, &b[0].1),
        0.0
    );
    assert!(
        max_diff(
            &interpolate(&a, &b, 0.5).unwrap()[0].1,
            &Tensor::from_slice(&[2.0f32, 0.0, -0.2])
        ) < 1e-7
    );
    assert!(interpolate(&a, &b, 1.5).is_err());
    let other = vec![(
        "v".to_string(),
        Tensor::zeros([3], (Kind::Float, tch::Device::Cpu)),
    )];
    assert!(interpolate(&a, &other, 0.5).is_err());
}

#[test]
fn the_shipped_task_configs_are_valid() {
    let dir = root().join("configs/finetune");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let cfg = streetclip::config::Config::from_file(&path)
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        assert!(cfg.finetune.train.is_some(), "{}", path.display());
        assert!(
            cfg.finetune.templates.iter().all(|t| t.contains("{}")),
            "{}",
            path.display()
        );
        n += 1;
    }
    assert!(n >= 8, "{n} configs");
}

/// `streetclip predict` on a fine-tuned export ranks the head's classes with the head, as
/// transformers plus head.json's formula does (`scripts/head_predict.py`); `--labels` alone is a
/// question, not a silent switch to zero-shot; `--zero-shot --labels` ranks the labels.
fn predict_uses_the_exported_head(export: &Path, scenes: &Path) {
    let mut images: Vec<PathBuf> = std::fs::read_dir(scenes.join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    images.sort();
    let images: Vec<PathBuf> = images.into_iter().step_by(7).take(6).collect();
    let predict = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_streetclip"))
            .args(["predict", "--json", "--top-k", "3", "--model"])
            .arg(export)
            .args(extra)
            .args(&images)
            .output()
            .unwrap()
    };
    let out = predict(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut args: Vec<std::ffi::OsString> =
        vec![root().join("scripts/head_predict.py").into(), export.into()];
    args.extend(images.iter().map(|p| p.clone().into_os_string()));
    let theirs: serde_json::Value = serde_json::from_str(&run_python(args)).unwrap();
    let mut max_diff = 0f64;
    for (o, t) in ours
        .as_array()
        .unwrap()
        .iter()
        .zip(theirs.as_array().unwrap())
    {
        let ranking = o["ranking"].as_array().unwrap();
        assert_eq!(ranking.len(), 3);
        let reference = t["probabilities"].as_object().unwrap();
        let best = reference
            .iter()
            .max_by(|a, b| a.1.as_f64().unwrap().total_cmp(&b.1.as_f64().unwrap()))
            .unwrap();
        assert_eq!(
            ranking[0]["label"].as_str().unwrap(),
            best.0,
            "{}",
            o["image"]
        );
        for r in ranking {
            let p = r["probability"].as_f64().unwrap();
            let q = reference[r["label"].as_str().unwrap()].as_f64().unwrap();
            max_diff = max_diff.max((p - q).abs());
        }
    }
    eprintln!(
        "{}: head probabilities vs transformers: max |Δ| {max_diff:.1e}",
        export.display()
    );
    assert!(max_diff < 1e-5, "{max_diff}");
    let asked = predict(&["--labels", "Kenya,Japan"]);
    let stderr = String::from_utf8_lossy(&asked.stderr);
    assert_eq!(asked.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("carries a fine-tuned classifier over 3 classes")
            && stderr.contains("--zero-shot"),
        "{stderr}"
    );
    let zero_shot = predict(&["--labels", "Kenya,Japan", "--zero-shot"]);
    assert!(
        zero_shot.status.success(),
        "{}",
        String::from_utf8_lossy(&zero_shot.stderr)
    );
    let ranked: serde_json::Value = serde_json::from_slice(&zero_shot.stdout).unwrap();
    assert_eq!(ranked[0]["ranking"].as_array().unwrap().len(), 2);
}

/// `split.csv` lists every image once with its split; `<method>/predictions.csv` has a row per
/// test image (the same images) whose hits give the reported test accuracy.
fn predictions_and_split_are_written(out: &Path, method: &str, sizes: &serde_json::Value) {
    let rows = |path: &Path| -> Vec<csv::StringRecord> {
        csv::Reader::from_path(path)
            .unwrap()
            .records()
            .map(|r| r.unwrap())
            .collect()
    };
    let split = rows(&out.join("split.csv"));
    let n = |name: &str| split.iter().filter(|r| &r[2] == name).count();
    for name in ["train", "val", "test"] {
        assert_eq!(n(name) as u64, sizes[name].as_u64().unwrap(), "{name}");
    }
    let mut test: Vec<&str> = split
        .iter()
        .filter(|r| &r[2] == "test")
        .map(|r| &r[0])
        .collect();
    let predictions = rows(&out.join(method).join("predictions.csv"));
    let mut predicted: Vec<&str> = predictions.iter().map(|r| &r[0]).collect();
    test.sort();
    predicted.sort();
    assert_eq!(
        test, predicted,
        "{method}: predictions.csv covers the test split"
    );
    let hits = predictions.iter().filter(|r| r[1] == r[2]).count();
    let accuracy = metrics(&out.join(method))["test"]["accuracy"]
        .as_f64()
        .unwrap();
    assert!(
        (hits as f64 / predictions.len() as f64 - accuracy).abs() < 1e-12,
        "{method}"
    );
    for r in &predictions {
        let p: f64 = r[3].parse().unwrap();
        assert!(p > 0.0 && p <= 1.0, "{method}: probability {p}");
    }
}

/// `eval classify` on a fine-tuned export scores with its head: on the test split it gives the
/// method's own test confusion matrix, not zero-shot's; `geolocate` takes the country from the
/// head, with the probabilities `predict` gives for the same photo.
fn eval_classify_and_geolocate_use_the_head(out: &Path, method: &str) {
    let export = out.join(method).join("export");
    let split = csv::Reader::from_path(out.join("split.csv"))
        .unwrap()
        .records()
        .map(|r| r.unwrap())
        .filter(|r| &r[2] == "test")
        .collect::<Vec<_>>();
    let manifest = out.join(format!("{method}-test.csv"));
    let mut w = csv::Writer::from_path(&manifest).unwrap();
    w.write_record(["image", "label"]).unwrap();
    for r in &split {
        w.write_record([&r[0], &r[1]]).unwrap();
    }
    w.flush().unwrap();
    let (export_s, manifest_s) = (export.to_str().unwrap(), manifest.to_str().unwrap());
    let classify = [
        "eval", "classify", "--model", export_s, "--data", manifest_s,
    ];
    let o = cli(&classify);
    assert!(String::from_utf8_lossy(&o.stderr).contains("fine-tuned classifier head (3 classes)"));
    let ours: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let theirs = metrics(&out.join(method));
    assert_eq!(ours["confusion"], theirs["test"]["confusion"], "{method}");
    assert_eq!(ours["accuracy"], theirs["test"]["accuracy"], "{method}");
    // Templates for a model with a head are a question; --zero-shot answers it.
    let asked = Command::new(env!("CARGO_BIN_EXE_streetclip"))
        .args(classify)
        .args(["--template", "A photo of {}."])
        .output()
        .unwrap();
    assert_eq!(asked.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&asked.stderr).contains("--zero-shot"));
    let zero = cli(&[&classify[..], &["--zero-shot"]].concat());
    assert!(!String::from_utf8_lossy(&zero.stderr).contains("head"));

    let photo = &split[0][0];
    let geo = cli(&["geolocate", "--json", "--model", export_s, photo]);
    assert!(String::from_utf8_lossy(&geo.stderr)
        .contains("classifier head (3 classes) for the country"));
    let guess: serde_json::Value = serde_json::from_slice(&geo.stdout).unwrap();
    let top = guess[0]["guess"]["top_countries"]
        .as_array()
        .unwrap()
        .clone();
    let predicted = cli(&[
        "predict", "--json", "--top-k", "3", "--model", export_s, photo,
    ]);
    let ranking: serde_json::Value = serde_json::from_slice(&predicted.stdout).unwrap();
    let ranking = ranking[0]["ranking"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    for (g, p) in top.iter().zip(ranking) {
        let (a, b) = (
            g["probability"].as_f64().unwrap(),
            p["probability"].as_f64().unwrap(),
        );
        assert!(
            (a - b).abs() < 1e-6,
            "{method}: geolocate {g} vs predict {p}"
        );
    }
    let zero = cli(&[
        "geolocate",
        "--json",
        "--zero-shot",
        "--model",
        export_s,
        photo,
    ]);
    let guess: serde_json::Value = serde_json::from_slice(&zero.stdout).unwrap();
    assert!(!String::from_utf8_lossy(&zero.stderr).contains("classifier head"));
    assert_eq!(
        guess[0]["guess"]["top_countries"].as_array().unwrap().len(),
        3
    );
}

/// `streetclip ARGS`, which must succeed.
fn cli(args: &[&str]) -> Output {
    let o = Command::new(env!("CARGO_BIN_EXE_streetclip"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

const GEOCELLS: &str = "  geocells: {min_samples: 4, max_samples: 12, tau_km: 75}";

#[test]
fn geocells_train_export_geolocate_and_are_evaluated() {
    let tmp = tmpdir();
    let cfg = config(tmp.path(), "geocells", GEOCELLS);
    let out = tmp.path().join("run");
    let comparison = finetune_comparison(&cfg, &out);
    assert!(
        comparison.contains("| metric | `geocells` | `geocells-centroid` |"),
        "{comparison}"
    );
    let dir = out.join("geocells");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap();
    assert!(assert_rates_are_fractions("geocells metrics.json", &m) >= 20);
    let (train, test) = (
        m["train_images"].as_u64().unwrap(),
        m["test_images"].as_u64().unwrap(),
    );
    assert_eq!(train + test + m["val_images"].as_u64().unwrap(), 84);
    assert_eq!(m["training"]["steps"], m["training"]["total_steps"]);
    assert!(!streetclip::train::checkpoint::list(&dir.join("checkpoints")).is_empty());
    for f in [
        "test.csv",
        "val.csv",
        "test/report.md",
        "test/geocells/predictions.csv",
        "export/config.json",
        "export/model.safetensors",
        "export/head.safetensors",
        "export/head.json",
        "export/geocells.json",
        "export/index.safetensors",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    // The cells: from the training split's coordinates, every training image in one of them.
    let cells: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("export/geocells.json")).unwrap())
            .unwrap();
    let cells = cells["cells"].as_array().unwrap();
    let members: u64 = cells.iter().map(|c| c["samples"].as_u64().unwrap()).sum();
    assert_eq!(
        (members, m["cells"].as_u64().unwrap()),
        (train, cells.len() as u64)
    );
    assert!(cells.len() >= 3, "{} cells", cells.len());
    let head: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("export/head.json")).unwrap())
            .unwrap();
    assert_eq!(head["classes"].as_array().unwrap().len(), cells.len());
    let index: std::collections::HashMap<String, Tensor> =
        streetclip::formats::tensor_io::read(&dir.join("export/index.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(index["embeddings"].size(), [train as i64, 32]);
    assert_eq!(index["coords"].size(), [train as i64, 2]);
    // It learned the three countries (chance: a third).
    let refined = &m["test"]["geocells"];
    let accuracy = refined["country_accuracy"].as_f64().unwrap();
    eprintln!(
        "geocells: country accuracy {accuracy:.3}, median {} km",
        refined["median_km"]
    );
    assert!(accuracy > 1.0 / 3.0 + 0.15, "{accuracy}");
    assert!(m["test"]["geocells-centroid"]["median_km"].is_number());

    // `geolocate` and `eval geo` use the export by themselves, and say so.
    let export = dir.join("export");
    let export_s = export.to_str().unwrap();
    let photo = csv::Reader::from_path(dir.join("test.csv"))
        .unwrap()
        .records()
        .next()
        .unwrap()
        .unwrap()[0]
        .to_string();
    let geo = cli(&["geolocate", "--json", "--model", export_s, &photo]);
    assert!(String::from_utf8_lossy(&geo.stderr).contains(&format!(
        "geocell model ({} cells), guesses refined by the 16 nearest of {train} training images in the top 5 cells",
        cells.len()
    )));
    let guess: serde_json::Value = serde_json::from_slice(&geo.stdout).unwrap();
    let top = guess[0]["guess"]["top_cells"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    assert!(assert_rates_are_fractions("geolocate --json", &guess) >= 3);
    let zero = cli(&[
        "geolocate",
        "--json",
        "--zero-shot",
        "--model",
        export_s,
        &photo,
    ]);
    let zero: serde_json::Value = serde_json::from_slice(&zero.stdout).unwrap();
    assert!(zero[0]["guess"].get("top_cells").is_none());
    let test_csv = dir.join("test.csv");
    let eval_geo = |extra: &[&str]| -> serde_json::Value {
        let args = ["eval", "geo", "--model", export_s, "--manifest"];
        let o = cli(&[&args[..], &[test_csv.to_str().unwrap()], extra].concat());
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let by_name = eval_geo(&[]);
    // The same numbers as finetune's own evaluation of the test split.
    assert_eq!(by_name["geocells-export"], m["test"]["geocells"]);
    assert_eq!(
        by_name["geocells-export-centroid"],
        m["test"]["geocells-centroid"]
    );
    let refine_off = tmp.path().join("no-refine.yaml");
    std::fs::write(&refine_off, "geo: {geocells: {refine: false}}\n").unwrap();
    let plain = eval_geo(&["--config", refine_off.to_str().unwrap()]);
    assert_eq!(plain, m["test"]["geocells-centroid"]);
}

#[test]
fn geocells_resume_and_train_data_parallel_like_one_process() {
    let tmp = tmpdir();
    let cfg = config(tmp.path(), "geocells", GEOCELLS);
    // One process with 2 micro-batches of 4 a step; two ranks with one each.
    let micro = ["--set", "train.micro_batch_size=4"];
    let one_process = [&micro[..], &["--set", "train.grad_accum_steps=2"]].concat();
    let one = tmp.path().join("one");
    let every_step = ["--set", "train.checkpoint_every=1"];
    let first = finetune(
        &cfg,
        &one,
        &[&one_process[..], &["--max-steps", "2"], &every_step].concat(),
    );
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let two = tmp.path().join("two");
    let ranks = ["--max-steps", "2", "--nproc-per-node", "2"];
    let o = finetune(&cfg, &two, &[&micro[..], &ranks, &every_step].concat());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("data parallel: 2 ranks"), "{stderr}");
    let step_one = |run: &Path| run.join("geocells/checkpoints/step-00000001");
    let weights =
        streetclip::formats::tensor_io::read(&step_one(&one).join("model.safetensors")).unwrap();
    assert!(weights.iter().any(|(n, _)| n == "classifier_head.weight"));
    // `config`'s learning rate, the most any step uses.
    assert_same_first_step(&step_one(&one), &step_one(&two), 3.0e-3);
    // The stopped one-process run resumes to the end.
    let again = finetune(&cfg, &one, &one_process);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        again.status.success() && stderr.contains("resuming from") && stderr.contains("(step 2)"),
        "{stderr}"
    );
}
