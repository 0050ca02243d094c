//! The tch CLIP against transformers' `CLIPModel` on seeded random tiny models
//! (scripts/make_fixtures.py): names, shapes, features, logits, loss and every gradient.

mod common;
use common::*;
use streetclip::model::ClipModel;
use streetclip::train::loss::clip_loss;
use tch::{Device, Kind};

const MODELS: [&str; 2] = ["tiny-p14-336", "tiny-p32-224"];

#[test]
fn variable_names_and_shapes_equal_the_checkpoint_keys() {
    for name in MODELS {
        let dir = fixture(name);
        let model = ClipModel::load(&dir, Device::Cpu).unwrap();
        let file = streetclip::tensor_io::read(&dir.join("model.safetensors")).unwrap();
        let from_file: Vec<(String, Vec<i64>)> = file.iter().map(|(n, t)| (n.clone(), t.size())).collect();
        let ours: Vec<(String, Vec<i64>)> =
            streetclip::model::weights::named_tensors(&model.vs).iter().map(|(n, t)| (n.clone(), t.size())).collect();
        assert_eq!(ours, from_file, "{name}");
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
            assert_close(&format!("{name} image_features"), &model.image_features(&pixels), &e["image_features"], 1e-4);
            assert_close(&format!("{name} text_features"), &model.text_features(ids, Some(mask)), &e["text_features"], 1e-4);
            let out = model.forward(ids, Some(mask), &pixels);
            assert_close(&format!("{name} image_embeds"), &out.image_embeds, &e["image_embeds"], 1e-4);
            assert_close(&format!("{name} text_embeds"), &out.text_embeds, &e["text_embeds"], 1e-4);
            assert_close(&format!("{name} logits_per_image"), &out.logits_per_image, &e["logits_per_image"], 1e-4);
        });
    }
}

#[test]
fn padding_mask_is_optional_for_pooled_text() {
    // HF pools at the eos token, which never attends to the padding after it.
    let model = ClipModel::load(&fixture("tiny-p14-336"), Device::Cpu).unwrap();
    let e = expected("tiny-p14-336");
    let without = tch::no_grad(|| model.text_features(&e["input_ids"], None));
    assert_close("text_features without mask", &without, &e["text_features"], 1e-4);
}

#[test]
fn loss_and_every_gradient_match_transformers() {
    for name in MODELS {
        let model = ClipModel::load(&fixture(name), Device::Cpu).unwrap();
        let e = expected(name);
        let out = model.forward(&e["input_ids"], Some(&e["attention_mask"]), &e["pixel_values"].to_kind(Kind::Float));
        let loss = clip_loss(&out.logits_per_text);
        assert_rel_close(&format!("{name} loss"), &loss, &e["loss"], 1e-4);
        loss.backward();
        let vars = model.vs.variables();
        assert_eq!(vars.len(), e.keys().filter(|k| k.starts_with("grad.")).count(), "{name}: one gradient per parameter");
        for (pname, var) in vars {
            let reference = &e[&format!("grad.{pname}")];
            assert_rel_close(&format!("{name} grad {pname}"), &var.grad(), reference, 1e-4);
        }
    }
}
