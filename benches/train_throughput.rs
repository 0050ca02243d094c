//! Training throughput and peak memory on the CPU: streetclip's step (tch CLIP, project AdamW,
//! gradient clipping) against transformers' CLIPModel + torch.optim.AdamW
//! (scripts/bench_train.py) with the same model config (the demo's tiny CLIP), micro-batch,
//! accumulation (per_micro_batch, as the HF Trainer accumulates), threads and steps. Each side
//! runs in its own process so its peak RSS is its own. Prints both and the ratios.
//!
//! `cargo bench --bench train_throughput`; `train_throughput worker` is the Rust side.

use std::path::PathBuf;
use std::time::Instant;
use streetclip::config::Config;
use streetclip::config::{Accumulation, OptimConfig};
use streetclip::dist::Dist;
use streetclip::model::ClipModel;
use streetclip::train::optim::AdamW;
use streetclip::train::param_groups::ParamGroups;
use streetclip::train::step::{accumulate_gradients, optimizer_step, MicroBatch};
use tch::{Kind, Tensor};

const MICRO: i64 = 32;
const ACCUM: i64 = 2;
const STEPS: usize = 16;

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn worker(cfg: &Config, threads: usize) {
    tch::set_num_threads(threads as i32);
    tch::manual_seed(0);
    let model = ClipModel::new(
        cfg.model
            .config
            .clone()
            .expect("demo config has model.config"),
        tch::Device::Cpu,
    )
    .unwrap();
    let optim = OptimConfig {
        lr: 1e-4,
        weight_decay: 0.1,
        ..OptimConfig::default()
    };
    let groups = ParamGroups::resolve(&model, &optim).unwrap();
    let mut opt = AdamW::new(&model.vs, &optim, &groups);
    let size = model.config.vision_config.image_size;
    let host = tch::Device::Cpu;
    let eos = model.config.text_config.eos_token_id;
    // Made ready as the trainer's are (`MicroBatch::new`: texts cut after position 20).
    let micro: Vec<MicroBatch> = (0..ACCUM)
        .map(|_| {
            let ids = Tensor::randint_low(1, 49000, [MICRO, 77], (Kind::Int64, host));
            let _ = ids.narrow(1, 20, 1).fill_(49407);
            let pixels = Tensor::randn([MICRO, 3, size, size], (Kind::Float, host));
            let mask = Tensor::ones([MICRO, 77], (Kind::Int64, host));
            MicroBatch::new(&pixels, &ids, &mask, eos, |t| t.shallow_clone())
        })
        .collect();
    let step = |opt: &mut AdamW| {
        accumulate_gradients(
            &model,
            &micro,
            Accumulation::PerMicroBatch,
            None,
            &Dist::single(),
        )
        .unwrap();
        let _grad_norm = optimizer_step(&model, opt, 1e-4, Some(1.0), None).unwrap();
    };
    step(&mut opt);
    let start = Instant::now();
    for _ in 0..STEPS {
        step(&mut opt);
    }
    println!(
        "samples_per_s {:.2}",
        (STEPS as i64 * ACCUM * MICRO) as f64 / start.elapsed().as_secs_f64()
    );
    println!("peak_rss_mb {:.1}", peak_rss_mb());
}

fn parse(out: &std::process::Output) -> (f64, f64) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {text}"))
    };
    (get("samples_per_s"), get("peak_rss_mb"))
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cfg = Config::from_file(&root.join("configs/demo.yaml")).unwrap();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if std::env::args().nth(1).as_deref() == Some("worker") {
        return worker(&cfg, threads);
    }
    let ours = parse(
        &std::process::Command::new(std::env::current_exe().unwrap())
            .arg("worker")
            .output()
            .unwrap(),
    );
    let model_json =
        std::env::temp_dir().join(format!("streetclip-bench-{}.json", std::process::id()));
    std::fs::write(
        &model_json,
        serde_json::to_vec(&cfg.model.config.unwrap().to_hf_json()).unwrap(),
    )
    .unwrap();
    let theirs = parse(
        &std::process::Command::new(root.join(".venv/bin/python"))
            .arg(root.join("scripts/bench_train.py"))
            .arg(&model_json)
            .args([
                MICRO.to_string(),
                ACCUM.to_string(),
                STEPS.to_string(),
                threads.to_string(),
            ])
            .output()
            .expect("run make setup first"),
    );
    let _ = std::fs::remove_file(&model_json);
    println!("training, demo tiny CLIP (64 px), micro-batch {MICRO} x {ACCUM} accumulation, {STEPS} steps, {threads} threads, CPU");
    println!(
        "  streetclip              {:8.1} samples/s   peak RSS {:7.1} MB",
        ours.0, ours.1
    );
    println!(
        "  transformers + AdamW    {:8.1} samples/s   peak RSS {:7.1} MB",
        theirs.0, theirs.1
    );
    println!(
        "  ratio                   {:8.2}x speed        {:7.2}x memory",
        ours.0 / theirs.0,
        ours.1 / theirs.1
    );
}
