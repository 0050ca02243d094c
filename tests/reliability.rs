//! Faults and bad input in long runs: the right answer or one clear error with a non-zero exit —
//! never a silently wrong number, a panic, a lost or mixed checkpoint (docs/reliability.md).

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
    streetclip::formats::tensor_io::read(&checkpoint.join("model.safetensors")).unwrap()
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

    let clip = streetclip::formats::pretrained::Pretrained::load(
        &fixture("tiny-p14-336"),
        tch::Device::Cpu,
    )
    .unwrap();
    let captioner = streetclip::text::Captioner::new(&Default::default()).unwrap();
    let country_prompts = streetclip::config::GeoConfig::default().country_prompts;
    let said = std::cell::RefCell::new(Vec::<String>::new());
    let validate = |samples: &[_], on_error| {
        streetclip::train::validate::validate(
            &clip,
            samples,
            &captioner,
            g,
            &country_prompts,
            8,
            on_error,
            &|line| said.borrow_mut().push(line.to_string()),
        )
    };
    let clean = validate(&good, OnError::Skip).unwrap();
    assert!(said.borrow().is_empty());
    let skipped = validate(&with_bad, OnError::Skip).unwrap();
    assert_eq!(skipped.skipped, 1);
    let told = said.borrow().join("\n");
    assert!(
        told.starts_with("validation: skipped broken.jpg: "),
        "{told}"
    );
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
        // Integer extremes: refused by range, never wrapped into a small step count or a
        // negative timeout.
        ("train.epochs=558992244657865201", "train.epochs"),
        (
            "train.micro_batch_size=9223372036854775808",
            "train.micro_batch_size",
        ),
        ("dist.timeout_s=18446744073709551615", "dist.timeout_s"),
        (
            "dist.heartbeat_timeout_s=18446744073709551615",
            "dist.heartbeat_timeout_s",
        ),
        // Prompts that cannot tell candidates apart.
        (
            "geo.country_prompts=['A Street View photo.']",
            "geo.country_prompts",
        ),
        (
            "geo.city_prompts=['A photo of {town}.']",
            "geo.city_prompts",
        ),
        // A typo inside an inline model config.
        (
            "model.config.vision_config.num_hidden_layer=1",
            "num_hidden_layer",
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
fn yaml_bombs_and_deep_keys_are_refused_without_exhausting_memory() {
    let tmp = tmpdir();
    let cfg = write_config(tmp.path());
    // One 20 KB anchor repeated by 300,000 aliases: 2 MB of YAML that expands to ~6 GB.
    let mut bomb = String::from("x: &a [");
    bomb.push_str(&vec!["1234567890"; 2000].join(", "));
    bomb.push_str("]\ny: [");
    bomb.push_str(&vec!["*a"; 300_000].join(", "));
    bomb.push_str("]\n");
    let bomb_file = tmp.path().join("bomb.yaml");
    std::fs::write(&bomb_file, bomb).unwrap();
    // With a --set the document is first read whole as a YAML value, aliases expanded: the path
    // that grew to 5.5 GB. Under a 2 GiB data limit, so a regression fails here, not the host.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -d 2097152; exec {} train --config {} --out {} --set train.seed=2",
            env!("CARGO_BIN_EXE_streetclip"),
            bomb_file.display(),
            tmp.path().join("r").display()
        ))
        .output()
        .unwrap();
    assert_fails_cleanly(&out, &["bomb.yaml", "anchors and aliases"]);
    let deep = format!("train{}=1", ".x".repeat(20_000));
    let out = train(&cfg, &tmp.path().join("r"), &["--set", &deep]);
    assert_fails_cleanly(&out, &["--set train.x.x...", "dotted parts"]);
}

