//! The trainer end to end on synthetic scenes with a tiny CLIP: it learns, resumes exactly
//! (after --max-steps and after being killed), logs TensorBoard files TensorBoard can read,
//! exports an HF directory, and rejects bad configs clearly.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tiny model on 4 countries of scenes; `extra` is appended YAML.
fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let text = format!(
        r#"{TINY_MODEL_YAML}data:
  manifest: {dir}/scenes/manifest.csv
  synth: {{countries: 4, cities_per_country: 2, per_city: 12, seed: 3}}
captions: {{drop_city: 0.5, drop_region: 0.5}}
train:
  micro_batch_size: 8
  grad_accum_steps: 2
  epochs: 6
  seed: 1
  checkpoint_every: 4
  keep_checkpoints: 100
  log_every: 5
  val_fraction: 0.15
optim: {{lr: 2.0e-3, weight_decay: 0.1, schedule: cosine, warmup_steps: 3}}
{extra}"#,
        dir = dir.display()
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn train(args: &[&dyn AsRef<std::ffi::OsStr>]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_streetclip"))
        .arg("train")
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .unwrap()
}

fn summary(run: &Path) -> serde_json::Value {
    let s =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_rates_are_fractions("summary.json", &s);
    s
}

fn final_weights(run: &Path) -> Vec<(String, tch::Tensor)> {
    let last = streetclip::train::checkpoint::list(&run.join("checkpoints"))
        .pop()
        .unwrap();
    streetclip::formats::tensor_io::read(&last.join("model.safetensors")).unwrap()
}

fn losses(run: &Path) -> Vec<(u64, f64)> {
    let out = run_python([
        root().join("scripts/read_tensorboard.py").into_os_string(),
        run.join("tensorboard").into_os_string(),
    ]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    json["train/loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
        .collect()
}

#[test]
fn learns_logs_exports() {
    let tmp = tmpdir();
    let cfg = write_config(tmp.path(), "");
    let run = tmp.path().join("run");
    let out = train(&[&"--config", &cfg, &"--out", &run]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = summary(&run);
    let v = &s["validation"];
    let (acc, chance) = (
        v["country_accuracy"].as_f64().unwrap(),
        v["country_chance"].as_f64().unwrap(),
    );
    assert_eq!(chance, 0.25);
    assert!(
        acc >= 0.6,
        "zero-shot country accuracy {acc} vs chance {chance}"
    );
    // The run directory layout.
    for p in [
        "config.yaml",
        "summary.json",
        "export/config.json",
        "export/model.safetensors",
        "export/tokenizer.json",
        "export/preprocessor_config.json",
    ] {
        assert!(run.join(p).is_file(), "{p}");
    }
    // TensorBoard's own reader sees every scalar, one point per step.
    let out = run_python([
        root().join("scripts/read_tensorboard.py").into_os_string(),
        run.join("tensorboard").into_os_string(),
    ]);
    let tags: serde_json::Value = serde_json::from_str(&out).unwrap();
    let steps = s["steps"].as_u64().unwrap();
    for tag in [
        "train/loss",
        "train/lr",
        "train/logit_scale",
        "train/grad_norm",
        "train/samples_per_s",
        "train/batch_accuracy",
    ] {
        assert_eq!(
            tags[tag].as_array().map(|a| a.len() as u64),
            Some(steps),
            "{tag}"
        );
    }
    assert!(tags["val/country_accuracy"].as_array().is_some());
    let curve = losses(&run);
    assert!(
        curve.last().unwrap().1 < curve.first().unwrap().1,
        "the loss goes down: {curve:?}"
    );
    // The export loads back and the CLI exports a checkpoint the same way.
    let again = tmp.path().join("again");
    let last = streetclip::train::checkpoint::list(&run.join("checkpoints"))
        .pop()
        .unwrap();
    let st = Command::new(env!("CARGO_BIN_EXE_streetclip"))
        .args(["export", "--checkpoint"])
        .arg(&last)
        .arg("--out")
        .arg(&again)
        .status()
        .unwrap();
    assert!(st.success());
    let a = streetclip::formats::tensor_io::read(&run.join("export/model.safetensors")).unwrap();
    let b = streetclip::formats::tensor_io::read(&again.join("model.safetensors")).unwrap();
    assert!(a
        .iter()
        .zip(&b)
        .all(|((na, ta), (nb, tb))| na == nb && ta.equal(tb)));
}

#[test]
fn stopping_at_max_steps_then_continuing_equals_one_run() {
    let tmp = tmpdir();
    let cfg = write_config(tmp.path(), "");
    let (split, whole) = (tmp.path().join("split"), tmp.path().join("whole"));
    for (run, steps) in [(&split, "5"), (&split, "10"), (&whole, "10")] {
        let out = train(&[&"--config", &cfg, &"--out", run, &"--max-steps", &steps]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(summary(&split)["steps"], 10);
    let (a, b) = (final_weights(&split), final_weights(&whole));
    for ((na, ta), (_, tb)) in a.iter().zip(&b) {
        assert!(ta.equal(tb), "{na} differs after resuming");
    }
    assert_eq!(losses(&split), losses(&whole), "same loss curve");
}

#[test]
fn a_killed_run_resumes_where_it_stopped() {
    let tmp = tmpdir();
    let cfg = write_config(tmp.path(), "");
    let (killed, whole) = (tmp.path().join("killed"), tmp.path().join("whole"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_streetclip"))
        .args(["train", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&killed)
        .spawn()
        .unwrap();
    // Kill it (SIGKILL: no chance to save) once a mid-run checkpoint exists.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while streetclip::train::checkpoint::list(&killed.join("checkpoints")).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let out = train(&[&"--config", &cfg, &"--out", &killed]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming from"));
    let out = train(&[&"--config", &cfg, &"--out", &whole]);
    assert!(out.status.success());
    let (a, b) = (final_weights(&killed), final_weights(&whole));
    for ((na, ta), (_, tb)) in a.iter().zip(&b) {
        assert!(ta.equal(tb), "{na} differs after a kill and resume");
    }
}

/// The temporary directory of a checkpoint write in progress, if there is one.
fn partial_checkpoint(root: &Path) -> Option<PathBuf> {
    std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with('.') && name.contains(".tmp.")
        })
}

/// SIGKILL while a checkpoint is being written in the background (a 233 MB one, so the write is
/// caught in progress): the partial directory is never taken for a checkpoint, the next run
/// removes it and resumes from the previous complete one, and ends with the weights of an
/// uninterrupted run, bit for bit.
#[test]
fn a_kill_during_a_background_checkpoint_write_resumes_exactly() {
    let tmp = tmpdir();
    let cfg = write_config(tmp.path(), "");
    let big = [
        "--set",
        "model.config.text_config.hidden_size=384",
        "--set",
        "train.epochs=2",
        "--set",
        "train.checkpoint_every=2",
    ];
    let (killed, whole) = (tmp.path().join("killed"), tmp.path().join("whole"));
    let root = killed.join("checkpoints");
    let list = streetclip::train::checkpoint::list;
    let mut caught = false;
    for _attempt in 0..5 {
        let _ = std::fs::remove_dir_all(&killed);
        let mut child = Command::new(env!("CARGO_BIN_EXE_streetclip"))
            .args(["train", "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(&killed)
            .args(big)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        while child.try_wait().unwrap().is_none()
            && (list(&root).is_empty() || partial_checkpoint(&root).is_none())
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let _ = child.kill();
        child.wait().unwrap();
        if !list(&root).is_empty() && partial_checkpoint(&root).is_some() {
            caught = true;
            break;
        }
    }
    assert!(caught, "no kill landed during a checkpoint write in 5 runs");
    let newest = list(&root).pop().unwrap();
    let train_big = |out: &Path| {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"--config", &cfg, &"--out"];
        args.push(&out);
        args.extend(big.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>));
        train(&args)
    };
    let out = train_big(&killed);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("resuming from {}", newest.display())),
        "{err}"
    );
    assert!(err.contains("did not finish writing"), "{err}");
    assert!(
        partial_checkpoint(&root).is_none(),
        "the partial write was left"
    );
    assert!(train_big(&whole).status.success());
    let (a, b) = (final_weights(&killed), final_weights(&whole));
    for ((na, ta), (_, tb)) in a.iter().zip(&b) {
        assert!(
            ta.equal(tb),
            "{na} differs after a kill mid-write and resume"
        );
    }
    assert_eq!(losses(&killed).last(), losses(&whole).last());
}

/// `train.profile: N` writes PyTorch's profiler trace of N steps after the first as
/// Chrome-trace JSON; a run that stops first writes what it has.
#[test]
fn profile_writes_a_chrome_trace_of_the_chosen_steps() {
    let tmp = tmpdir();
    let cfg = write_config(tmp.path(), "");
    for (name, profile, steps, said) in [
        ("two", "2", "5", "steps 2..3"),
        ("cut", "5", "3", "steps 2..3"),
    ] {
        let run = tmp.path().join(name);
        let set = format!("train.profile={profile}");
        let out = train(&[
            &"--config",
            &cfg,
            &"--out",
            &run,
            &"--max-steps",
            &steps,
            &"--set",
            &set,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(err.contains(&format!("profile of {said} written")), "{err}");
        let trace: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("profile/trace-rank0.json")).unwrap())
                .unwrap();
        let events = trace["traceEvents"].as_array().unwrap();
        let matmuls = events
            .iter()
            .filter(|e| e["name"].as_str().is_some_and(|n| n.ends_with("mm")))
            .count();
        assert!(matmuls > 10, "{matmuls} matrix products in the trace");
    }
}

#[test]
fn bad_configs_name_the_key() {
    let tmp = tmpdir();
    let cfg = write_config(tmp.path(), "");
    let out = train(&[
        &"--config",
        &cfg,
        &"--out",
        &tmp.path().join("r"),
        &"--set",
        &"train.micro_bach_size=4",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("unknown field `micro_bach_size`") && err.contains("config.yaml"),
        "{err}"
    );
    let out = train(&[
        &"--config",
        &cfg,
        &"--out",
        &tmp.path().join("r"),
        &"--set",
        &"optim.lr=fast",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("optim.lr") || err.contains("lr"), "{err}");
    std::fs::write(
        tmp.path().join("typo.yaml"),
        "train:\n  epochs: 1\n  grad_accum: 3\n",
    )
    .unwrap();
    let out = train(&[&"--config", &tmp.path().join("typo.yaml")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("grad_accum") && err.contains("line 3"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
    for (set, says) in [
        (
            "train.keep_best.metric=accuracy",
            "expected `batch_accuracy` or `country_accuracy`",
        ),
        ("train.keep_best.metric=batch_accuracy", "needs validation"),
        (
            "train.activation_checkpointing=yes",
            "invalid value: string \"yes\", expected true, false, vision or text",
        ),
        (
            "optim.groups=[{params: [vison]}]",
            "optim.groups[0].params: `vison` names no parameter",
        ),
        (
            "optim.groups=[{params: []}]",
            "optim.groups[0].params is empty",
        ),
        (
            "optim.groups=[{params: [text], lr_scale: -1}]",
            "optim.groups[0].lr_scale = -1",
        ),
        (
            "optim.groups=[{params: [\"vision_model.[\"]}]",
            "is not a valid glob",
        ),
        (
            "optim.layer_decay=1.5",
            "optim.layer_decay = 1.5: it must be in (0, 1]",
        ),
        (
            "optim.groups=[{params: [vision, text, projections, logit_scale], lr_scale: 0}]",
            "leave no parameter to train",
        ),
    ] {
        let out = train(&[
            &"--config",
            &cfg,
            &"--out",
            &tmp.path().join("r"),
            &"--set",
            &"train.val_fraction=0",
            &"--set",
            &set,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(1) && err.contains(says) && !err.contains("panicked"),
            "{set}: {err}"
        );
    }
}

/// `optim.groups` and `layer_decay` in a run: the groups are said at the start with their sizes
/// and rates, and a frozen group never moves while the rest trains (bad entries: above).
#[test]
fn param_groups_are_said_and_a_frozen_group_stays_put() {
    let tmp = tmpdir();
    let groups = "  groups: [{params: [text], lr_scale: 0}, {params: [projections, logit_scale], lr_scale: 10, weight_decay: 0}]\n  layer_decay: 0.8\n";
    let cfg = write_config(tmp.path(), "");
    let yaml = std::fs::read_to_string(&cfg).unwrap();
    let yaml = yaml.replace(
        "optim: {lr: 2.0e-3, weight_decay: 0.1, schedule: cosine, warmup_steps: 3}",
        &format!("optim:\n  lr: 2.0e-3\n{groups}"),
    );
    std::fs::write(&cfg, yaml).unwrap();
    let run = tmp.path().join("run");
    let every_step = "train.checkpoint_every=1";
    let out = train(&[
        &"--config",
        &cfg,
        &"--out",
        &run,
        &"--max-steps",
        &"4",
        &"--set",
        &every_step,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    for says in [
        "optim group 0 [text]: ",
        "frozen (lr_scale 0)",
        "optim group 1 [projections, logit_scale]: ",
        "lr 2.000e-2, weight decay 0",
        "optim the rest: ",
        "(layer decay 0.8)",
    ] {
        assert!(err.contains(says), "`{says}` not in: {err}");
    }
    let checkpoints = streetclip::train::checkpoint::list(&run.join("checkpoints"));
    let read =
        |dir: &Path| streetclip::formats::tensor_io::read(&dir.join("model.safetensors")).unwrap();
    let (first, last) = (read(&checkpoints[0]), read(checkpoints.last().unwrap()));
    assert!(checkpoints.len() >= 2);
    for ((name, a), (_, b)) in first.iter().zip(&last) {
        let moved = !a.equal(b);
        assert_eq!(moved, !name.starts_with("text_model."), "{name}");
    }
}

#[test]
fn non_finite_loss_stops_after_saving_or_skips() {
    let tmp = tmpdir();
    let cfg = write_config(tmp.path(), "");
    // An absurd learning rate drives the weights to inf within a few steps.
    let diverging = |name: &str, extra: &[&str]| {
        let run = tmp.path().join(name);
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"--config", &cfg, &"--out", &run];
        for set in [
            "optim.lr=1.0e+30",
            "optim.max_grad_norm=null",
            "optim.warmup_steps=0",
        ]
        .iter()
        .chain(extra)
        {
            args.extend([&"--set" as &dyn AsRef<std::ffi::OsStr>, set]);
        }
        (train(&args), run.clone())
    };
    let (out, run) = diverging("nan", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("loss became") && err.contains("saved"),
        "{err}"
    );
    assert!(!streetclip::train::checkpoint::list(&run.join("checkpoints")).is_empty());

    // `skip`: the update of each non-finite step is cancelled on the device (the weights stay
    // finite), its batch used up; the run reaches its end and counts what it skipped.
    let (out, run) = diverging("skip", &["train.on_nonfinite=skip", "train.epochs=2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let s = summary(&run);
    assert_eq!(s["stopped_by"]["reason"], "end_of_training", "{s}");
    assert_eq!(s["steps"], s["total_steps"]);
    let skipped = s["skipped_steps"].as_u64().unwrap();
    assert!(skipped > 0 && skipped < s["steps"].as_u64().unwrap(), "{s}");
    assert_eq!(err.matches("step skipped").count() as u64, skipped);
    for (name, t) in final_weights(&run) {
        assert!(
            t.isfinite().all().int64_value(&[]) == 1,
            "{name} is not finite"
        );
    }
}

#[test]
fn freezing_locks_the_chosen_parameters() {
    let tmp = tmpdir();
    let base = write_config(tmp.path(), "");
    let init = fixture("tiny-p14-336");
    let original: std::collections::HashMap<String, tch::Tensor> =
        streetclip::formats::tensor_io::read(&init.join("model.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    for (freeze, locked, trained) in [
        (
            "train.freeze.vision=true",
            "vision_model.encoder.layers.1.mlp.fc1.weight",
            "text_model.encoder.layers.0.mlp.fc1.weight",
        ),
        (
            "train.freeze.last_n_blocks=1",
            "text_model.encoder.layers.0.mlp.fc1.weight",
            "text_model.encoder.layers.1.mlp.fc1.weight",
        ),
    ] {
        let run = tmp.path().join(freeze);
        let out = train(&[
            &"--config",
            &base,
            &"--out",
            &run,
            &"--max-steps",
            &"2",
            &"--set",
            &format!("model.init={}", init.display()),
            &"--set",
            &"model.config=null",
            &"--set",
            &freeze,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let after: std::collections::HashMap<String, tch::Tensor> =
            final_weights(&run).into_iter().collect();
        assert!(
            after[locked].equal(&original[locked]),
            "{freeze}: {locked} changed"
        );
        assert!(
            !after[trained].equal(&original[trained]),
            "{freeze}: {trained} did not train"
        );
        if freeze.contains("last_n") {
            let emb = "text_model.embeddings.token_embedding.weight";
            assert!(
                after[emb].equal(&original[emb]),
                "embeddings lock with last_n_blocks"
            );
        }
    }
}

/// One loader worker decoding a large noise PNG (whose decoding cannot be cut to the crop) for
/// every row, feeding a tiny model: the steps wait for data most of their wall time, and
/// TensorBoard says so (`time/data_wait_share`).
#[test]
fn a_slow_loader_shows_as_time_waiting_for_data() {
    let tmp = tmpdir();
    let images = tmp.path().join("big");
    run_python([
        "-c",
        "import sys, os, numpy as np\n\
         from PIL import Image\n\
         d = sys.argv[1]; os.makedirs(d)\n\
         pixels = np.random.default_rng(0).integers(0, 256, (2000, 2000, 3), dtype=np.uint8)\n\
         Image.fromarray(pixels).save(f'{d}/noise.png', compress_level=1)\n\
         rows = ['image,country'] + ['noise.png,' + ['France', 'Japan'][i % 2] for i in range(128)]\n\
         open(f'{d}/manifest.csv', 'w').write('\\n'.join(rows) + '\\n')",
        images.to_str().unwrap(),
    ]);
    let cfg = tmp.path().join("slow.yaml");
    std::fs::write(
        &cfg,
        format!(
            "{TINY_MODEL_YAML}data: {{manifest: {}/manifest.csv, workers: 1, prefetch: 1}}\ntrain: {{micro_batch_size: 16, grad_accum_steps: 1, epochs: 1, log_every: 100, checkpoint_every: 100, val_fraction: 0.0}}\n",
            images.display()
        ),
    )
    .unwrap();
    let run = tmp.path().join("run");
    // One OpenMP thread: on two cores, libtorch's spinning OpenMP threads and the decoding thread
    // slow each other, and the model's few milliseconds a step become hundreds (measured: 60-90%
    // waiting with two threads, 95-96% with one).
    let out = Command::new(env!("CARGO_BIN_EXE_streetclip"))
        .args(["train", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&run)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let tags: serde_json::Value = serde_json::from_str(&run_python([
        root().join("scripts/read_tensorboard.py").into_os_string(),
        run.join("tensorboard").into_os_string(),
    ]))
    .unwrap();
    let shares: Vec<f64> = tags["time/data_wait_share"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_f64().unwrap())
        .collect();
    assert_eq!(shares.len(), 8, "a share per step");
    // The first step also builds what a run builds once; the last fetches nothing more (its
    // share is 0 by definition): the steps between are the steady state.
    let waiting = &shares[1..shares.len() - 1];
    let mean = waiting.iter().sum::<f64>() / waiting.len() as f64;
    assert!(
        mean > 0.8,
        "waiting for data {mean:.2} of the time: {shares:?}"
    );
    assert!(tags["time/data_wait_s"].as_array().is_some());
}

#[test]
fn keep_best_exports_the_best_validations_weights_apart_from_the_rotation() {
    let tmp = tmpdir();
    let cfg = write_config(tmp.path(), "");
    let run = tmp.path().join("run");
    // The lowest in-batch accuracy is the best here: training raises it, so the best comes
    // early and later validations must not replace it.
    let out = train(&[
        &"--config",
        &cfg,
        &"--out",
        &run,
        &"--set",
        &"train.eval_every=2",
        &"--set",
        &"train.checkpoint_every=2",
        &"--set",
        &"train.keep_best.metric=batch_accuracy",
        &"--set",
        &"train.keep_best.mode=min",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // Every validation the run printed: (step, in-batch accuracy to 3 decimals).
    let validations: Vec<(u64, f64)> = err
        .lines()
        .filter_map(|l| {
            let (step, rest) = l
                .strip_prefix("step ")?
                .split_once(": val in-batch accuracy ")?;
            Some((step.parse().ok()?, rest.split(',').next()?.parse().ok()?))
        })
        .collect();
    assert!(validations.len() >= 5, "{err}");
    let best: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("best/summary.json")).unwrap())
            .unwrap();
    assert_eq!(best["keep_best"]["metric"], "batch_accuracy");
    assert_eq!(best["keep_best"]["mode"], "min");
    let (step, value) = (
        best["step"].as_u64().unwrap(),
        best["value"].as_f64().unwrap(),
    );
    let shown = validations.iter().find(|v| v.0 == step).unwrap().1;
    assert!(
        (shown - value).abs() <= 5e-4,
        "step {step}: {shown} vs {value}"
    );
    for &(s, v) in &validations {
        assert!(
            value <= v + 5e-4,
            "step {s} ({v}) is below the kept best {value} at step {step}"
        );
    }
    eprintln!("validations {validations:?}; kept step {step} ({value})");
    let last = validations.last().unwrap().0;
    assert!(
        step < last,
        "the best must come early for this test to mean anything: {validations:?}"
    );
    // best/ holds that step's weights (the checkpoint written at it), as a loadable export.
    let kept = streetclip::formats::tensor_io::read(&run.join("best/model.safetensors")).unwrap();
    let at_step = run.join(format!("checkpoints/step-{step:08}/model.safetensors"));
    let expected = streetclip::formats::tensor_io::read(&at_step).unwrap();
    assert_eq!(kept.len(), expected.len());
    for ((name, a), (_, b)) in kept.iter().zip(&expected) {
        assert!(a.equal(b), "{name} differs from step {step}'s");
    }
    streetclip::formats::pretrained::Pretrained::load(&run.join("best"), tch::Device::Cpu).unwrap();
    assert_eq!(summary(&run)["best"]["step"], step);
}
