//! Bad input gets one clear line naming the path or option, exit status 1, and no panic.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

fn streetclip(args: &[&dyn AsRef<std::ffi::OsStr>]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_streetclip"))
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Runs `predict` with `model`, `labels` and `image` and checks the failure is clean.
fn assert_clean_failure(model: &Path, labels: &str, image: &Path, must_mention: &[&str]) {
    assert_fails_with(1, model, labels, image, must_mention)
}

/// `predict` of one image that cannot be used: nothing produced, exit status 3.
fn assert_nothing_usable(image: &Path, must_mention: &[&str]) {
    let model = fixture("tiny-p14-336");
    assert_fails_with(3, &model, "a,b", image, must_mention)
}

fn assert_fails_with(
    expected: i32,
    model: &Path,
    labels: &str,
    image: &Path,
    must_mention: &[&str],
) {
    let (code, stderr) =
        streetclip(&[&"predict", &"--model", &model, &"--labels", &labels, &image]);
    assert_eq!(code, expected, "exit status; stderr: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "no panic: {stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    for m in must_mention {
        assert!(stderr.contains(m), "`{m}` in: {stderr}");
    }
}

/// A copy of the tiny fixture model in a temporary directory, to break.
fn model_copy() -> tempfile::TempDir {
    let tmp = tmpdir();
    for entry in std::fs::read_dir(fixture("tiny-p14-336")).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
    }
    tmp
}

fn demo_image() -> std::path::PathBuf {
    root().join("assets/demo/coffee.jpg")
}

#[test]
fn missing_model_directory() {
    assert_clean_failure(
        Path::new("/nonexistent/model"),
        "a,b",
        &demo_image(),
        &["/nonexistent/model", "does not exist"],
    );
}

#[test]
fn missing_image() {
    assert_nothing_usable(
        Path::new("/nonexistent.jpg"),
        &["/nonexistent.jpg", "does not exist"],
    );
}

#[test]
fn corrupt_image() {
    let tmp = tmpdir();
    let bad = tmp.path().join("broken.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff\xe0 this is not really a jpeg").unwrap();
    assert_nothing_usable(&bad, &["broken.jpg", "cannot decode"]);
}

#[test]
fn truncated_image() {
    let tmp = tmpdir();
    let bad = tmp.path().join("half.jpg");
    let bytes = std::fs::read(demo_image()).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    assert_nothing_usable(&bad, &["half.jpg"]);
}

#[test]
fn truncated_safetensors() {
    let tmp = model_copy();
    let weights = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 3]).unwrap();
    assert_clean_failure(
        tmp.path(),
        "a,b",
        &demo_image(),
        &["model.safetensors", "not a valid safetensors"],
    );
}

#[test]
fn garbage_safetensors() {
    let tmp = model_copy();
    std::fs::write(tmp.path().join("model.safetensors"), b"garbage").unwrap();
    assert_clean_failure(tmp.path(), "a,b", &demo_image(), &["model.safetensors"]);
}

#[test]
fn shapes_that_do_not_match_the_config() {
    let tmp = model_copy();
    let path = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"projection_dim\": 24", "\"projection_dim\": 32");
    std::fs::write(&path, text).unwrap();
    assert_clean_failure(
        tmp.path(),
        "a,b",
        &demo_image(),
        &[
            "does not match",
            "shape of `text_projection.weight`",
            "[24, 16]",
            "[32, 16]",
        ],
    );
}

#[test]
fn missing_and_unexpected_keys_are_listed_together() {
    let tmp = model_copy();
    let path = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&path).unwrap().replacen(
        "\"num_hidden_layers\": 2",
        "\"num_hidden_layers\": 3",
        1,
    );
    std::fs::write(&path, text).unwrap();
    let (code, stderr) = streetclip(&[
        &"predict",
        &"--model",
        &tmp.path(),
        &"--labels",
        &"a",
        &demo_image(),
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("missing `text_model.encoder.layers.2.mlp.fc1.weight`"),
        "{stderr}"
    );
}

#[test]
fn a_pytorch_bin_that_is_not_a_torch_save_file_is_a_clear_error() {
    let tmp = model_copy();
    std::fs::rename(
        tmp.path().join("model.safetensors"),
        tmp.path().join("pytorch_model.bin"),
    )
    .unwrap();
    assert_clean_failure(
        tmp.path(),
        "a,b",
        &demo_image(),
        &["pytorch_model.bin", "is not a torch.save archive"],
    );
}