#[test]
fn an_interrupted_final_export_is_redone_from_the_final_checkpoint() {
    let tmp = tmpdir();
    let cfg = write_config(tmp.path());
    let run = tmp.path().join("run");
    let first = train(&cfg, &run, &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    let export = run.join("export");
    let weights = std::fs::read(export.join("model.safetensors")).unwrap();
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    // A temporary name of a process that is gone (a kill -9 mid-write leaves such a file).
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let leftover = export.join(format!(".model.safetensors.tmp{dead}"));
    type Damage = fn(&Path, &Path);
    let damages: [(&str, Damage); 3] = [
        ("killed while writing the weights", |run, export| {
            std::fs::remove_file(run.join("summary.json")).unwrap();
            std::fs::remove_file(export.join("model.safetensors")).unwrap();
        }),
        ("weights cut short, summary written", |_, export| {
            let file = export.join("model.safetensors");
            let bytes = std::fs::read(&file).unwrap();
            std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
        }),
        ("no export folder at all", |_, export| {
            std::fs::remove_dir_all(export).unwrap();
        }),
    ];
    for (what, damage) in damages {
        damage(&run, &export);
        if export.exists() {
            std::fs::write(&leftover, &weights[..1000]).unwrap();
        }
        let again = train(&cfg, &run, &[]);
        let err = stderr(&again);
        assert!(again.status.success(), "{what}: {err}");
        assert!(err.contains("exporting it again"), "{what}: {err}");
        assert_eq!(
            std::fs::read(export.join("model.safetensors")).unwrap(),
            weights,
            "{what}: the export is the final checkpoint's, bit for bit"
        );
        assert!(
            !leftover.exists(),
            "{what}: the dead process's temporary file is removed"
        );
        let redone: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
        assert_eq!(redone["stopped_by"], summary["stopped_by"], "{what}");
        assert_eq!(redone["steps"], summary["steps"], "{what}");
        assert_eq!(redone["validation"], summary["validation"], "{what}");
    }
    // Complete again: a rerun rewrites nothing.
    let again = train(&cfg, &run, &[]);
    assert!(
        stderr(&again).contains("nothing to train"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn an_export_replaces_a_model_folder_whole_or_not_at_all() {
    let tmp = tmpdir();
    let clip = streetclip::formats::pretrained::Pretrained::load(
        &fixture("tiny-p32-224"),
        tch::Device::Cpu,
    )
    .unwrap();
    let out = tmp.path().join("model");
    clip.save(&out).unwrap();
    let before: Vec<(std::ffi::OsString, Vec<u8>)> = files(&out);
    // A failure after some files are written (a full disk, say) leaves the old folder as it was
    // and no temporary folder beside it.
    let failed = clip.save_with(&out, |_| anyhow::bail!("no space left on device"));
    assert!(failed.is_err());
    assert_eq!(files(&out), before, "the old export is untouched");
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["model"], "nothing left beside it");
    // A dead process's half-written folder beside the target is removed by the next export.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = tmp.path().join(format!(".model.tmp.{dead}"));
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("config.json"), b"{}").unwrap();
    clip.save(&out).unwrap();
    assert!(!stale.exists());
    assert_eq!(files(&out), before);
    // A folder holding anything an export does not write is not replaced: it would be lost.
    std::fs::write(out.join("notes.txt"), b"mine").unwrap();
    let refused = clip.save(&out).unwrap_err();
    assert!(format!("{refused:#}").contains("notes.txt"), "{refused:#}");
    assert_eq!(std::fs::read(out.join("notes.txt")).unwrap(), b"mine");
}

/// Every file in `dir`, by name, with its bytes.
fn files(dir: &Path) -> Vec<(std::ffi::OsString, Vec<u8>)> {
    let mut all: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name(), std::fs::read(e.path()).unwrap())
        })
        .collect();
    all.sort();
    all
}

#[test]
fn resuming_on_changed_data_needs_consent() {
    let tmp = tmpdir();
    let cfg = write_config(tmp.path());
    let run = tmp.path().join("run");
    let first = train(&cfg, &run, &["--max-steps", "2"]);
    assert!(first.status.success(), "{}", stderr(&first));
    // Half the manifest gone between two invocations.
    let manifest = tmp.path().join("scenes/manifest.csv");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let half = lines[..1 + (lines.len() - 1) / 2].join("\n") + "\n";
    std::fs::write(&manifest, half).unwrap();
    let refused = train(&cfg, &run, &[]);
    assert_fails_cleanly(&refused, &["the data differs", "--allow-config-change"]);
    assert_eq!(
        checkpoint::list(&run.join("checkpoints")).len(),
        1,
        "nothing trained"
    );
    let accepted = train(&cfg, &run, &["--allow-config-change"]);
    assert!(accepted.status.success(), "{}", stderr(&accepted));
    assert!(
        stderr(&accepted).contains("the data differs"),
        "{}",
        stderr(&accepted)
    );
    let yaml = std::fs::read_to_string(run.join("config.yaml")).unwrap();
    assert!(yaml.contains("# the data differs"), "recorded: {yaml}");
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
    let mut moments =
        streetclip::formats::tensor_io::read(&only.join("optimizer.safetensors")).unwrap();
    moments[0].1 = tch::Tensor::zeros([3], (tch::Kind::Float, tch::Device::Cpu));
    streetclip::formats::tensor_io::write(&only.join("optimizer.safetensors"), &moments).unwrap();
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
