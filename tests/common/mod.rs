//! Helpers shared by the integration tests: fixture paths, reference tensors, comparisons, and
//! the project's Python environment for reference computations done at test time.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use tch::Tensor;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

/// torch's outputs, gradients and optimizer steps for the fixture models, computed by
/// scripts/make_fixtures.py on this machine (they depend on the CPU's kernels), once per test
/// process, into target/reference-fixtures.
pub fn reference_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = root().join("target/reference-fixtures");
        // A fresh directory per process, renamed into place: concurrent test binaries never read
        // a half-written reference.
        let tmp = root().join(format!("target/.reference-fixtures.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        run_python([
            root().join("scripts/make_fixtures.py").into_os_string(),
            "--out".into(),
            tmp.clone().into_os_string(),
            "models".into(),
            "training".into(),
            "bf16".into(),
        ]);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir)
            .or_else(|_| std::fs::remove_dir_all(&tmp))
            .unwrap();
        dir
    })
    .clone()
}

/// The reference tensors of `name` (see `reference_dir`), by name, on the CPU.
pub fn expected(name: &str) -> HashMap<String, Tensor> {
    let path = reference_dir().join(format!("{name}.expected.safetensors"));
    streetclip::formats::tensor_io::read(&path)
        .unwrap()
        .into_iter()
        .collect()
}

/// Largest absolute difference.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// `max |actual - expected| <= tol` (fp32 outputs).
pub fn assert_close(what: &str, actual: &Tensor, expected: &Tensor, tol: f64) {
    assert_eq!(actual.size(), expected.size(), "{what}: shape");
    let d = max_diff(actual, expected);
    eprintln!("{what}: max abs diff {d:.1e}");
    assert!(d <= tol, "{what}: max abs diff {d:e} > {tol:e}");
}

/// `max |actual - expected| <= tol * max |expected|` (relative to the tensor's scale, so tiny
/// gradients are held to the same standard as large ones).
pub fn assert_rel_close(what: &str, actual: &Tensor, expected: &Tensor, tol: f64) {
    assert_eq!(actual.size(), expected.size(), "{what}: shape");
    let scale = expected
        .abs()
        .max()
        .double_value(&[])
        .max(f64::MIN_POSITIVE);
    let d = max_diff(actual, expected);
    eprintln!("{what}: max abs diff {:.1e} of max {scale:.1e}", d);
    assert!(
        d <= tol * scale,
        "{what}: max abs diff {d:e} > {tol:e} x {scale:e}"
    );
}

/// The project's Python (made by `make setup`); a test that needs it fails loudly without it.
pub fn python() -> PathBuf {
    let py = root().join(".venv/bin/python");
    assert!(
        py.is_file(),
        "{} is missing: run `make setup` first",
        py.display()
    );
    py
}

/// The shared IM2GPS3K sample; tests that need real photos fail loudly when it is absent.
pub fn im2gps3k_sample() -> PathBuf {
    let dir = root().join("../shared/data/im2gps3k-sample");
    assert!(
        dir.join("meta.csv").is_file(),
        "{} is missing: these tests need the shared real photographs",
        dir.display()
    );
    dir
}

pub fn im2gps3k_images(n: usize) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(im2gps3k_sample().join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    all.sort();
    all.truncate(n);
    all
}

pub fn run_python<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(args: I) -> String {
    let out = std::process::Command::new(python())
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "python failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

pub fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// The `model:` section of a tiny random CLIP (real tokenizer, 32 px images) for end-to-end
/// runs of the trainer and fine-tuning.
pub const TINY_MODEL_YAML: &str = r#"model:
  config:
    projection_dim: 32
    text_config: {vocab_size: 49408, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 2, max_position_embeddings: 77, eos_token_id: 2, bos_token_id: 0, pad_token_id: 1}
    vision_config: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 2, image_size: 32, patch_size: 8}
"#;

/// `streetclip COMMAND --config CONFIG --out OUT EXTRA...`, waited for.
pub fn run_command(
    command: &str,
    config: &std::path::Path,
    out: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_streetclip"))
        .arg(command)
        .arg("--config")
        .arg(config)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// Every rate in a JSON the CLI writes is a fraction in [0, 1] (percentages are for human text
/// and Markdown only): values under keys naming a rate (accuracy, precision, recall, F1, chance,
/// probability, fraction) and the `within_km` thresholds. Returns how many it checked, so a
/// caller can require that its document had some.
pub fn assert_rates_are_fractions(what: &str, json: &serde_json::Value) -> usize {
    fn walk(path: &str, v: &serde_json::Value, rate: bool, seen: &mut usize) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, child) in map {
                    let is_rate = k == "within_km"
                        || [
                            "accuracy",
                            "precision",
                            "recall",
                            "f1",
                            "chance",
                            "probability",
                            "fraction",
                        ]
                        .iter()
                        .any(|r| k.contains(r));
                    walk(&format!("{path}.{k}"), child, rate || is_rate, seen);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(&format!("{path}[{i}]"), child, rate, seen);
                }
            }
            serde_json::Value::Number(n) if rate => {
                let x = n.as_f64().unwrap();
                assert!(
                    (0.0..=1.0).contains(&x),
                    "{path} = {x}: a rate must be a fraction in [0, 1]"
                );
                *seen += 1;
            }
            _ => {}
        }
    }
    let mut seen = 0;
    walk(what, json, false, &mut seen);
    seen
}

