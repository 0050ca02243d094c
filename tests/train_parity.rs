//! Training steps against PyTorch: AdamW with decay groups, warmup + linear decay, gradient
//! clipping and the temperature clamp over several steps (torch.optim.AdamW fixture), and the
//! two gradient-accumulation modes; parameter groups with layer decay against torch.optim.AdamW
//! with the same param groups; activation checkpointing's gradients.

mod common;
use common::*;
use streetclip::config::{Accumulation, OptimConfig, Schedule};
use streetclip::dist::Dist;
use streetclip::model::ClipModel;
use streetclip::train::loss::clip_loss;
use streetclip::train::optim::AdamW;
use streetclip::train::param_groups::ParamGroups;
use streetclip::train::step::{accumulate_gradients, optimizer_step, MicroBatch, StepStats};
use tch::{Device, Kind, Tensor};

/// The fixture's pairs as micro-batches of `size`, made ready as the trainer makes them (texts
/// cut after their last pooled position, `MicroBatch::new`); transformers ran the whole context.
fn micro_batches(
    model: &ClipModel,
    e: &std::collections::HashMap<String, Tensor>,
    size: i64,
) -> Vec<MicroBatch> {
    let n = e["input_ids"].size()[0];
    let eos = model.config.text_config.eos_token_id;
    (0..n)
        .step_by(size as usize)
        .map(|s| {
            let rows = |t: &Tensor| t.narrow(0, s, size);
            let pixels = e["pixel_values"].to_kind(Kind::Float);
            let (ids, mask) = (&e["input_ids"], &e["attention_mask"]);
            MicroBatch::new(&rows(&pixels), &rows(ids), &rows(mask), eos, |t| t.copy())
        })
        .collect()
}

/// One step's gradients over `batch`'s micro-batches, each its own loss (fp32, one process).
fn per_micro_batch_gradients(model: &ClipModel, batch: &[MicroBatch]) -> StepStats {
    accumulate_gradients(
        model,
        batch,
        Accumulation::PerMicroBatch,
        None,
        &Dist::single(),
    )
    .unwrap()
}

#[test]
fn adamw_steps_match_torch() {
    let model = ClipModel::load(&fixture("tiny-p32-224"), Device::Cpu).unwrap();
    let e = expected("tiny-p32-224");
    let reference = expected("tiny-p32-224-adamw");
    let cfg = OptimConfig {
        lr: 1e-3,
        betas: [0.9, 0.98],
        eps: 1e-6,
        weight_decay: 0.1,
        schedule: Schedule::Linear,
        warmup_steps: 2,
        max_grad_norm: Some(1.0),
        ..OptimConfig::default()
    };
    let groups = ParamGroups::resolve(&model, &cfg).unwrap();
    let mut opt = AdamW::new(&model.vs, &cfg, &groups);
    let batch = micro_batches(&model, &e, 4);
    let losses = Vec::<f32>::try_from(&reference["losses"]).unwrap();
    for (t, want) in losses.iter().enumerate() {
        let stats = per_micro_batch_gradients(&model, &batch);
        // Every step's loss: a weight that the two sides move apart (below) sits where the
        // gradient, the loss's sensitivity to it, is near zero, so losses stay comparable.
        assert!(
            (stats.loss.double_value(&[]) - *want as f64).abs() < 1e-5,
            "step {t}: loss {} vs {want}",
            stats.loss.double_value(&[])
        );
        let ours = (t == 0).then(|| clipped_gradients(&model, cfg.max_grad_norm.unwrap()));
        let lr = cfg.lr_at(t as u64, losses.len() as u64);
        let _grad_norm = optimizer_step(&model, &mut opt, lr, cfg.max_grad_norm, None).unwrap();
        if let Some(ours) = ours {
            assert_first_step_matches(&model, &ours, &reference, lr, &cfg);
        }
    }
}

