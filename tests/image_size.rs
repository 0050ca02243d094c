//! `model.image_size`: a model made for one image size used at another. The position
//! embeddings resize as open_clip's `resize_pos_embed` does, and the resized export loads in
//! transformers without a warning and embeds there as here.

mod common;

use common::{assert_close, fixture, im2gps3k_images, root, run_python, tmpdir, TINY_MODEL_YAML};
use std::collections::HashMap;
use streetclip::encode::Encoder;
use streetclip::formats::pretrained::Pretrained;
use streetclip::formats::tensor_io;
use tch::{Device, Kind, Tensor};

/// `scripts/image_size_reference.py ARGS` (which imports `clip_packages` from beside itself).
fn reference(args: &[&std::ffi::OsStr]) -> String {
    let script = root().join("scripts/image_size_reference.py");
    run_python(std::iter::once(script.as_os_str()).chain(args.iter().copied()))
}

fn tensors(path: &std::path::Path) -> HashMap<String, Tensor> {
    tensor_io::read(path).unwrap().into_iter().collect()
}

#[test]
fn position_embeddings_resize_as_open_clips_resize_pos_embed() {
    // ViT-B/16 at 224 px (14 x 14 patches and the class token, 768 wide) to 336 px (21 x 21).
    tch::manual_seed(0);
    let pos = Tensor::randn([197, 768], (Kind::Float, Device::Cpu));
    let tmp = tmpdir();
    let (src, dst) = (
        tmp.path().join("in.safetensors"),
        tmp.path().join("out.safetensors"),
    );
    tensor_io::write(&src, &[("pos".into(), pos.shallow_clone())]).unwrap();
    reference(&[
        "resize".as_ref(),
        src.as_os_str(),
        dst.as_os_str(),
        "21".as_ref(),
    ]);
    let ours = streetclip::model::resize_position_embedding(&pos, 21);
    assert_eq!(ours.size(), [442, 768]);
    assert_close(
        "resized position embeddings",
        &ours,
        &tensors(&dst)["pos"],
        1e-6,
    );
    assert!(
        ours.get(0).equal(&pos.get(0)),
        "the class token's row is kept"
    );
}

#[test]
fn a_resized_export_loads_in_transformers_without_a_warning_and_embeds_alike() {
    let tmp = tmpdir();
    let dir = tmp.path().join("export");
    let clip = Pretrained::load(&fixture("tiny-p32-224"), Device::Cpu)
        .unwrap()
        .with_image_size(288)
        .unwrap();
    clip.save(&dir).unwrap();
    let reloaded = Pretrained::load(&dir, Device::Cpu).unwrap();
    assert_eq!(reloaded.preprocess.output_size(), (288, 288));
    assert_eq!(reloaded.model.config.vision_config.image_size, 288);
    let encoder = Encoder::new(&reloaded, 4);
    let pixels = encoder.pixel_values(&im2gps3k_images(3)).unwrap();
    assert_eq!(pixels.size(), [3, 3, 288, 288]);
    let (px, out) = (
        tmp.path().join("pixels.safetensors"),
        tmp.path().join("embeds.safetensors"),
    );
    tensor_io::write(&px, &[("pixel_values".into(), pixels.shallow_clone())]).unwrap();
    let report = reference(&[
        "load".as_ref(),
        dir.as_os_str(),
        px.as_os_str(),
        out.as_os_str(),
    ]);
    let report: serde_json::Value = serde_json::from_str(report.lines().last().unwrap()).unwrap();
    for key in ["missing", "unexpected", "mismatched", "warnings"] {
        assert_eq!(report[key], serde_json::json!([]), "{key}: {report}");
    }
    let ours = encoder.image_features(&pixels);
    assert_close(
        "image embeddings",
        &ours,
        &tensors(&out)["image_embeds"],
        1e-5,
    );
}

#[test]
fn an_image_size_that_is_not_a_multiple_of_the_patch_is_refused_naming_the_key() {
    let tmp = tmpdir();
    let config = tmp.path().join("config.yaml");
    let data = format!(
        "data:\n  manifest: {}/scenes/manifest.csv\n  synth: {{countries: 2, cities_per_country: 1, per_city: 4, seed: 1}}\n",
        tmp.path().display()
    );
    std::fs::write(
        &config,
        format!("{TINY_MODEL_YAML}  image_size: 36\n{data}"),
    )
    .unwrap();
    let out = common::run_command("train", &config, &tmp.path().join("run"), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("model.image_size = 36") && err.contains("patch size (8)"),
        "{err}"
    );
}
