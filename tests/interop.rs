//! A model saved by streetclip: reloads bit-identically here, and loads in transformers
//! (`CLIPModel` / `CLIPProcessor.from_pretrained`) with no key warnings and the same outputs
//! as `streetclip embed` (scripts/check_hf_interop.py).

mod common;
use common::*;
use std::process::Command;
use streetclip::formats::pretrained::Pretrained;
use tch::Device;

fn demo_images() -> Vec<std::path::PathBuf> {
    ["coffee.jpg", "chelsea.jpg", "rocket.jpg"]
        .iter()
        .map(|f| root().join("assets/demo").join(f))
        .collect()
}

fn save_and_check(fixture_name: &str, texts: &[&str]) {
    let tmp = tmpdir();
    let export = tmp.path().join("export");
    let original = Pretrained::load(&fixture(fixture_name), Device::Cpu).unwrap();
    original.save(&export).unwrap();

    let reloaded = Pretrained::load(&export, Device::Cpu).unwrap();
    let a = streetclip::formats::weights::named_tensors(&original.model.vs);
    let b = streetclip::formats::weights::named_tensors(&reloaded.model.vs);
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(
            ta.equal(tb),
            "{fixture_name}: {na} changed in the round trip"
        );
    }
    assert_eq!(
        original.model.config, reloaded.model.config,
        "config.json round trip"
    );
    assert_eq!(
        original.preprocess, reloaded.preprocess,
        "preprocessor config round trip"
    );

    let embeds = tmp.path().join("embeds.safetensors");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_streetclip"));
    cmd.arg("embed")
        .arg("--model")
        .arg(&export)
        .arg("--out")
        .arg(&embeds);
    for image in demo_images() {
        cmd.arg("--image").arg(image);
    }
    for t in texts {
        cmd.arg("--text").arg(t);
    }
    let status = cmd.status().unwrap();
    assert!(status.success());
    let mut args = vec![
        root().join("scripts/check_hf_interop.py").into_os_string(),
        export.into(),
        embeds.into(),
    ];
    args.extend(texts.iter().map(Into::into));
    let report = run_python(&args);
    eprintln!("{fixture_name}: {report}");
}

#[test]
fn openai_style_model_round_trips_through_transformers() {
    save_and_check(
        "tiny-p14-336",
        &[
            "A Street View photo in Paris, France.",
            "A Street View photo from São Paulo.",
            "東京",
        ],
    );
}

#[test]
fn newer_style_model_round_trips_through_transformers() {
    // Small vocabulary, no tokenizer of its own: images only.
    save_and_check("tiny-p32-224", &[]);
}

#[test]
fn model_card_snippet_and_predict_give_the_same_probabilities() {
    // The StreetCLIP card's Python snippet (CLIPProcessor + CLIPModel on PIL.Image.open) against
    // `streetclip predict --template "{}"` on real photos: preprocessing is PIL's to the bit, so
    // the probabilities agree to float32 rounding.
    let tmp = tmpdir();
    let export = tmp.path().join("export");
    Pretrained::load(&fixture("tiny-p14-336"), Device::Cpu)
        .unwrap()
        .save(&export)
        .unwrap();
    let labels = "San Jose,San Diego,Los Angeles,Las Vegas,San Francisco";
    let images = im2gps3k_images(24);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_streetclip"));
    cmd.args([
        "predict",
        "--template",
        "{}",
        "--json",
        "--top-k",
        "5",
        "--labels",
        labels,
        "--model",
    ])
    .arg(&export)
    .args(&images);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(assert_rates_are_fractions("predict --json", &ours), 24 * 5);
    let mut args = vec![
        root()
            .join("scripts/model_card_snippet.py")
            .into_os_string(),
        export.into(),
        labels.into(),
    ];
    args.extend(images.iter().map(|p| p.clone().into_os_string()));
    let theirs: serde_json::Value = serde_json::from_str(&run_python(&args)).unwrap();
    let mut worst: f64 = 0.0;
    for (o, t) in ours
        .as_array()
        .unwrap()
        .iter()
        .zip(theirs.as_array().unwrap())
    {
        assert_eq!(o["image"], t["image"]);
        for r in o["ranking"].as_array().unwrap() {
            let p = r["probability"].as_f64().unwrap();
            let q = t["probabilities"][r["label"].as_str().unwrap()]
                .as_f64()
                .unwrap();
            worst = worst.max((p - q).abs());
        }
    }
    eprintln!(
        "{} photos: max probability difference {worst:e}",
        images.len()
    );
    assert!(worst <= 1e-5, "max probability difference {worst:e}");
}