/// Each parameter's gradient scaled as `clip_grad_norm_(max_norm)` scales it.
fn clipped_gradients(model: &ClipModel, max_norm: f64) -> Vec<(String, Tensor)> {
    let grads: Vec<(String, Tensor)> = model
        .vs
        .variables()
        .into_iter()
        .map(|(n, v)| (n, v.grad().to_kind(Kind::Double)))
        .collect();
    let norm = grads
        .iter()
        .map(|(_, g)| g.square().sum(Kind::Double).double_value(&[]))
        .sum::<f64>()
        .sqrt();
    let coef = (max_norm / (norm + 1e-6)).min(1.0);
    grads.into_iter().map(|(n, g)| (n, g * coef)).collect()
}

/// The first AdamW step against torch's, derived from the arithmetic rather than a fixed bound:
/// ours and torch's forward/backward sum in different orders, so the clipped gradients agree to
/// 1e-5 of each tensor's scale (rounding-level key biases aside, see `assert_gradients_close`),
/// and AdamW's first step, lr · g / (|g| + eps) per element, may differ by no more than those two
/// gradients make it differ (up to 2 · lr where a gradient is near zero and the rounding flips
/// its sign; identical weight decay from identical weights), plus 4 float32 ulps of |θ| + lr.
fn assert_first_step_matches(
    model: &ClipModel,
    ours: &[(String, Tensor)],
    reference: &std::collections::HashMap<String, Tensor>,
    lr: f64,
    cfg: &OptimConfig,
) {
    let theirs = |n: &str| reference[&format!("grad1.{n}")].to_kind(Kind::Double);
    let torch_lr = reference["lr1"].double_value(&[0]);
    assert!(
        (torch_lr - lr).abs() < 1e-12,
        "the same step-1 lr: {torch_lr} vs {lr}"
    );
    assert_gradients_close("step-1 clipped gradient", ours, theirs, 1e-5);
    let variables = model.vs.variables();
    for (name, g) in ours {
        let step = |g: &Tensor| g / (g.abs() + cfg.eps);
        let theta = variables[name].to_kind(Kind::Double);
        let want = reference[&format!("param1.{name}")].to_kind(Kind::Double);
        let bound = (step(g) - step(&theirs(name))).abs() * lr
            + (want.abs() + lr) * (4.0 * f32::EPSILON as f64);
        let excess = ((&theta - &want).abs() - bound).max().double_value(&[]);
        assert!(
            excess <= 0.0,
            "param {name} after step 1: beyond AdamW's bound by {excess:e}"
        );
    }
}

fn gradients(model: &ClipModel) -> Vec<(String, Tensor)> {
    let mut g: Vec<(String, Tensor)> = model
        .vs
        .variables()
        .into_iter()
        .map(|(n, v)| (n, v.grad().copy()))
        .collect();
    g.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, v) in model.vs.variables() {
        let mut v = v;
        v.zero_grad();
    }
    g
}

#[test]
fn full_batch_accumulation_equals_one_step_on_the_whole_batch() {
    // The algorithm is exact; fp32 only adds summation-order rounding (the two paths reduce
    // over the batch in different groupings, ~1e-5 relative on small LayerNorm gradients), so
    // the equivalence is checked in float64, and the fp32 result against transformers.
    for name in ["tiny-p32-224", "tiny-p14-336"] {
        let mut model = ClipModel::load(&fixture(name), Device::Cpu).unwrap();
        model.vs.double();
        let e = expected(name);
        let e64: std::collections::HashMap<String, Tensor> = e
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    if v.is_floating_point() {
                        v.to_kind(Kind::Double)
                    } else {
                        v.shallow_clone()
                    },
                )
            })
            .collect();
        let to_f64 = |mb: Vec<MicroBatch>| {
            mb.into_iter()
                .map(|m| MicroBatch {
                    pixel_values: m.pixel_values.to_kind(Kind::Double),
                    ..m
                })
                .collect::<Vec<_>>()
        };
        let whole = accumulate_gradients(
            &model,
            &to_f64(micro_batches(&model, &e64, 4)),
            Accumulation::FullBatch,
            None,
            &Dist::single(),
        )
        .unwrap();
        let one_step: std::collections::HashMap<String, Tensor> =
            gradients(&model).into_iter().collect();
        let split = accumulate_gradients(
            &model,
            &to_f64(micro_batches(&model, &e64, 2)),
            Accumulation::FullBatch,
            None,
            &Dist::single(),
        )
        .unwrap();
        let accumulated = gradients(&model);
        assert!((whole.loss.double_value(&[]) - split.loss.double_value(&[])).abs() < 1e-12);
        assert_gradients_close(
            &format!("{name} f64 full_batch vs one step"),
            &accumulated,
            |n| one_step[n].shallow_clone(),
            1e-5,
        );

        let model = ClipModel::load(&fixture(name), Device::Cpu).unwrap();
        let split = accumulate_gradients(
            &model,
            &micro_batches(&model, &e, 2),
            Accumulation::FullBatch,
            None,
            &Dist::single(),
        )
        .unwrap();
        assert!(
            (split.loss.double_value(&[]) - e["loss"].double_value(&[])).abs() < 1e-5,
            "the HF loss on the whole batch"
        );
        assert_gradients_close(
            &format!("{name} fp32 full_batch vs HF"),
            &gradients(&model),
            |n| e[&format!("grad.{n}")].shallow_clone(),
            1e-4,
        );
    }
}

