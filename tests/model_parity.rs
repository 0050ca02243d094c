//! The tch CLIP against transformers' `CLIPModel` on seeded random tiny models
//! (scripts/make_fixtures.py): names, shapes, features, logits, loss and every gradient.

mod common;
use common::*;
use streetclip::model::{cut_after_pooled, ClipModel};
use streetclip::train::loss::clip_loss;
use tch::{Device, Kind, Tensor};

const MODELS: [&str; 2] = ["tiny-p14-336", "tiny-p32-224"];

#[test]
fn variable_names_and_shapes_equal_the_checkpoint_keys() {
    for name in MODELS {
        let dir = fixture(name);
        let model = ClipModel::load(&dir, Device::Cpu).unwrap();
        let file = streetclip::formats::tensor_io::read(&dir.join("model.safetensors")).unwrap();
        let from_file: Vec<(String, Vec<i64>)> =
            file.iter().map(|(n, t)| (n.clone(), t.size())).collect();
        let ours: Vec<(String, Vec<i64>)> = streetclip::formats::weights::named_tensors(&model.vs)
            .iter()
            .map(|(n, t)| (n.clone(), t.size()))
            .collect();
        assert_eq!(ours, from_file, "{name}");
    }
}

#[test]
fn the_checked_in_models_are_the_ones_the_reference_regenerates() {
    // The references are computed on this machine from seeds; they must describe the very
    // weights the tests load.
    for name in MODELS {
        let ours =
            streetclip::formats::tensor_io::read(&fixture(name).join("model.safetensors")).unwrap();
        let regenerated = streetclip::formats::tensor_io::read(
            &reference_dir().join(name).join("model.safetensors"),
        )
        .unwrap();
        assert_eq!(ours.len(), regenerated.len());
        for ((a, x), (b, y)) in ours.iter().zip(&regenerated) {
            assert_eq!(a, b);
            assert_eq!(max_diff(x, y), 0.0, "{name}: {a}");
        }
    }
}

#[test]
fn features_logits_match_transformers() {
    for name in MODELS {
        let model = ClipModel::load(&fixture(name), Device::Cpu).unwrap();
        let e = expected(name);
        let pixels = e["pixel_values"].to_kind(Kind::Float);
        let (ids, mask) = (&e["input_ids"], &e["attention_mask"]);
        tch::no_grad(|| {
            assert_close(
                &format!("{name} image_features"),
                &model.image_features(&pixels),
                &e["image_features"],
                1e-4,
            );
            assert_close(
                &format!("{name} text_features"),
                &model.text_features(ids, Some(mask)),
                &e["text_features"],
                1e-4,
            );
            let out = model.forward(ids, Some(mask), &pixels);
            assert_close(
                &format!("{name} image_embeds"),
                &out.image_embeds,
                &e["image_embeds"],
                1e-4,
            );
            assert_close(
                &format!("{name} text_embeds"),
                &out.text_embeds,
                &e["text_embeds"],
                1e-4,
            );
            assert_close(
                &format!("{name} logits_per_image"),
                &out.logits_per_image,
                &e["logits_per_image"],
                1e-4,
            );
        });
    }
}

#[test]
fn padding_mask_is_optional_for_pooled_text() {
    // HF pools at the eos token, which never attends to the padding after it.
    let model = ClipModel::load(&fixture("tiny-p14-336"), Device::Cpu).unwrap();
    let e = expected("tiny-p14-336");
    let without = tch::no_grad(|| model.text_features(&e["input_ids"], None));
    assert_close(
        "text_features without mask",
        &without,
        &e["text_features"],
        1e-4,
    );
}

