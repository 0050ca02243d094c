//! Faults and bad input in long runs: the right answer or one clear error with a non-zero exit —
//! never a silently wrong number, a panic, a lost or mixed checkpoint (README, "Reliability").

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use streetclip::data::dataset::{DataConfig, Dataset, OnError};
use streetclip::data::ImageRef;
use streetclip::geo::Gazetteer;
use streetclip::train::checkpoint;

/// A tiny model on 4 countries of synthetic scenes, 5 steps per epoch.
fn write_config(dir: &Path) -> PathBuf {
    let text = format!(
        r#"{TINY_MODEL_YAML}data:
  manifest: {dir}/scenes/manifest.csv
  synth: {{countries: 4, cities_per_country: 2, per_city: 12, seed: 3}}
train:
  micro_batch_size: 8
  grad_accum_steps: 2
  epochs: 2
  seed: 1
  checkpoint_every: 2
  keep_checkpoints: 100
  val_fraction: 0.15
optim: {{lr: 2.0e-3, warmup_steps: 2}}
"#,
        dir = dir.display()
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn train(cfg: &Path, out: &Path, extra: &[&str]) -> Output {
    run_command("train", cfg, out, extra)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn assert_fails_cleanly(o: &Output, must_mention: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for m in must_mention {
        assert!(err.contains(m), "`{m}` in: {err}");
    }
}

fn weights(checkpoint: &Path) -> Vec<(String, tch::Tensor)> {
    streetclip::tensor_io::read(&checkpoint.join("model.safetensors")).unwrap()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn validation_with_an_undecodable_image_scores_as_without_it() {
    let tmp = tmpdir();
    let g = Gazetteer::bundled().unwrap();
    let args = streetclip::synth::SynthArgs {
        countries: 4,
        cities_per_country: 2,
        per_city: 5,
        seed: 2,
        width: 96,
        height: 72,
    };
    streetclip::synth::generate(tmp.path(), &args, g).unwrap();
    let cfg = DataConfig {
        manifest: Some(tmp.path().join("manifest.csv")),
        ..DataConfig::default()
    };
    let (data, _) = Dataset::load(&cfg, g).unwrap();
    let good: Vec<_> = data.samples[..30].to_vec();
    // The same set with a zero-byte image early on, where it would shift every later label.
    let broken = tmp.path().join("images/broken.jpg");
    std::fs::write(&broken, b"").unwrap();
    let mut bad_sample = good[0].clone();
    bad_sample.image = ImageRef::File(broken);
    bad_sample.origin = "broken.jpg".into();
    let mut with_bad = good.clone();
    with_bad.insert(2, bad_sample);

    let clip = streetclip::pretrained::Pretrained::load(&fixture("tiny-p14-336"), tch::Device::Cpu)
        .unwrap();
    let captioner = streetclip::text::Captioner::new(&Default::default()).unwrap();
    let country_prompts = streetclip::config::GeoConfig::default().country_prompts;
    let validate = |samples: &[_], on_error| {
        streetclip::train::validate::validate(
            &clip,
            samples,
            &captioner,
            g,
            &country_prompts,
            8,
            on_error,
        )
    };
    let clean = validate(&good, OnError::Skip).unwrap();
    let skipped = validate(&with_bad, OnError::Skip).unwrap();
    assert_eq!(skipped.skipped, 1);
    assert_eq!(
        (
            skipped.samples,
            skipped.batch_accuracy,
            skipped.country_accuracy
        ),
        (clean.samples, clean.batch_accuracy, clean.country_accuracy)
    );
    let err = validate(&with_bad, OnError::Fail).unwrap_err().to_string();
    assert!(err.contains("broken.jpg"), "{err}");
}

#[test]
fn out_of_range_numbers_are_config_errors() {
    let tmp = tmpdir();
    let cfg = write_config(tmp.path());
    for (set, key) in [
        ("optim.lr=.nan", "optim.lr"),
        ("optim.lr=-1.0e-4", "optim.lr"),
        ("optim.betas=[0.9, 1.0]", "optim.betas[1]"),
        ("optim.max_grad_norm=0", "optim.max_grad_norm"),
        ("optim.weight_decay=-0.1", "optim.weight_decay"),
        ("data.workers=100000", "data.workers"),
        ("data.augment.hflip=1.5", "data.augment.hflip"),
        (
            "data.augment.random_resized_crop=[1.0, 0.5]",
            "random_resized_crop",
        ),
        (
            "train.freeze={vision: true, text: true}",
            "train.freeze.vision",
        ),
    ] {
        let out = train(&cfg, &tmp.path().join("r"), &["--set", set]);
        assert_fails_cleanly(&out, &[key]);
    }
    assert!(
        !tmp.path().join("r/checkpoints").exists(),
        "nothing may be trained"
    );
}

#[test]
fn interrupt_saves_and_exits_with_the_signal_code_then_resumes() {
    let tmp = tmpdir();
    let cfg = write_config(tmp.path());
    let run = tmp.path().join("run");
    let child = Command::new(env!("CARGO_BIN_EXE_streetclip"))
        .args([
            "train",
            "--set",
            "train.epochs=40",
            "--set",
            "train.checkpoint_every=4",
            "--config",
        ])
        .arg(&cfg)
        .arg("--out")
        .arg(&run)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("a checkpoint", || {
        !checkpoint::list(&run.join("checkpoints")).is_empty()
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("rerun the same command to resume"),
        "{}",
        stderr(&out)
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["stopped_by"]["reason"], "signal");
    let saved =
        checkpoint::read_state(&checkpoint::list(&run.join("checkpoints")).pop().unwrap()).unwrap();
    assert_eq!(
        saved.step,
        summary["steps"].as_u64().unwrap(),
        "the stop is checkpointed"
    );
    let again = train(
        &cfg,
        &run,
        &[
            "--set",
            "train.epochs=40",
            "--set",
            "train.checkpoint_every=4",
            "--max-steps",
            &(saved.step + 1).to_string(),
        ],
    );
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stderr(&again).contains("resuming from"));
}

#[test]
fn a_second_writer_is_refused_and_rerunning_a_finished_run_changes_nothing() {
    let tmp = tmpdir();
    let cfg = write_config(tmp.path());
    let run = tmp.path().join("run");
    let mut first = Command::new(env!("CARGO_BIN_EXE_streetclip"))
        .args(["train", "--set", "train.epochs=20", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&run)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the run's lock", || run.join("config.yaml").exists());
    let second = train(&cfg, &run, &["--set", "train.epochs=20"]);
    let finished = first.wait().unwrap();
    assert_fails_cleanly(&second, &["in use by another streetclip process"]);
    assert!(finished.success());

    let summary = std::fs::read(run.join("summary.json")).unwrap();
    for extra in [&[][..], &["--max-steps", "2"][..]] {
        let again = train(
            &cfg,
            &run,
            &[&["--set", "train.epochs=20"][..], extra].concat(),
        );
        assert!(again.status.success(), "{}", stderr(&again));
        assert!(
            stderr(&again).contains("nothing to train"),
            "{}",
            stderr(&again)
        );
        assert_eq!(
            std::fs::read(run.join("summary.json")).unwrap(),
            summary,
            "summary.json kept"
        );
    }
}

#[test]
fn resuming_with_a_result_changing_config_needs_consent() {
    let tmp = tmpdir();
    let cfg = write_config(tmp.path());
    let run = tmp.path().join("run");
    let first = train(&cfg, &run, &["--max-steps", "2"]);
    assert!(first.status.success());
    // Stopped early: not exported, and told how to export.
    let hint = stderr(&first);
    assert!(
        hint.contains("streetclip export --checkpoint") && hint.contains("step-00000002"),
        "{hint}"
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    assert!(summary["export"].is_null());
    assert!(summary["checkpoint"]
        .as_str()
        .unwrap()
        .ends_with("step-00000002"));
    let changed = train(
        &cfg,
        &run,
        &[
            "--max-steps",
            "3",
            "--set",
            "optim.lr=1.0e-2",
            "--set",
            "train.seed=7",
        ],
    );
    assert_fails_cleanly(
        &changed,
        &["optim.lr", "train.seed", "--allow-config-change"],
    );
    // Observation-only settings may change freely.
    let logging = train(
        &cfg,
        &run,
        &["--max-steps", "3", "--set", "train.log_every=1"],
    );
    assert!(logging.status.success(), "{}", stderr(&logging));
    let allowed = train(
        &cfg,
        &run,
        &[
            "--max-steps",
            "4",
            "--set",
            "optim.lr=1.0e-2",
            "--allow-config-change",
        ],
    );
    assert!(allowed.status.success(), "{}", stderr(&allowed));
    assert!(stderr(&allowed).contains("config changes accepted"));
    let recorded = std::fs::read_to_string(run.join("config.yaml")).unwrap();
    assert!(
        recorded.contains("# config changes accepted when resuming at step 3")
            && recorded.contains("optim.lr"),
        "{recorded}"
    );
}

#[test]
fn a_damaged_newest_checkpoint_falls_back_to_the_previous_one() {
    let tmp = tmpdir();
    let cfg = write_config(tmp.path());
    let (damaged, whole) = (tmp.path().join("damaged"), tmp.path().join("whole"));
    assert!(train(&cfg, &damaged, &["--max-steps", "4"])
        .status
        .success());
    let newest = checkpoint::list(&damaged.join("checkpoints"))
        .pop()
        .unwrap();
    assert!(newest.ends_with("step-00000004"));
    // A truncated optimizer file, then a garbage state.json on top.
    let opt = newest.join("optimizer.safetensors");
    let len = std::fs::metadata(&opt).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&opt)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    std::fs::write(newest.join("state.json"), b"{\"step\": \"garbage").unwrap();
    let out = train(&cfg, &damaged, &["--max-steps", "6"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("step-00000004 is unusable")
            && err.contains("resuming from")
            && err.contains("step-00000002"),
        "{err}"
    );
    // Resuming from step 2 is exact: the same weights as a run that was never damaged.
    assert!(train(&cfg, &whole, &["--max-steps", "6"]).status.success());
    let a = weights(
        &checkpoint::list(&damaged.join("checkpoints"))
            .pop()
            .unwrap(),
    );
    let b = weights(&checkpoint::list(&whole.join("checkpoints")).pop().unwrap());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x.equal(y), "{name} differs");
    }
    // An old-style checkpoint (no checksums) with a wrong-shaped optimizer tensor, and nothing
    // older to fall back to: a clear error.
    let solo = tmp.path().join("solo");
    assert!(train(&cfg, &solo, &["--max-steps", "2"]).status.success());
    let only = checkpoint::list(&solo.join("checkpoints")).pop().unwrap();
    std::fs::remove_file(only.join("checksums.json")).unwrap();
    let mut moments = streetclip::tensor_io::read(&only.join("optimizer.safetensors")).unwrap();
    moments[0].1 = tch::Tensor::zeros([3], (tch::Kind::Float, tch::Device::Cpu));
    streetclip::tensor_io::write(&only.join("optimizer.safetensors"), &moments).unwrap();
    assert_fails_cleanly(
        &train(&cfg, &solo, &["--max-steps", "3"]),
        &["shape", "can be resumed"],
    );
}

#[test]
fn unreadable_images_that_leave_batches_short_fail_loudly() {
    let tmp = tmpdir();
    let cfg = write_config(tmp.path());
    // Draw the scenes, then break a third of them.
    let scenes = tmp.path().join("scenes");
    let out = Command::new(env!("CARGO_BIN_EXE_streetclip"))
        .args([
            "synth-data",
            "--countries",
            "4",
            "--cities-per-country",
            "2",
            "--per-city",
            "12",
            "--seed",
            "3",
            "--out",
        ])
        .arg(&scenes)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let mut images: Vec<_> = std::fs::read_dir(scenes.join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    images.sort();
    for p in images.iter().step_by(3) {
        std::fs::write(p, b"not an image").unwrap();
    }
    let run = tmp.path().join("run");
    let out = train(&cfg, &run, &[]);
    assert_fails_cleanly(&out, &["data ran out at step", "unreadable samples"]);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["stopped_by"]["reason"], "data_exhausted");
    assert!(summary["export"].is_null());
    // Every unreadable training sample is counted, those in dropped partial batches too.
    let train_broken = summary["skipped_samples"].as_u64().unwrap();
    assert!(
        train_broken > 0 && train_broken.is_multiple_of(2),
        "each epoch meets the same broken samples: {train_broken}"
    );
}

#[test]
fn workers_die_with_a_killed_launcher() {
    let tmp = tmpdir();
    let cfg = write_config(tmp.path());
    let mut launcher = Command::new(env!("CARGO_BIN_EXE_streetclip"))
        .args([
            "train",
            "--nproc-per-node",
            "2",
            "--set",
            "train.epochs=200",
            "--set",
            "train.checkpoint_every=1000",
            "--config",
        ])
        .arg(&cfg)
        .arg("--out")
        .arg(tmp.path().join("run"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let children = || -> Vec<i32> {
        let path = format!("/proc/{0}/task/{0}/children", launcher.id());
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect()
    };
    wait_for("two workers", || children().len() == 2);
    let workers = children();
    launcher.kill().unwrap(); // SIGKILL: no chance to stop them itself
    launcher.wait().unwrap();
    let alive = |pid: &i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while workers.iter().any(alive) {
        assert!(
            Instant::now() < deadline,
            "workers {workers:?} outlived their launcher"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
