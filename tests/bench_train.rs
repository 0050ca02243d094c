//! `streetclip bench train` on the CPU with the demo's tiny model, its FLOPs per sample against
//! PyTorch's FlopCounterMode on transformers' CLIPModel (scripts/count_flops.py), and the GPU
//! comparison script's CPU smoke run (so a lent GPU's minutes are not lost to a script error).

mod common;
use common::*;
use std::process::Command;
use streetclip::model::ClipConfig;

/// PyTorch's count of one image's and one text's forward FLOPs, the text over `positions`.
fn counted(config: &ClipConfig, positions: i64) -> (f64, f64) {
    let tmp = tmpdir();
    let path = tmp.path().join("config.json");
    std::fs::write(&path, config.to_hf_json().to_string()).unwrap();
    let out = run_python([
        root().join("scripts/count_flops.py").into_os_string(),
        path.into_os_string(),
        positions.to_string().into(),
    ]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    (
        json["image"].as_f64().unwrap(),
        json["text"].as_f64().unwrap(),
    )
}

fn demo() -> ClipConfig {
    streetclip::config::Config::from_file(&root().join("configs/demo.yaml"))
        .unwrap()
        .model
        .config
        .unwrap()
}

#[test]
fn forward_flops_equal_pytorchs_flop_counter() {
    for (name, config) in [
        ("ViT-L/14-336", ClipConfig::vit_l_14_336()),
        ("demo", demo()),
    ] {
        let context = config.text_config.max_position_embeddings;
        let (image, text) = counted(&config, context);
        assert_eq!(config.image_forward_flops(), image, "{name} image tower");
        assert_eq!(
            config.text_forward_flops(context),
            text,
            "{name} text tower"
        );
        // A text cut after its end-of-text token (position 20, as the benchmark's).
        let (_, cut) = counted(&config, 21);
        assert_eq!(
            config.text_forward_flops(21),
            cut,
            "{name} text of 21 positions"
        );
        assert_eq!(
            config.forward_flops(),
            config.image_forward_flops() + config.text_forward_flops(context)
        );
    }
    // StreetCLIP's model: 1.186 TFLOP per training sample (3 forwards), as ../shared/gpu notes.
    let l14 = ClipConfig::vit_l_14_336().forward_flops() * 3.0;
    assert!((l14 / 1e12 - 1.186).abs() < 5e-4, "{l14}");
}

fn bench(extra: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_streetclip"))
        .args(["bench", "train", "--config"])
        .arg(root().join("configs/demo.yaml"))
        .args(["--steps", "2", "--warmup", "1", "--json"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn bench_train_reports_throughput_flops_and_mfu_on_the_cpu() {
    // The synthetic texts end at position 20: they run over 21 of the context's 77 positions,
    // and are counted so; a trainer padding to the context (the peer) runs the whole of it.
    let config = demo();
    let forward = config.image_forward_flops() + config.text_forward_flops(21);
    let context_forward = config.forward_flops();
    // The demo's steps have two micro-batches; with one, full_batch needs no first pass.
    for (mode, accum, forwards) in [
        ("full_batch", 2, 4.0),
        ("per_micro_batch", 2, 3.0),
        ("full_batch", 1, 3.0),
    ] {
        let set = format!("train.accumulation={mode}");
        let steps = format!("train.grad_accum_steps={accum}");
        let r = bench(&["--set", &set, "--set", &steps, "--peak-tflops", "2.0"]);
        assert_eq!(r["device"], "cpu");
        assert_eq!(
            r["flops_per_sample"].as_f64().unwrap(),
            forwards * forward,
            "{mode}"
        );
        assert_eq!(
            r["context_flops_per_sample"].as_f64().unwrap(),
            forwards * context_forward,
            "{mode}"
        );
        assert_eq!(r["text_positions"], 21.0);
        assert_eq!(r["text_context"], 77);
        let rate = r["samples_per_s"].as_f64().unwrap();
        assert!(
            rate > 0.0 && r["final_loss"].as_f64().unwrap().is_finite(),
            "{r}"
        );
        let tflops = r["tflops_per_s"].as_f64().unwrap();
        assert!((tflops - rate * forwards * forward / 1e12).abs() < 1e-12 * tflops.max(1.0));
        assert!((r["mfu"].as_f64().unwrap() - tflops / 2.0).abs() < 1e-12);
        assert!(r["peak_memory_bytes"].is_null(), "no GPU memory on the CPU");
        assert_eq!(r["parameters"], 7_986_817);
        // Weights, gradients and AdamW's two moments alone are 4 x 4 bytes a parameter.
        let rss = r["peak_rss_bytes"].as_u64().unwrap();
        assert!(
            rss > 16 * 7_986_817 && rss < 64 << 30,
            "peak RSS {rss} bytes"
        );
        assert_eq!(r["model_config"]["vision_config"]["image_size"], 64);
    }
    // Without a known peak the MFU is unknown, not invented.
    let synthetic = bench(&[]);
    assert!(synthetic["mfu"].is_null());
    assert_eq!(synthetic["batches"], "synthetic");
    // The config's data through the training loader (a few of the demo's scenes, drawn into
    // a temporary folder).
    let tmp = tmpdir();
    let manifest = format!(
        "data.manifest={}",
        tmp.path().join("manifest.csv").display()
    );
    let loaded = bench(&[
        "--data",
        "--set",
        &manifest,
        "--set",
        "data.synth.per_city=3",
    ]);
    assert_eq!(loaded["batches"], "loader");
    // Real captions: cut well short of the context, the longest of a micro-batch kept whole.
    let positions = loaded["text_positions"].as_f64().unwrap();
    assert!(positions > 12.0 && positions < 40.0, "{positions}");
    assert!(loaded["samples_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn the_gpu_comparison_script_runs_on_the_cpu() {
    let tmp = tmpdir();
    let json = tmp.path().join("bench.json");
    let out = run_python([
        root().join("scripts/bench_gpu.py").into_os_string(),
        "--bin".into(),
        env!("CARGO_BIN_EXE_streetclip").into(),
        "--python".into(),
        python().into_os_string(),
        "--device".into(),
        "cpu".into(),
        "--tiny".into(),
        "--no-compile".into(),
        "--steps".into(),
        "2".into(),
        "--out".into(),
        json.clone().into_os_string(),
    ]);
    assert!(
        out.contains("| streetclip, 8 x 1 per_micro_batch |"),
        "{out}"
    );
    assert!(out.contains("x samples/s"), "{out}");
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 4);
}

/// `--compare-checkpointing`: the same benchmark without and with activation checkpointing,
/// each in its own process, and the trade. On the demo model at micro-batch 128 the
/// activations are a third of the process's peak: keeping only the blocks' inputs must show.
#[test]
fn bench_train_compares_activation_checkpointing() {
    let r = bench(&[
        "--set",
        "train.micro_batch_size=128",
        "--set",
        "train.grad_accum_steps=1",
        "--compare-checkpointing",
    ]);
    assert_eq!(r["without"]["activation_checkpointing"], false);
    assert_eq!(r["with"]["activation_checkpointing"], true);
    for side in ["without", "with"] {
        assert_eq!(
            r[side]["micro_batch_size"], 128,
            "{side}: the asked-for config"
        );
        assert_eq!(r[side]["steps"], 2);
    }
    let rss = |side: &str| r[side]["peak_rss_bytes"].as_f64().unwrap();
    let ratio = r["peak_rss_ratio"].as_f64().unwrap();
    assert_eq!(ratio, rss("with") / rss("without"));
    assert!(ratio < 0.9, "checkpointing saved too little: {r}");
    let time = r["time_ratio"].as_f64().unwrap();
    assert!(time > 0.0 && time.is_finite(), "{r}");
    assert!(
        r["peak_gpu_memory_ratio"].is_null(),
        "no GPU memory on the CPU"
    );
}