#[test]
fn texts_cut_after_their_pooled_token_pool_as_the_whole_context() {
    // Training cuts each micro-batch's texts after the last position any of them is pooled at
    // (the legacy argmax rule for tiny-p32-224, the first end-of-text for tiny-p14-336).
    for name in MODELS {
        let model = ClipModel::load(&fixture(name), Device::Cpu).unwrap();
        let e = expected(name);
        let (ids, mask) = (&e["input_ids"], &e["attention_mask"]);
        let (n, context) = ids.size2().unwrap();
        let eos = model.config.text_config.eos_token_id;
        let whole = tch::no_grad(|| model.text_features(ids, Some(mask)));
        let mut lengths = vec![];
        for size in [1, 2, n] {
            for s in (0..n).step_by(size as usize) {
                let rows = |t: &Tensor| t.narrow(0, s, size);
                let (cut_ids, cut_mask) = cut_after_pooled(&rows(ids), &rows(mask), eos);
                assert!(cut_mask.is_none(), "{name}: right padding needs no mask");
                lengths.push(cut_ids.size()[1]);
                let pooled = tch::no_grad(|| model.text_features(&cut_ids, None));
                let what = format!("{name} rows {s}..{} cut to {}", s + size, cut_ids.size()[1]);
                assert_rel_close(&what, &pooled, &rows(&whole), 1e-6);
            }
        }
        assert!(
            lengths.iter().any(|&l| l < context / 2),
            "{name}: {lengths:?}"
        );
        assert!(lengths.iter().all(|&l| l <= context), "{name}: {lengths:?}");
        // A row that hides a token before its pooled one keeps the mask, cut the same.
        let hiding = mask.copy();
        let _ = hiding.get(n - 1).get(1).fill_(0);
        let (cut_ids, cut_mask) = cut_after_pooled(ids, &hiding, eos);
        let cut_mask = cut_mask.expect("a hidden token before the pooled one keeps the mask");
        assert_eq!(cut_mask.size(), cut_ids.size());
        let pooled = tch::no_grad(|| model.text_features(&cut_ids, Some(&cut_mask)));
        let reference = tch::no_grad(|| model.text_features(ids, Some(&hiding)));
        assert_rel_close(&format!("{name} hidden token"), &pooled, &reference, 1e-6);
    }
    // No rows: nothing to cut.
    let none = Tensor::zeros([0, 77], (Kind::Int64, Device::Cpu));
    let (ids, mask) = cut_after_pooled(&none, &none, 49407);
    assert_eq!((ids.size(), mask.is_none()), (vec![0, 77], true));
}

#[test]
fn loss_and_every_gradient_match_transformers() {
    // Inference's features (transformers' QuickGELU formula) and training's (fused SiLU).
    for (fixture_name, training) in MODELS.iter().flat_map(|m| [(*m, false), (*m, true)]) {
        let model = ClipModel::load(&fixture(fixture_name), Device::Cpu).unwrap();
        let name = format!("{fixture_name} (training features: {training})");
        let e = expected(fixture_name);
        let (ids, mask) = (&e["input_ids"], Some(&e["attention_mask"]));
        let pixels = e["pixel_values"].to_kind(Kind::Float);
        let out = match training {
            false => model.forward(ids, mask, &pixels),
            true => {
                let (image, text) = model.training_features(&pixels, ids, mask);
                model.logits(&image, &text)
            }
        };
        let loss = clip_loss(&out.logits_per_text);
        assert_rel_close(&format!("{name} loss"), &loss, &e["loss"], 1e-4);
        loss.backward();
        let vars = model.vs.variables();
        assert_eq!(
            vars.len(),
            e.keys().filter(|k| k.starts_with("grad.")).count(),
            "{name}: one gradient per parameter"
        );
        let grads: Vec<(String, Tensor)> = vars.into_iter().map(|(n, v)| (n, v.grad())).collect();
        let reference = |n: &str| e[&format!("grad.{n}")].shallow_clone();
        assert_gradients_close(&format!("{name} grad"), &grads, reference, 1e-4);
    }
}

#[test]
fn presets_have_transformers_parameter_layout() {
    use streetclip::model::ClipConfig;
    let tmp = tmpdir();
    for name in ["ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14-336"] {
        let cfg = ClipConfig::preset(name).unwrap();
        let path = tmp.path().join("config.json");
        std::fs::write(&path, serde_json::to_vec(&cfg.to_hf_json()).unwrap()).unwrap();
        let hf: std::collections::BTreeMap<String, Vec<i64>> = serde_json::from_str(&run_python([
            root().join("scripts/hf_param_shapes.py").into_os_string(),
            path.into_os_string(),
        ]))
        .unwrap();
        let model = ClipModel::new(cfg, Device::Cpu).unwrap();
        let ours: std::collections::BTreeMap<String, Vec<i64>> = model
            .vs
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.size()))
            .collect();
        assert_eq!(ours, hf, "{name}");
        if name == "ViT-L/14-336" {
            // ../shared/FIELD_NOTES.md: 590 tensors, 427,944,193 parameters.
            assert_eq!(ours.len(), 590);
            assert_eq!(
                ours.values()
                    .map(|s| s.iter().product::<i64>())
                    .sum::<i64>(),
                427_944_193
            );
        }
    }
}