#[test]
fn per_micro_batch_accumulation_averages_local_losses() {
    let model = ClipModel::load(&fixture("tiny-p32-224"), Device::Cpu).unwrap();
    let e = expected("tiny-p32-224");
    let micro = micro_batches(&model, &e, 2);
    let stats = accumulate_gradients(
        &model,
        &micro,
        Accumulation::PerMicroBatch,
        None,
        &Dist::single(),
    )
    .unwrap();
    let accumulated = gradients(&model);
    let mut expected_loss = 0.0;
    for m in &micro {
        let out = model.forward(&m.input_ids, m.attention_mask.as_ref(), &m.pixel_values);
        let loss = clip_loss(&out.logits_per_text) / 2.0;
        expected_loss += loss.double_value(&[]);
        loss.backward();
    }
    let manual = gradients(&model);
    assert!((stats.loss.double_value(&[]) - expected_loss).abs() < 1e-6);
    for ((n, a), (_, b)) in accumulated.iter().zip(&manual) {
        assert_rel_close(&format!("per_micro_batch grad {n}"), a, b, 1e-6);
    }
    // Local negatives only: not the whole-batch loss.
    assert!((stats.loss.double_value(&[]) - e["loss"].double_value(&[])).abs() > 1e-3);
}

#[test]
fn schedules() {
    let cfg = OptimConfig {
        lr: 1.0,
        warmup_steps: 10,
        schedule: Schedule::Cosine,
        ..OptimConfig::default()
    };
    assert!((cfg.lr_at(0, 110) - 0.1).abs() < 1e-12);
    assert!((cfg.lr_at(9, 110) - 1.0).abs() < 1e-12);
    assert!(
        (cfg.lr_at(60, 110) - 0.5).abs() < 1e-12,
        "half way through the cosine"
    );
    assert!(cfg.lr_at(110, 110).abs() < 1e-12);
    let lin = OptimConfig {
        schedule: Schedule::Linear,
        ..cfg.clone()
    };
    assert!((lin.lr_at(35, 110) - 0.75).abs() < 1e-12);
    let constant = OptimConfig {
        schedule: Schedule::Constant,
        ..cfg
    };
    assert_eq!(constant.lr_at(100, 110), 1.0);
}

