//! Zero-shot classification: metrics against scikit-learn (fixture), labelled data in both
//! layouts and their errors, predictions against the model's own logits, and `eval classify`
//! end to end on real photographs.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use streetclip::commands::classify::zero_shot;
use streetclip::data::classes::Labelled;
use streetclip::encode::Encoder;
use streetclip::eval::classification::class_metrics;
use streetclip::eval::text::class_text_embeddings;
use streetclip::formats::pretrained::Pretrained;

#[test]
fn metrics_match_scikit_learn() {
    let f: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("classification_metrics.json")).unwrap(),
    )
    .unwrap();
    let ints = |v: &serde_json::Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect::<Vec<_>>()
    };
    let classes: Vec<String> = f["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let m = class_metrics(&classes, &ints(&f["truth"]), &ints(&f["predicted"]));
    let e = &f["expected"];
    let close = |what: &str, ours: f64, theirs: &serde_json::Value| {
        assert!(
            (ours - theirs.as_f64().unwrap()).abs() < 1e-9,
            "{what}: {ours} vs {theirs}"
        )
    };
    close("accuracy", m.accuracy, &e["accuracy"]);
    close(
        "balanced_accuracy",
        m.balanced_accuracy,
        &e["balanced_accuracy"],
    );
    close("macro_f1", m.macro_f1, &e["macro_f1"]);
    for (c, s) in m.per_class.iter().enumerate() {
        close("precision", s.precision, &e["precision"][c]);
        close("recall", s.recall, &e["recall"][c]);
        close("f1", s.f1, &e["f1"][c]);
        assert_eq!(s.support, e["support"][c].as_u64().unwrap() as usize);
    }
    let confusion: Vec<Vec<usize>> = e["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .map(ints)
        .collect();
    assert_eq!(m.confusion, confusion);
    // The fixture has the edge cases it claims: a class never true, one rarely predicted.
    assert_eq!(m.per_class[5].support, 0);
    assert!(m
        .per_class
        .iter()
        .any(|s| s.predicted == 0 || s.predicted < s.support / 2));
}

/// `root/<class>/` folders holding the given sample photographs (copied).
fn image_folder(root: &Path, classes: &[(&str, &[PathBuf])]) {
    for (class, images) in classes {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for img in *images {
            std::fs::copy(img, dir.join(img.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn labelled_data_from_folders_and_manifests_with_clear_errors() {
    let tmp = tmpdir();
    let photos = im2gps3k_images(6);
    image_folder(
        &tmp.path().join("train"),
        &[("urban_area", &photos[..3]), ("rural", &photos[3..])],
    );
    let data = Labelled::load(&tmp.path().join("train"), None).unwrap();
    assert_eq!(data.classes, ["rural", "urban_area"]);
    assert_eq!(data.caption_names(), ["rural", "urban area"]);
    assert_eq!(data.items.iter().filter(|i| i.class == 1).count(), 3);
    // A symlinked class folder is a class like any other.
    std::fs::create_dir(tmp.path().join("linked")).unwrap();
    std::os::unix::fs::symlink(
        tmp.path().join("train/rural"),
        tmp.path().join("linked/rural"),
    )
    .unwrap();
    let linked = Labelled::load(&tmp.path().join("linked"), None).unwrap();
    assert_eq!((linked.classes.len(), linked.items.len()), (1, 3));

    let csv = tmp.path().join("labels.csv");
    let rows: String = photos
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{},{}\n", p.display(), ["a", "b"][i % 2]))
        .collect();
    std::fs::write(&csv, format!("image,scene\n{rows}")).unwrap();
    let from_csv = Labelled::load(&csv, Some("scene")).unwrap();
    assert_eq!((from_csv.classes.len(), from_csv.items.len()), (2, 6));
    let err = Labelled::load(&csv, None).unwrap_err().to_string();
    assert!(
        err.contains("no `label` column") && err.contains("--label-column"),
        "{err}"
    );

    // A class folder with no image names itself.
    std::fs::create_dir_all(tmp.path().join("train/empty_class")).unwrap();
    let err = format!(
        "{:#}",
        Labelled::load(&tmp.path().join("train"), None).unwrap_err()
    );
    assert!(
        err.contains("empty_class") && err.contains("holds no images"),
        "{err}"
    );
    // Splits whose class folders differ.
    image_folder(
        &tmp.path().join("val"),
        &[("urban_area", &photos[..1]), ("forest", &photos[1..2])],
    );
    let val = Labelled::load(&tmp.path().join("val"), None).unwrap();
    let err = val.aligned_to(&data.classes).unwrap_err().to_string();
    assert!(err.contains("forest") && err.contains("rural"), "{err}");
    // A split with a subset of the classes is re-indexed onto the training classes.
    image_folder(&tmp.path().join("test"), &[("urban_area", &photos[..2])]);
    let test = Labelled::load(&tmp.path().join("test"), None)
        .unwrap()
        .aligned_to(&data.classes)
        .unwrap();
    assert!(test.items.iter().all(|i| i.class == 1));
    assert!(Labelled::load(&tmp.path().join("missing"), None)
        .unwrap_err()
        .to_string()
        .contains("does not exist"));
}

#[test]
fn zero_shot_predictions_are_the_models_own_argmax() {
    let clip = Pretrained::load(&fixture("tiny-p14-336"), tch::Device::Cpu).unwrap();
    let names: Vec<String> = ["city street", "country road", "beach", "mountain pass"]
        .map(String::from)
        .to_vec();
    let templates = vec!["A Street View photo of {}.".to_string()];
    let text = class_text_embeddings(&clip, &names, &templates).unwrap();
    let photos = im2gps3k_images(10);
    let ours = zero_shot(&clip, &text, &photos, 4).unwrap();
    // Independently: the full CLIPModel forward on the same captions and pixels.
    let captions: Vec<String> = names
        .iter()
        .map(|n| templates[0].replace("{}", n))
        .collect();
    let (ids, mask) = clip.tokenize(&captions).unwrap();
    let out = tch::no_grad(|| {
        clip.model.forward(
            &ids,
            Some(&mask),
            &Encoder::new(&clip, 4).pixel_values(&photos).unwrap(),
        )
    });
    let probs = out.logits_per_image.softmax(-1, tch::Kind::Double);
    let (best, index) = probs.max_dim(-1, false);
    for (i, &(class, p)) in ours.iter().enumerate() {
        assert_eq!(class as i64, index.int64_value(&[i as i64]), "image {i}");
        assert!(
            (p - best.double_value(&[i as i64])).abs() < 1e-5,
            "image {i}: {p}"
        );
    }
    assert!(class_text_embeddings(&clip, &names, &["no placeholder".to_string()]).is_err());
}

#[test]
fn eval_classify_end_to_end() {
    let tmp = tmpdir();
    let photos = im2gps3k_images(9);
    image_folder(
        &tmp.path().join("data"),
        &[
            ("city", &photos[..3]),
            ("coast", &photos[3..6]),
            ("countryside", &photos[6..]),
        ],
    );
    let out = tmp.path().join("report");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_streetclip"))
        .args(["eval", "classify", "--model"])
        .arg(fixture("tiny-p14-336"))
        .arg("--data")
        .arg(tmp.path().join("data"))
        .args([
            "--template",
            "A photo of the {}.",
            "--template",
            "A Street View photo of the {}.",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(printed, written);
    assert_eq!(written["n"], 9);
    assert!(assert_rates_are_fractions("eval classify", &written) > 3);
    let confusion: Vec<u64> = written["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()))
        .collect();
    assert_eq!(confusion.iter().sum::<u64>(), 9);
    assert_eq!(
        std::fs::read_to_string(out.join("predictions.csv"))
            .unwrap()
            .lines()
            .count(),
        10
    );
    assert!(std::fs::read_to_string(out.join("confusion.csv"))
        .unwrap()
        .starts_with("true \\ predicted,city,coast,countryside"));
    assert!(std::fs::read_to_string(out.join("report.md"))
        .unwrap()
        .contains("| countryside | 3 |"));
    image::open(out.join("confusion.png")).unwrap();

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_streetclip"))
        .args(["eval", "classify", "--model"])
        .arg(fixture("tiny-p14-336"))
        .arg("--data")
        .arg(tmp.path().join("nowhere"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("nowhere") && !stderr.contains("panicked"),
        "{stderr}"
    );
}