#[test]
fn sharded_checkpoints_load_like_one_file() {
    let tmp = tmpdir();
    let src = fixture("tiny-p32-224");
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let mut tensors = streetclip::formats::tensor_io::read(&src.join("model.safetensors")).unwrap();
    // A legacy buffer that old hub checkpoints carry: ignored.
    tensors.push((
        "text_model.embeddings.position_ids".into(),
        tch::Tensor::arange(40, (Kind::Int64, Device::Cpu)).unsqueeze(0),
    ));
    let half = tensors.len() / 2;
    let (a, b) = tensors.split_at(half);
    let mut map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        streetclip::formats::tensor_io::write(&tmp.path().join(file), part).unwrap();
        for (n, _) in part {
            map.insert(n.clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let sharded = ClipModel::load(tmp.path(), Device::Cpu).unwrap();
    let single = ClipModel::load(&src, Device::Cpu).unwrap();
    let (x, y) = (
        streetclip::formats::weights::named_tensors(&sharded.vs),
        streetclip::formats::weights::named_tensors(&single.vs),
    );
    assert_eq!(x.len(), y.len());
    assert!(x
        .iter()
        .zip(&y)
        .all(|((na, ta), (nb, tb))| na == nb && ta.equal(tb)));
}

/// The peak resident set (`VmHWM`) of `streetclip ARGS` while it ran, read from /proc every
/// few milliseconds. Only readings after its exec count: before it, the child still shares this
/// test's memory (getrusage's RUSAGE_CHILDREN records that too, so it cannot be used here).
fn peak_rss_of_streetclip(args: &[&std::ffi::OsStr]) -> u64 {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_streetclip"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status) {
            let field = |key: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .map(str::trim)
            };
            if field("Name:") == Some("streetclip") {
                let kib =
                    field("VmHWM:").and_then(|v| v.trim_end_matches(" kB").parse::<u64>().ok());
                peak = peak.max(kib.unwrap_or(0) * 1024);
            }
        }
        if let Some(exit) = child.try_wait().unwrap() {
            assert!(exit.success(), "streetclip {args:?} failed");
            return peak;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// A model is loaded at the memory of one copy of its weights: the parameters are the mapped
/// file's pages, nothing is initialised first (before: random initialisation, the whole file
/// read, then copied — three copies). `streetclip embed` of one photo with a 605 MB ViT-B/32
/// peaks at most 1.2 x the weights above the same command with the 1 MB tiny model, and its
/// features equal the in-memory model's that wrote the file.
#[test]
fn a_model_is_loaded_at_the_memory_of_its_weights() {
    let tmp = tmpdir();
    let big = tmp.path().join("vit-b-32");
    tch::manual_seed(0);
    let model = ClipModel::new(
        streetclip::model::ClipConfig::preset("ViT-B/32").unwrap(),
        Device::Cpu,
    )
    .unwrap();
    std::fs::create_dir_all(&big).unwrap();
    streetclip::formats::weights::save(&model.vs, &big).unwrap();
    std::fs::write(
        big.join("config.json"),
        model.config.to_hf_json().to_string(),
    )
    .unwrap();
    let weights = std::fs::metadata(big.join("model.safetensors"))
        .unwrap()
        .len();
    let photo = im2gps3k_images(1).remove(0);
    let peak = |dir: &std::path::Path, out: &str| {
        let out = tmp.path().join(out);
        let args = [
            "embed".as_ref(),
            "--model".as_ref(),
            dir.as_os_str(),
            "--image".as_ref(),
            photo.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ];
        (peak_rss_of_streetclip(&args), out)
    };
    let (baseline, _) = peak(&fixture("tiny-p32-224"), "tiny.safetensors");
    let (loaded, features) = peak(&big, "big.safetensors");
    let above = loaded.saturating_sub(baseline);
    eprintln!("embed peak RSS: tiny {baseline} B, ViT-B/32 {loaded} B: {above} B above for {weights} B of weights");
    assert!(
        (above as f64) < 1.2 * weights as f64,
        "loading took {above} B for {weights} B of weights"
    );
    let ours = streetclip::formats::tensor_io::read(&features).unwrap();
    let pixels = &ours.iter().find(|(n, _)| n == "pixel_values").unwrap().1;
    let embeds = &ours.iter().find(|(n, _)| n == "image_embeds").unwrap().1;
    let copied = tch::no_grad(|| model.image_features(pixels));
    // The child may split the matmuls across another number of threads: rounding apart.
    assert_close(
        "image features from the mapped weights",
        embeds,
        &copied,
        1e-5,
    );
}