#[test]
fn bf16_autocast_matches_torch_autocast() {
    // The CUDA precision path, exercised on the CPU against torch.autocast(bfloat16) on the
    // same towers with the loss in fp32 (scripts/make_fixtures.py): fp32 master gradients.
    let model = ClipModel::load(&fixture("tiny-p32-224"), Device::Cpu).unwrap();
    let e = expected("tiny-p32-224");
    let reference = expected("tiny-p32-224-bf16");
    let stats = accumulate_gradients(
        &model,
        &micro_batches(&model, &e, 4),
        Accumulation::PerMicroBatch,
        Some(streetclip::shim::AutocastDtype::BFloat16),
        &Dist::single(),
    )
    .unwrap();
    assert!(
        (stats.loss.double_value(&[]) - reference["loss"].double_value(&[])).abs() < 1e-5,
        "bf16 loss {} vs torch {}",
        stats.loss.double_value(&[]),
        reference["loss"].double_value(&[])
    );
    let grads = gradients(&model);
    assert!(
        grads.iter().all(|(_, g)| g.kind() == Kind::Float),
        "fp32 master gradients"
    );
    assert_gradients_close(
        "bf16 vs torch autocast",
        &grads,
        |n| reference[&format!("grad.{n}")].shallow_clone(),
        1e-4,
    );
}

#[test]
fn soft_cross_entropy_matches_torch() {
    // The geocell head's loss: torch's F.cross_entropy with probability targets, and its
    // gradient, on seeded logits and smoothed-looking targets.
    let tmp = tmpdir();
    let file = tmp.path().join("soft.safetensors");
    run_python([
        "-c",
        "import sys, torch; from safetensors.torch import save_file\n\
         g = torch.Generator().manual_seed(7)\n\
         logits = (torch.randn(6, 9, generator=g) * 3).requires_grad_()\n\
         targets = torch.softmax(torch.randn(6, 9, generator=g) * 4, dim=1)\n\
         loss = torch.nn.functional.cross_entropy(logits, targets)\n\
         loss.backward()\n\
         save_file({'logits': logits.detach(), 'targets': targets, 'loss': loss.detach().reshape(1), 'grad': logits.grad}, sys.argv[1])",
        file.to_str().unwrap(),
    ]);
    let e: std::collections::HashMap<String, Tensor> = streetclip::formats::tensor_io::read(&file)
        .unwrap()
        .into_iter()
        .collect();
    let logits = e["logits"].copy().set_requires_grad(true);
    let loss = streetclip::train::loss::soft_cross_entropy(&logits, &e["targets"]);
    loss.backward();
    assert_close("loss", &loss.reshape([1]), &e["loss"], 1e-6);
    assert_close("gradient", &logits.grad(), &e["grad"], 1e-7);
}

/// Activation checkpointing changes what is kept, not what is computed: one step's gradients
/// with it equal those without it bit for bit on the CPU, in both accumulation modes (the
/// fixtures' captions are padded, so the text tower's mask is recomputed too), with one tower
/// or both, and under bf16 autocast (the recomputation runs under the forward's autocast).
#[test]
fn activation_checkpointing_gives_the_same_gradients() {
    use streetclip::shim::AutocastDtype;
    for name in ["tiny-p32-224", "tiny-p14-336"] {
        let e = expected(name);
        for (mode, size) in [
            (Accumulation::FullBatch, 2),
            (Accumulation::FullBatch, 4),
            (Accumulation::PerMicroBatch, 2),
        ] {
            for amp in [None, Some(AutocastDtype::BFloat16)] {
                let mut model = ClipModel::load(&fixture(name), Device::Cpu).unwrap();
                let step = |model: &ClipModel| {
                    let stats = accumulate_gradients(
                        model,
                        &micro_batches(model, &e, size),
                        mode,
                        amp,
                        &Dist::single(),
                    )
                    .unwrap();
                    (stats.loss.double_value(&[]), gradients(model))
                };
                let (loss, plain) = step(&model);
                for (vision, text) in [(true, true), (true, false), (false, true)] {
                    model.set_activation_checkpointing(vision, text);
                    let (checkpointed_loss, checkpointed) = step(&model);
                    let what = format!(
                        "{name} {mode:?} micro-batch {size} {amp:?} vision {vision} text {text}"
                    );
                    assert_eq!(loss, checkpointed_loss, "{what}: loss");
                    assert_eq!(plain.len(), checkpointed.len());
                    for ((n, a), (_, b)) in plain.iter().zip(&checkpointed) {
                        assert!(a.defined() && b.defined(), "{what}: {n} has no gradient");
                        assert_eq!(max_diff(a, b), 0.0, "{what}: gradient of {n}");
                    }
                }
            }
        }
    }
}

