//! `streetclip bench train`: training steps timed on synthetic in-memory batches (inputs already
//! on the device, as the Python peer `scripts/bench_train_gpu.py` has them), or on the config's
//! data through the training loader (`--data`), for any config, preset and device: samples/s,
//! TFLOP/s from the model's FLOPs per sample, MFU against the GPU's dense bf16 peak, peak GPU
//! memory.

use super::args::{at_least_one, ConfigArgs};
use crate::config::{Accumulation, ActivationCheckpointing, Config};
use crate::data::loader::{Loader, Position};
use crate::data::Dataset;
use crate::formats::pretrained::Pretrained;
use crate::geo::Gazetteer;
use crate::model::{parse_device, ClipConfig};
use crate::shim::{cuda_device_name, cuda_peak_allocated, cuda_reset_peak};
use crate::text::Captioner;
use crate::train::batches::{self, micro_batches};
use crate::train::optim::AdamW;
use crate::train::param_groups::ParamGroups;
use crate::train::setup::{autocast_for, build_model};
use crate::train::step::{accumulate_gradients, optimizer_step, MicroBatch};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Dense bf16 tensor-core peaks (TFLOP/s) from NVIDIA's datasheets, by a part of the device
/// name; the most specific names first.
const PEAK_BF16_TFLOPS: [(&str, f64); 9] = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
];

#[derive(clap::Subcommand)]
pub enum Command {
    Train(Args),
}

impl Command {
    pub fn exec(self) -> Result<()> {
        match self {
            Command::Train(args) if args.compare_checkpointing => checkpointing_trade(args.json),
            Command::Train(args) => {
                let result = train(&args.config.resolve()?, &args)?;
                match args.json {
                    true => println!("{}", serde_json::to_string_pretty(&result)?),
                    false => print!("{}", result.text()),
                }
                Ok(())
            }
        }
    }
}

/// Time training steps on synthetic batches already on the device: samples/s, TFLOP/s,
/// MFU, peak GPU memory. `make bench-gpu` runs it beside transformers (eager and compiled).
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  streetclip bench train --config configs/demo.yaml\n  streetclip bench train --set model.preset=ViT-L/14-336 --set model.device=cuda --set train.micro_batch_size=64 --set train.grad_accum_steps=1 --json"
)]
pub struct Args {
    /// Its model, train and optim sections are timed (default: the default config).
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Timed optimizer steps.
    #[arg(long, default_value_t = 10, value_parser = at_least_one::<usize>)]
    pub steps: usize,
    /// Untimed steps first (allocator and kernel warm-up).
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// The device's peak TFLOP/s for MFU (default: dense bf16 of known GPUs; gives the CPU an
    /// MFU too).
    #[arg(long)]
    pub peak_tflops: Option<f64>,
    /// Train on the config's data through the training loader (decoding, augmentation,
    /// tokenising and the copy to the device timed too) instead of synthetic batches.
    #[arg(long)]
    pub data: bool,
    /// Run the benchmark twice, each in a fresh process, without and with
    /// train.activation_checkpointing (both towers), and report the memory saved and the time
    /// it costs.
    #[arg(long)]
    pub compare_checkpointing: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct TrainBench {
    pub device: String,
    pub device_name: Option<String>,
    /// `synthetic` (on the device already) or `loader` (the config's data).
    pub batches: String,
    pub parameters: i64,
    pub precision: String,
    pub micro_batch_size: usize,
    pub grad_accum_steps: usize,
    pub accumulation: Accumulation,
    /// Which towers recompute their blocks' activations in the backward pass.
    pub activation_checkpointing: ActivationCheckpointing,
    pub steps: usize,
    pub warmup_steps: usize,
    pub seconds: f64,
    pub samples_per_s: f64,
    /// Training FLOPs per sample: 3 forwards (forward + backward), plus one for `full_batch`
    /// over several micro-batches; activation checkpointing's recomputation is not counted (as
    /// MFU is defined: the model's FLOPs, not the hardware's). Texts count over the positions
    /// they were cut to (`text_positions`).
    pub flops_per_sample: f64,
    /// The same with every text over the whole context: what a trainer that pads to it (as
    /// transformers' example script and open_clip do) runs, for a peer's TFLOP/s.
    pub context_flops_per_sample: f64,
    /// Mean positions each text ran over (each micro-batch cut after its last end-of-text).
    pub text_positions: f64,
    /// The text context length (`max_position_embeddings`).
    pub text_context: i64,
    pub tflops_per_s: f64,
    pub peak_tflops: Option<f64>,
    /// Model FLOPs utilisation: achieved / peak TFLOP/s, a fraction.
    pub mfu: Option<f64>,
    pub peak_memory_bytes: Option<u64>,
    /// The process's peak resident memory (getrusage's `ru_maxrss`): the host side of the
    /// trade, on the CPU the whole of it.
    pub peak_rss_bytes: u64,
    pub final_loss: f64,
    /// The model's Hugging Face `CLIPConfig`, for the Python peer.
    pub model_config: serde_json::Value,
}

/// Training FLOPs of one sample whose forward takes `forward` FLOPs, under `accumulation` with
/// `micro_batches` per step: a forward and a backward (3 forwards' worth), and for
/// `full_batch` over several micro-batches the no-graph first pass (one more).
pub fn training_flops(forward: f64, accumulation: Accumulation, micro_batches: usize) -> f64 {
    let forwards = match accumulation {
        Accumulation::FullBatch if micro_batches > 1 => 4.0,
        _ => 3.0,
    };
    forwards * forward
}

/// The texts the timed steps ran: `(rows, positions)` of each micro-batch's `input_ids`.
#[derive(Default)]
struct TextsRun(Vec<(i64, i64)>);

impl TextsRun {
    fn add(&mut self, micro: &[MicroBatch]) {
        self.0.extend(
            micro
                .iter()
                .map(|m| m.input_ids.size2().expect("input_ids is [rows, positions]")),
        );
    }