#[test]
fn invalid_config_json() {
    let tmp = model_copy();
    std::fs::write(tmp.path().join("config.json"), "{ not json").unwrap();
    assert_clean_failure(tmp.path(), "a,b", &demo_image(), &["config.json"]);
}

#[test]
fn empty_label_list() {
    assert_clean_failure(
        &fixture("tiny-p14-336"),
        "",
        &demo_image(),
        &["--labels is empty"],
    );
    assert_clean_failure(
        &fixture("tiny-p14-336"),
        "a,,b",
        &demo_image(),
        &["empty label at position 2"],
    );
}

#[test]
fn unknown_device() {
    let (code, stderr) = streetclip(&[
        &"predict",
        &"--model",
        &fixture("tiny-p14-336"),
        &"--labels",
        &"a",
        &"--device",
        &"tpu",
        &demo_image(),
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("unknown device `tpu`"), "{stderr}");
}

#[test]
fn embed_with_nothing_to_embed() {
    let tmp = tmpdir();
    let (code, stderr) = streetclip(&[
        &"embed",
        &"--model",
        &fixture("tiny-p14-336"),
        &"--out",
        &tmp.path().join("x.safetensors"),
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("nothing to embed"), "{stderr}");
}

#[test]
fn tokenizer_that_does_not_fit_the_model() {
    // tiny-p32-224 has 1000 token ids; the bundled CLIP tokenizer produces ids up to 49407.
    let tmp = tmpdir();
    let (code, stderr) = streetclip(&[
        &"embed",
        &"--model",
        &fixture("tiny-p32-224"),
        &"--text",
        &"hello",
        &"--out",
        &tmp.path().join("x.safetensors"),
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("vocabulary has 1000 entries"), "{stderr}");
}

#[test]
fn a_folder_without_images_is_nothing_to_do() {
    let tmp = tmpdir();
    std::fs::write(tmp.path().join("notes.txt"), "not an image").unwrap();
    assert_nothing_usable(tmp.path(), &["no image given", "searched for .jpg"]);
}

#[test]
fn a_model_with_nan_weights_is_an_error_not_nan_percent() {
    let tmp = model_copy();
    let file = tmp.path().join("model.safetensors");
    let mut tensors = streetclip::formats::tensor_io::read(&file).unwrap();
    let (_, t) = tensors
        .iter_mut()
        .find(|(n, _)| n == "visual_projection.weight")
        .unwrap();
    *t = t.full_like(f64::NAN);
    streetclip::formats::tensor_io::write(&file, &tensors).unwrap();
    assert_clean_failure(tmp.path(), "a,b", &demo_image(), &["non-finite", "damaged"]);
}

/// `streetclip ARGS` fails with `code` and one message holding every `must_mention`.
fn assert_message(args: &[&dyn AsRef<std::ffi::OsStr>], code: i32, must_mention: &[&str]) {
    let (got, stderr) = streetclip(args);
    assert_eq!(got, code, "exit status; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    for m in must_mention {
        assert!(stderr.contains(m), "`{m}` in: {stderr}");
    }
}

#[test]
fn counts_of_zero_are_refused_by_the_parser() {
    let model = fixture("tiny-p14-336");
    let image = demo_image();
    for flag in ["--top-k", "--batch-size"] {
        assert_message(
            &[
                &"predict",
                &"--model",
                &model,
                &"--labels",
                &"a,b",
                &flag,
                &"0",
                &image,
            ],
            2,
            &[flag, "must be at least 1"],
        );
    }
    assert_message(
        &[&"eval", &"geo", &"--model", &model, &"--limit", &"0"],
        2,
        &["--limit", "must be at least 1"],
    );
}

#[test]
fn eval_geo_without_data_names_the_manifest_option() {
    assert_message(
        &[&"eval", &"geo", &"--model", &fixture("tiny-p14-336")],
        1,
        &["--manifest", "IMG_ID,LAT,LON"],
    );
}

#[test]
fn an_unsupported_format_says_what_to_convert_to() {
    let tmp = tmpdir();
    let gif = tmp.path().join("still.gif");
    std::fs::write(&gif, b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").unwrap();
    assert_nothing_usable(
        &gif,
        &["still.gif", "Gif", "convert it to JPEG, PNG or WebP"],
    );
}

#[test]
fn export_of_the_checkpoints_folder_suggests_its_newest_step() {
    let tmp = tmpdir();
    for step in ["step-00000004", "step-00000008"] {
        let dir = tmp.path().join("checkpoints").join(step);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("state.json"), "{}").unwrap();
        std::fs::write(dir.join("model.safetensors"), "").unwrap();
    }
    let checkpoints = tmp.path().join("checkpoints");
    assert_message(
        &[
            &"export",
            &"--checkpoint",
            &checkpoints,
            &"--out",
            &tmp.path().join("e"),
        ],
        1,
        &["holds checkpoints", "--checkpoint", "step-00000008"],
    );
    // A step that is not there (six digits, as an old help text had it): the ones that are.
    assert_message(
        &[
            &"export",
            &"--checkpoint",
            &checkpoints.join("step-000046"),
            &"--out",
            &tmp.path().join("e"),
        ],
        1,
        &["step-000046 does not exist", "step-00000004, step-00000008"],
    );
}

#[test]
fn help_examples_that_need_no_prior_run_work_as_written() {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_streetclip"));
    for command in ["captions", "geocells", "synth-data"] {
        let help = Command::new(bin).args(["help", command]).output().unwrap();
        let text = String::from_utf8_lossy(&help.stdout).to_string();
        let lines: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("Example"))
            .filter_map(|l| l.strip_prefix("  streetclip "))
            .collect();
        assert!(!lines.is_empty(), "{command}: no example in {text}");
        for line in lines {
            let o = Command::new("sh")
                .arg("-c")
                .arg(format!("{} {line}", bin.display()))
                .current_dir(root())
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "`streetclip {line}`: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
}

#[test]
fn a_bad_override_is_named_not_a_line_of_merged_text() {
    let config = root().join("configs/demo.yaml");
    let out = tmpdir();
    for (set, mention) in [
        ("optim.learning_rate=1e-4", "unknown field `learning_rate`"),
        ("train.micro_batch_size=many", "invalid type"),
    ] {
        let (code, stderr) = streetclip(&[
            &"train",
            &"--config",
            &config,
            &"--out",
            &out.path(),
            &"--set",
            &set,
        ]);
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains(&format!("--set {set}: ")), "{stderr}");
        assert!(
            stderr.contains(mention) && stderr.contains("config defaults"),
            "{stderr}"
        );
        assert!(!stderr.contains("line"), "no line of merged text: {stderr}");
    }
}

#[test]
fn captions_with_a_limit_count_what_they_show() {
    let out = Command::new(env!("CARGO_BIN_EXE_streetclip"))
        .args(["captions", "--limit", "3", "--manifest"])
        .arg(im2gps3k_sample().join("meta.csv"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    assert!(stderr.starts_with("3 of 300 samples captioned"), "{stderr}");
}

#[test]
fn a_hub_id_is_read_from_the_local_cache_or_names_the_download_command() {
    let home = tmpdir();
    let predict = || {
        Command::new(env!("CARGO_BIN_EXE_streetclip"))
            .args(["predict", "--model", "someorg/tiny-clip", "--labels", "a,b"])
            .arg(demo_image())
            .env("HF_HOME", home.path())
            .env_remove("HF_HUB_CACHE")
            .output()
            .unwrap()
    };
    let missing = predict();
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("hf download someorg/tiny-clip --local-dir checkpoints/tiny-clip"),
        "{stderr}"
    );
    // As `hf download` / `from_pretrained` leave it: the snapshot `refs/main` names.
    let repo = home.path().join("hub/models--someorg--tiny-clip");
    let snapshot = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    for entry in std::fs::read_dir(fixture("tiny-p14-336")).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, snapshot.join(p.file_name().unwrap())).unwrap();
    }
    let cached = predict();
    assert!(
        cached.status.success(),
        "{}",
        String::from_utf8_lossy(&cached.stderr)
    );
    assert!(String::from_utf8_lossy(&cached.stdout)
        .starts_with(&format!("{}\n", demo_image().display())));
}

#[test]
fn integer_extremes_are_refused_not_wrapped() {
    let model = fixture("tiny-p14-336");
    let image = demo_image();
    for value in ["9223372036854775808", "18446744073709551616", "65537"] {
        assert_message(
            &[
                &"predict",
                &"--model",
                &model,
                &"--labels",
                &"a,b",
                &"--batch-size",
                &value,
                &image,
            ],
            2,
            &["--batch-size", "too large", "65536"],
        );
    }
    let tmp = tmpdir();
    let manifest = tmp.path().join("m.csv");
    std::fs::write(
        &manifest,
        format!("image,lat,lon\n{},48.85,2.35\n", image.display()),
    )
    .unwrap();
    for (section, key) in [
        (
            "{geocells: {neighbours: 18446744073709551615}}",
            "geo.geocells.neighbours",
        ),
        ("{top_k: 10000000000}", "geo.top_k"),
    ] {
        let cfg = tmp.path().join("geo.yaml");
        std::fs::write(&cfg, format!("geo: {section}\n")).unwrap();
        assert_message(
            &[
                &"eval",
                &"geo",
                &"--model",
                &model,
                &"--manifest",
                &manifest,
                &"--config",
                &cfg,
            ],
            1,
            &[key, "at most"],
        );
    }
}

#[test]
fn hostile_model_configs_are_refused_before_any_tensor_is_built() {
    for (edit, must) in [
        (r#""hidden_size": -768"#, "hidden_size = -768"),
        (
            r#""hidden_size": 1099511627776"#,
            "hidden_size = 1099511627776",
        ),
        (
            r#""num_hidden_layers": 1000000000"#,
            "num_hidden_layers = 1000000000",
        ),
        (r#""num_channels": 0"#, "num_channels = 0"),
        (r#""image_size": 0"#, "image_size = 0"),
        (r#""projection_dim": 0"#, "projection_dim = 0"),
        (
            r#""num_hidden_layers": 600"#,
            "its weights (model.safetensors) hold only",
        ),
    ] {
        let tmp = model_copy();
        let path = tmp.path().join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let (key, value) = edit.split_once(": ").unwrap();
        let key = key.trim_matches('"');
        let value: serde_json::Value = serde_json::from_str(value).unwrap();
        let section = if key == "projection_dim" {
            &mut config
        } else {
            &mut config["vision_config"]
        };
        section[key] = value;
        std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
        assert_clean_failure(tmp.path(), "a,b", &demo_image(), &[must]);
    }
}

#[test]
fn a_zero_image_std_is_named_not_called_damaged_weights() {
    let tmp = model_copy();
    let path = tmp.path().join("preprocessor_config.json");
    let mut pre: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    pre["image_std"] = serde_json::json!([0.0, 0.0, 0.0]);
    std::fs::write(&path, serde_json::to_vec(&pre).unwrap()).unwrap();
    assert_clean_failure(
        tmp.path(),
        "a,b",
        &demo_image(),
        &["preprocessor_config.json", "image_std", "> 0"],
    );
}

#[test]
fn pipes_and_devices_are_named_for_what_they_are() {
    let model = fixture("tiny-p14-336");
    assert_nothing_usable(Path::new("/dev/zero"), &["/dev/zero", "is a device"]);
    let tmp = tmpdir();
    let fifo = tmp.path().join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    assert_nothing_usable(&fifo, &["fifo", "is a pipe"]);
    assert_message(
        &[&"eval", &"geo", &"--model", &model, &"--manifest", &fifo],
        1,
        &["fifo", "is a pipe"],
    );
}

#[test]
fn a_missing_local_model_says_it_was_taken_for_a_path_and_how_to_fill_it() {
    let image = demo_image();
    // `checkpoints/` exists in the clone, so this is a local path, not the hub id
    // `checkpoints/streetclip`.
    let missing = root().join("checkpoints/streetclip-missing-for-test");
    let relative = Path::new("checkpoints/streetclip-missing-for-test");
    let (code, stderr) = Command::new(env!("CARGO_BIN_EXE_streetclip"))
        .current_dir(root())
        .args(["predict", "--labels", "a,b", "--model"])
        .arg(relative)
        .arg(&image)
        .output()
        .map(|o| {
            (
                o.status.code(),
                String::from_utf8_lossy(&o.stderr).to_string(),
            )
        })
        .unwrap();
    assert!(!missing.exists());
    assert_eq!(code, Some(1), "{stderr}");
    for m in [
        "taken as a local path",
        "hf download geolocal/StreetCLIP --local-dir checkpoints/streetclip-missing-for-test",
    ] {
        assert!(stderr.contains(m), "`{m}` in: {stderr}");
    }
    assert!(!stderr.contains("hub model"), "{stderr}");
    assert_clean_failure(
        Path::new("/nonexistent/ViT-L-14-336px.pt"),
        "a,b",
        &image,
        &["checkpoint file /nonexistent/ViT-L-14-336px.pt does not exist"],
    );
}