/// The files `streetclip convert`/`export` write for `CLIPModel`/`CLIPProcessor.from_pretrained`.
pub fn assert_hf_directory(dir: &std::path::Path) {
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "preprocessor_config.json",
    ] {
        assert!(dir.join(file).is_file(), "{}: no {file}", dir.display());
    }
}

/// Checks that two runs from the same weights took the same first step, at their step-1
/// checkpoints `a` and `b` — a data-parallel run against the one process it must equal.
///
/// Their weights are not compared to a fixed 1e-5: ranks reduce in another order what one
/// process accumulates, so gradients differ by float rounding (~1e-7 of their terms), and AdamW's
/// first step moves every element by lr · g / (|g| + eps) — about ±lr wherever |g| ≫ eps, however
/// small g is — so where a gradient is near zero that rounding can flip the step: up to 2 · lr,
/// on one CPU and not another. What holds on every CPU, derived from the arithmetic:
/// 1. the reduced gradients, recovered from AdamW's first moment (m = (1 − β1) · g after one
///    step), agree to 1e-5 of each tensor's largest (reordered float32 sums: ~1e-6);
/// 2. each weight differs by no more than AdamW's step from those two gradients can differ:
///    lr_max · |ga / (|ga| + eps) − gb / (|gb| + eps)| (the learning rate of step 1 is at most
///    the configured one; decoupled weight decay scales both the same), plus float32 rounding of
///    the update (4 ulps of |θ| + lr).
pub fn assert_same_first_step(a: &std::path::Path, b: &std::path::Path, lr_max: f64) {
    let optim = streetclip::config::OptimConfig::default();
    let (beta1, eps) = (optim.betas[0], optim.eps);
    let read = |dir: &std::path::Path, file: &str| -> HashMap<String, Tensor> {
        streetclip::formats::tensor_io::read(&dir.join(file))
            .unwrap()
            .into_iter()
            .map(|(n, t)| (n, t.to_kind(tch::Kind::Double)))
            .collect()
    };
    let (wa, wb) = (read(a, "model.safetensors"), read(b, "model.safetensors"));
    let (oa, ob) = (
        read(a, "optimizer.safetensors"),
        read(b, "optimizer.safetensors"),
    );
    let mut compared = 0;
    for (name, ta) in &wa {
        let tb = &wb[name];
        let Some(ma) = oa.get(&format!("exp_avg.{name}")) else {
            assert_eq!(max_diff(ta, tb), 0.0, "{name} is not trained: identical");
            continue;
        };
        let (ga, gb) = (
            ma / (1.0 - beta1),
            &ob[&format!("exp_avg.{name}")] / (1.0 - beta1),
        );
        assert_rel_close(&format!("step-1 gradient of {name}"), &ga, &gb, 1e-5);
        let step = |g: &Tensor| g / (g.abs() + eps);
        let f32_ulp = f32::EPSILON as f64;
        let bound = (step(&ga) - step(&gb)).abs() * lr_max + (ta.abs() + lr_max) * (4.0 * f32_ulp);
        let excess = ((ta - tb).abs() - bound).max().double_value(&[]);
        assert!(
            excess <= 0.0,
            "{name}: a weight differs by more than AdamW's step from the two gradients allows (by {excess:e})"
        );
        compared += 1;
    }
    assert!(compared > 0, "no trained tensor compared");
}

/// A real JPEG whose frame header claims `w x h`.
pub fn jpeg_claiming(jpeg: &[u8], w: u16, h: u16) -> Vec<u8> {
    let mut bytes = jpeg.to_vec();
    let sof = bytes
        .windows(2)
        .position(|m| m[0] == 0xFF && (m[1] == 0xC0 || m[1] == 0xC2))
        .unwrap();
    bytes[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    bytes[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    bytes
}

/// `streetclip ARGS...` run to completion, checked to have succeeded (its stderr otherwise).
pub fn streetclip_ok<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> std::process::Output {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_streetclip"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "streetclip failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Gradients agree to `tol` relative to each tensor's scale. The attention key biases are the
/// exception when they do not: softmax ignores a shift shared by all keys, so their gradient
/// is zero in exact arithmetic and what remains is rounding noise, which then must be
/// negligible against the largest gradient on both sides.
pub fn assert_gradients_close(
    what: &str,
    actual: &[(String, Tensor)],
    expected: impl Fn(&str) -> Tensor,
    tol: f64,
) {
    let largest = actual
        .iter()
        .map(|(_, g)| g.abs().max().double_value(&[]))
        .fold(0.0, f64::max);
    for (n, a) in actual {
        let b = expected(n);
        let scale = b.abs().max().double_value(&[]);
        if n.ends_with("k_proj.bias") && max_diff(a, &b) > tol * scale {
            assert!(
                max_diff(a, &Tensor::zeros_like(a)) < 1e-6 * largest
                    && max_diff(&b, &Tensor::zeros_like(&b)) < 1e-6 * largest,
                "{what} {n}: not ~0"
            );
        } else {
            assert_rel_close(&format!("{what} {n}"), a, &b, tol);
        }
    }
}
