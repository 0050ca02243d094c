//! OpenAI and open_clip checkpoints, made by their own packages (scripts/make_clip_checkpoints.py:
//! a float16 state dict, a DDP training checkpoint, safetensors, a traced TorchScript archive, an
//! open_clip hub directory with GELU and 32-wide heads), converted by `streetclip convert` and
//! read directly by `--model`: `streetclip embed` equals the packages' own `encode_image` /
//! `encode_text`, and transformers on the converted directory, to 1e-5
//! (scripts/check_clip_packages.py).

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TEXTS: [&str; 2] = [
    "a street in Paris",
    "A Street View photo close to the town of Kyoto in the region of Kyoto in Japan.",
];

fn streetclip(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_streetclip"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{stderr}");
    stderr
}

fn convert(from: &Path, out: &Path) -> String {
    ok(&streetclip(&[
        "convert".as_ref(),
        "--from".as_ref(),
        from.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]))
}

/// `streetclip embed --model MODEL` of three real photos and TEXTS into `out`.
fn embed(model: &Path, out: &Path) {
    let mut args: Vec<std::ffi::OsString> = vec!["embed".into(), "--model".into(), model.into()];
    for image in im2gps3k_images(3) {
        args.extend(["--image".into(), image.into_os_string()]);
    }
    for text in TEXTS {
        args.extend(["--text".into(), text.into()]);
    }
    args.extend(["--out".into(), out.into()]);
    ok(&Command::new(env!("CARGO_BIN_EXE_streetclip"))
        .args(&args)
        .output()
        .unwrap());
}

fn tensors(file: &Path) -> Vec<(String, tch::Tensor)> {
    streetclip::formats::tensor_io::read(file).unwrap()
}

#[test]
fn openai_and_open_clip_checkpoints_convert_and_equal_their_packages() {
    let tmp = tmpdir();
    let dir = tmp.path();
    run_python([
        root()
            .join("scripts/make_clip_checkpoints.py")
            .into_os_string(),
        dir.as_os_str().to_owned(),
    ]);
    let sources: [(&str, &str, &str); 5] = [
        ("openai", "openai/state.pt", "OpenAI's default"),
        ("openai", "openai/wrapped.pt", "OpenAI's default"),
        ("openai", "openai/state.safetensors", "OpenAI's default"),
        (
            "jit",
            "openai/jit.pt",
            "\"quick_gelu\" (the archive's QuickGELU modules)",
        ),
        ("open_clip", "open_clip", "\"gelu\" (open_clip_config.json)"),
    ];
    let mut cases = Vec::new();
    for (i, (kind, source, activation)) in sources.iter().enumerate() {
        let source = dir.join(source);
        let converted = dir.join(format!("converted-{i}"));
        let stderr = convert(&source, &converted);
        assert!(stderr.contains(activation), "{source:?}: {stderr}");
        assert_hf_directory(&converted);
        let embedded = dir.join(format!("embed-{i}.safetensors"));
        embed(&converted, &embedded);
        cases.push(serde_json::json!({"kind": kind, "source": source, "converted": converted, "embed": embedded}));
    }
    let spec = dir.join("cases.json");
    let json = serde_json::json!({"texts": TEXTS, "cases": cases});
    std::fs::write(&spec, json.to_string()).unwrap();
    let report = run_python([
        root()
            .join("scripts/check_clip_packages.py")
            .into_os_string(),
        spec.into_os_string(),
    ]);
    assert!(report.contains("packages ok"), "{report}");
    eprintln!("{report}");

    // `--model` reads the checkpoints directly, giving what the converted directories give.
    for (i, source) in [(3, "openai/jit.pt"), (4, "open_clip")] {
        let direct = dir.join(format!("direct-{i}.safetensors"));
        embed(&dir.join(source), &direct);
        let converted = tensors(&dir.join(format!("embed-{i}.safetensors")));
        for ((name, a), (_, b)) in tensors(&direct).iter().zip(&converted) {
            assert_eq!(max_diff(a, b), 0.0, "{source}: {name}");
        }
    }
    // open_clip's mean and std travel into the converted preprocessor config.
    let pre = std::fs::read_to_string(dir.join("converted-4/preprocessor_config.json")).unwrap();
    let pre: serde_json::Value = serde_json::from_str(&pre).unwrap();
    assert_eq!(pre["image_mean"], serde_json::json!([0.5, 0.5, 0.5]));

    // A tensor with no place in CLIPModel (open_clip's layer scale, say) is named, not dropped.
    let mut named = tensors(&dir.join("openai/state.safetensors"));
    named.push((
        "visual.transformer.resblocks.0.ls_1.gamma".into(),
        tch::Tensor::ones([128], (tch::Kind::Float, tch::Device::Cpu)),
    ));
    let extra = dir.join("extra.safetensors");
    streetclip::formats::tensor_io::write(&extra, &named).unwrap();
    let o = streetclip(&[
        "convert".as_ref(),
        "--from".as_ref(),
        extra.as_os_str(),
        "--out".as_ref(),
        dir.join("never").as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("1 tensor(s) have no place") && stderr.contains("ls_1.gamma"),
        "{stderr}"
    );
}

/// What cannot be converted is one error saying why: a ResNet tower, Hugging Face names without
/// a config.json, `--activation` on a Hugging Face directory.
#[test]
fn unconvertible_checkpoints_are_refused_with_the_reason() {
    let tmp = tmpdir();
    let zeros = |shape: &[i64]| tch::Tensor::zeros(shape, (tch::Kind::Float, tch::Device::Cpu));
    let write = |name: &str, keys: &[&str]| -> PathBuf {
        let path = tmp.path().join(name);
        let named: Vec<_> = keys.iter().map(|k| (k.to_string(), zeros(&[2]))).collect();
        streetclip::formats::tensor_io::write(&path, &named).unwrap();
        path
    };
    let resnet = write(
        "rn50.safetensors",
        &["visual.layer1.0.conv1.weight", "token_embedding.weight"],
    );
    let hf = write(
        "hf.safetensors",
        &["vision_model.embeddings.class_embedding"],
    );
    for (path, reason) in [
        (resnet, "ResNet image tower"),
        (hf, "put it in a directory with the model's config.json"),
    ] {
        let o = streetclip(&[
            "convert".as_ref(),
            "--from".as_ref(),
            path.as_os_str(),
            "--out".as_ref(),
            tmp.path().join("never").as_os_str(),
        ]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("is not an OpenAI or open_clip ViT CLIP checkpoint")
                && stderr.contains(reason),
            "{stderr}"
        );
    }
    let o = streetclip(&[
        "convert".as_ref(),
        "--from".as_ref(),
        fixture("tiny-p14-336").as_os_str(),
        "--out".as_ref(),
        tmp.path().join("never").as_os_str(),
        "--activation".as_ref(),
        "gelu".as_ref(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("whose config.json sets it"), "{stderr}");
    assert!(!tmp.path().join("never").exists());
}