/// `optim.groups` and `optim.layer_decay`: three steps equal torch.optim.AdamW built with the
/// same param groups on transformers' CLIPModel (scripts/param_groups_reference.py builds them
/// itself, BEiT's way) and given the same gradients: a frozen group (the text tower, never
/// changed), a group over names and one over a glob, each with its scale and weight decay,
/// layer decay over the rest.
#[test]
fn param_groups_and_layer_decay_match_torch_adamw() {
    let name = "tiny-p32-224";
    let spec = serde_json::json!({
        "lr": 1e-3, "betas": [0.9, 0.98], "eps": 1e-6, "weight_decay": 0.1, "layer_decay": 0.7,
        "groups": [
            {"params": ["text"], "lr_scale": 0.0},
            {"params": ["projections", "logit_scale"], "lr_scale": 5.0, "weight_decay": 0.0},
            {"params": ["vision_model.encoder.layers.1.*"], "lr_scale": 2.0, "weight_decay": 0.3},
        ],
    });
    let mut cfg: OptimConfig = serde_json::from_value(spec.clone()).unwrap();
    cfg.schedule = Schedule::Constant;
    cfg.max_grad_norm = None;
    cfg.validate().unwrap();
    let model = ClipModel::load(&fixture(name), Device::Cpu).unwrap();
    let before: std::collections::HashMap<String, Tensor> = model
        .vs
        .variables()
        .into_iter()
        .map(|(n, v)| (n, v.copy()))
        .collect();
    let groups = ParamGroups::resolve(&model, &cfg).unwrap();
    for (n, v) in model.vs.variables() {
        let _ = v.set_requires_grad(!groups.of(&n).frozen());
    }
    let layers_1_fc1 = groups.of("vision_model.encoder.layers.1.mlp.fc1.weight");
    assert_eq!(layers_1_fc1.weight_decay, 0.3);
    assert!(
        (layers_1_fc1.lr_scale - 2.0 * 0.7f64.powi(2)).abs() < 1e-15,
        "block 1 of 3"
    );
    let mut opt = AdamW::new(&model.vs, &cfg, &groups);
    let e = expected(name);
    let batch = micro_batches(&model, &e, e["input_ids"].size()[0]);
    const STEPS: usize = 3;
    let mut grads = vec![];
    for t in 0..STEPS {
        per_micro_batch_gradients(&model, &batch);
        for (n, v) in model.vs.variables() {
            if v.grad().defined() {
                grads.push((format!("grad{t}.{n}"), v.grad().copy()));
            }
        }
        let _norm = optimizer_step(&model, &mut opt, cfg.lr, None, None).unwrap();
    }

    let tmp = tmpdir();
    let (grads_path, out) = (
        tmp.path().join("grads.safetensors"),
        tmp.path().join("out.safetensors"),
    );
    streetclip::formats::tensor_io::write(&grads_path, &grads).unwrap();
    let script = root().join("scripts/param_groups_reference.py");
    run_python([
        script.as_os_str(),
        fixture(name).as_os_str(),
        grads_path.as_os_str(),
        std::ffi::OsStr::new(&spec.to_string()),
        std::ffi::OsStr::new(&STEPS.to_string()),
        out.as_os_str(),
    ]);
    let reference: std::collections::HashMap<String, Tensor> =
        streetclip::formats::tensor_io::read(&out)
            .unwrap()
            .into_iter()
            .collect();
    for (n, v) in model.vs.variables() {
        let r = &reference[&n];
        if n.starts_with("text_model.") {
            assert!(
                v.equal(&before[&n]) && r.equal(&before[&n]),
                "{n}: a frozen group moved"
            );
        } else {
            assert!(!v.equal(&before[&n]), "{n} did not train");
            // A wrong scale moves a weight by ~1e-4 of its size or more (3 steps at ~1e-3).
            assert_rel_close(&n, &v, r, 1e-6);
        }
    }
}