    /// The mean over texts of `f(positions)`.
    fn mean(&self, f: impl Fn(i64) -> f64) -> f64 {
        let rows: i64 = self.0.iter().map(|(rows, _)| rows).sum();
        let total: f64 = self.0.iter().map(|&(r, p)| r as f64 * f(p)).sum();
        total / rows as f64
    }
}

fn peak_for(name: Option<&str>) -> Option<f64> {
    let name = name?;
    PEAK_BF16_TFLOPS
        .iter()
        .find(|(part, _)| name.contains(part))
        .map(|(_, peak)| *peak)
}

/// Random pixels and captions of the model's shapes (an end-of-text token at position 20, the
/// rest of the context attended, as the Python peer does), made ready as the trainer's are
/// (`MicroBatch::new`: the texts cut after position 20), already on `device`.
fn synthetic(config: &ClipConfig, micro: i64, accum: usize, device: Device) -> Vec<MicroBatch> {
    let (v, t) = (&config.vision_config, &config.text_config);
    let context = t.max_position_embeddings;
    let host = (Kind::Int64, Device::Cpu);
    (0..accum)
        .map(|_| {
            let ids = Tensor::randint_low(1, t.vocab_size - 1, [micro, context], host);
            let _ = ids
                .narrow(1, 20.min(context - 1), 1)
                .fill_(t.vocab_size - 1);
            let pixels = Tensor::randn(
                [micro, v.num_channels, v.image_size, v.image_size],
                (Kind::Float, Device::Cpu),
            );
            let mask = Tensor::ones([micro, context], host);
            MicroBatch::new(&pixels, &ids, &mask, t.eos_token_id, |x| x.to(device))
        })
        .collect()
}

/// The training loader over all of `cfg`'s data (drawn first when the config asks for
/// synthetic scenes).
fn start_loader(cfg: &Config, clip: &Pretrained) -> Result<Loader> {
    let gazetteer = Gazetteer::bundled()?;
    crate::synth::draw_if_missing(&cfg.data, gazetteer)?;
    let (data, report) = Dataset::load(&cfg.data, gazetteer)?;
    eprintln!("data: {}", report.summary());
    let captioner = Arc::new(Captioner::new(&cfg.captions)?);
    batches::start_loader(
        cfg,
        &crate::dist::Dist::single(),
        data.samples,
        &captioner,
        clip,
        Position::default(),
    )
}

/// Where the timed steps' batches come from.
enum Batches {
    /// The same micro-batches, already on the device, every step.
    Synthetic(Vec<MicroBatch>),
    /// The config's data through the training loader.
    Loader(Loader),
}

impl Batches {
    /// The config's data through the loader (`data`), or synthetic micro-batches on `device`.
    fn new(data: bool, cfg: &Config, clip: &Pretrained, device: Device) -> Result<Self> {
        let t = &cfg.train;
        Ok(match data {
            true => Batches::Loader(start_loader(cfg, clip)?),
            false => {
                let micro = t.micro_batch_size as i64;
                let config = &clip.model.config;
                Batches::Synthetic(synthetic(config, micro, t.grad_accum_steps, device))
            }
        })
    }
}

/// Times `args.steps` training steps of `cfg` after `args.warmup` untimed ones.
pub fn train(cfg: &Config, args: &Args) -> Result<TrainBench> {
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let t = &cfg.train;
    let device = parse_device(&cfg.model.device).context("model.device")?;
    tch::manual_seed(t.seed as i64);
    let clip = build_model(cfg, device)?;
    let model = &clip.model;
    let groups = ParamGroups::resolve(model, &cfg.optim)?;
    let mut opt = AdamW::new(&model.vs, &cfg.optim, &groups);
    let amp = autocast_for(t.precision, device);
    let mut batches = Batches::new(args.data, cfg, &clip, device)?;
    let dist = crate::dist::Dist::single();
    let mut step = |texts: &mut TextsRun| -> Result<Tensor> {
        let loaded;
        let micro = match &mut batches {
            Batches::Synthetic(micro) => &*micro,
            Batches::Loader(loader) => {
                let batch = loader.next().context("the data ran out before the benchmark's steps: lower --steps or --warmup, or raise train.epochs")??;
                loaded = micro_batches(&clip, &batch, t.micro_batch_size, device)?;
                &loaded
            }
        };
        texts.add(micro);
        let stats = accumulate_gradients(model, micro, t.accumulation, amp, &dist)?;
        let found_inf = stats.found_inf();
        let _norm = optimizer_step(
            model,
            &mut opt,
            cfg.optim.lr,
            cfg.optim.max_grad_norm,
            Some(&found_inf),
        )?;
        Ok(stats.loss)
    };
    let (seconds, final_loss, texts) = timed(args, device, &mut step)?;
    let samples = (args.steps * t.micro_batch_size * t.grad_accum_steps) as f64;
    let config = &model.config;
    let forward = config.image_forward_flops() + texts.mean(|p| config.text_forward_flops(p));
    let flops = |forward| training_flops(forward, t.accumulation, t.grad_accum_steps);
    let flops_per_sample = flops(forward);
    let samples_per_s = samples / seconds;
    let tflops_per_s = samples_per_s * flops_per_sample / 1e12;
    let device_name = cuda_device_name(device);
    let peak_tflops = args
        .peak_tflops
        .or_else(|| peak_for(device_name.as_deref()));
    Ok(TrainBench {
        device: format!("{device:?}")
            .to_lowercase()
            .replace('(', ":")
            .replace(')', ""),
        device_name,
        batches: if args.data { "loader" } else { "synthetic" }.into(),
        parameters: model
            .vs
            .trainable_variables()
            .iter()
            .map(|v| v.numel() as i64)
            .sum(),
        precision: match amp {
            Some(a) => format!("{a:?} autocast").to_lowercase(),
            None => "fp32".into(),
        },
        micro_batch_size: t.micro_batch_size,
        grad_accum_steps: t.grad_accum_steps,
        accumulation: t.accumulation,
        activation_checkpointing: t.activation_checkpointing,
        steps: args.steps,
        warmup_steps: args.warmup,
        seconds,
        samples_per_s,
        flops_per_sample,
        context_flops_per_sample: flops(config.forward_flops()),
        text_positions: texts.mean(|p| p as f64),
        text_context: config.text_config.max_position_embeddings,
        tflops_per_s,
        peak_tflops,
        mfu: peak_tflops.map(|p| tflops_per_s / p),
        peak_memory_bytes: cuda_peak_allocated(device),
        peak_rss_bytes: peak_rss_bytes(),
        final_loss,
        model_config: model.config.to_hf_json(),
    })
}

/// Seconds for `args.steps` steps after `args.warmup` untimed ones (the peak memory counted
/// from the first timed step), the last step's loss, and the texts the timed steps ran.
fn timed(
    args: &Args,
    device: Device,
    step: &mut impl FnMut(&mut TextsRun) -> Result<Tensor>,
) -> Result<(f64, f64, TextsRun)> {
    for _ in 0..args.warmup {
        step(&mut TextsRun::default())?.double_value(&[]); // waits for the device
    }
    cuda_reset_peak(device);
    let (start, mut texts) = (Instant::now(), TextsRun::default());
    let mut loss = Tensor::zeros([], (Kind::Double, device));
    for _ in 0..args.steps {
        loss = step(&mut texts)?;
    }
    let final_loss = loss.double_value(&[]); // waits for the last step
    Ok((start.elapsed().as_secs_f64(), final_loss, texts))
}

impl TrainBench {
    /// The human report.
    pub fn text(&self) -> String {
        let mut out = format!(
            "bench train: {} parameters on {}{}, {}, micro-batch {} x {} ({}), {} batches, {} steps after {} warm-up\n",
            self.parameters,
            self.device,
            self.device_name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default(),
            self.precision,
            self.micro_batch_size,
            self.grad_accum_steps,
            serde_json::to_value(self.accumulation).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
            self.batches,
            self.steps,
            self.warmup_steps
        );
        out += &format!("  samples/s        {:.1}\n", self.samples_per_s);
        out += &format!(
            "  TFLOP/s          {:.3}  ({:.4} GFLOP per sample)\n",
            self.tflops_per_s,
            self.flops_per_sample / 1e9
        );
        out += &format!(
            "  text positions   {:.1} of {} (each micro-batch cut after its last end-of-text)\n",
            self.text_positions, self.text_context
        );
        match (self.mfu, self.peak_tflops) {
            (Some(mfu), Some(peak)) => {
                out += &format!("  MFU              {:.1}% of {peak} TFLOP/s\n", 100.0 * mfu)
            }
            _ => {
                out += "  MFU              unknown (no peak for this device; give --peak-tflops)\n"
            }
        }
        match self.peak_memory_bytes {
            Some(b) => {
                out += &format!(
                    "  peak GPU memory  {:.2} GiB\n",
                    b as f64 / (1u64 << 30) as f64
                )
            }
            None => out += "  peak GPU memory  - (not a CUDA device)\n",
        }
        let rss = self.peak_rss_bytes as f64 / (1u64 << 30) as f64;
        out += &format!("  peak RSS         {rss:.2} GiB (the process)\n");
        out
    }
}

/// `bench train` as this process was asked for it, run without and then with activation
/// checkpointing, each in its own process (a process's peak RSS only grows), and the trade:
/// step time and peak memory, with over without.
fn checkpointing_trade(json: bool) -> Result<()> {
    let exe = std::env::current_exe().context("finding streetclip's own executable")?;
    let asked: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--compare-checkpointing" && a != "--json")
        .collect();
    let run = |on: bool| -> Result<serde_json::Value> {
        let setting = format!("train.activation_checkpointing={on}");
        let out = std::process::Command::new(&exe)
            .args(&asked)
            .args(["--json", "--set", &setting])
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("starting the benchmark")?;
        if !out.status.success() {
            bail!("the benchmark with {setting} failed (its error is above)");
        }
        serde_json::from_slice(&out.stdout).context("reading the benchmark's JSON")
    };
    let (without, with) = (run(false)?, run(true)?);
    let ratio = |key: &str| Some(with[key].as_f64()? / without[key].as_f64()?);
    let trade = serde_json::json!({
        "without": without,
        "with": with,
        "time_ratio": ratio("seconds"),
        "peak_rss_ratio": ratio("peak_rss_bytes"),
        "peak_gpu_memory_ratio": ratio("peak_memory_bytes"),
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&trade)?);
        return Ok(());
    }
    let gib = |v: &serde_json::Value, key: &str| {
        v[key]
            .as_f64()
            .map_or("-".into(), |b| format!("{:.2}", b / (1u64 << 30) as f64))
    };
    let per_step = |v: &serde_json::Value| {
        v["seconds"].as_f64().unwrap_or(f64::NAN) / v["steps"].as_f64().unwrap_or(f64::NAN)
    };
    let times = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.2}x"));
    println!(
        "activation checkpointing: {} parameters, micro-batch {} x {}, {} on {}\n                   without   with      with/without\n  s/step           {:<9.3} {:<9.3} {}\n  peak RSS GiB     {:<9} {:<9} {}\n  peak GPU GiB     {:<9} {:<9} {}",
        without["parameters"],
        without["micro_batch_size"],
        without["grad_accum_steps"],
        without["precision"].as_str().unwrap_or_default(),
        without["device"].as_str().unwrap_or_default(),
        per_step(&without),
        per_step(&with),
        times(ratio("seconds")),
        gib(&without, "peak_rss_bytes"),
        gib(&with, "peak_rss_bytes"),
        times(ratio("peak_rss_bytes")),
        gib(&without, "peak_memory_bytes"),
        gib(&with, "peak_memory_bytes"),
        times(ratio("peak_memory_bytes")),
    );
    Ok(())
}

/// This process's peak resident set size in bytes (Linux reports `ru_maxrss` in KiB).
fn peak_rss_bytes() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_maxrss.max(0) as u64 * 1024
}
