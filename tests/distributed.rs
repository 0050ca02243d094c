//! Data parallelism on c10d with Gloo on loopback: the launcher's environment, the collectives
//! across real processes, training on 2 and 3 ranks against one rank with as many
//! accumulation steps, a worker dying mid-run, and rendezvous errors.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use streetclip::dist::env::first_host;
use streetclip::dist::{all_reduce_gradients, Backend, Dist, DistEnv, Store};
use tch::{Kind, Tensor};

fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |k| {
        pairs
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    }
}

#[test]
fn torchrun_slurm_and_single_process_environments() {
    let e = DistEnv::from_vars(vars(&[
        ("RANK", "5"),
        ("LOCAL_RANK", "1"),
        ("WORLD_SIZE", "8"),
        ("LOCAL_WORLD_SIZE", "4"),
        ("MASTER_ADDR", "node0"),
        ("MASTER_PORT", "1234"),
        ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ("TORCHELASTIC_RESTART_COUNT", "2"),
    ]))
    .unwrap();
    assert_eq!(
        (
            e.rank,
            e.local_rank,
            e.world_size,
            e.local_world_size,
            e.master_addr.as_str(),
            e.master_port,
            e.use_agent_store,
            e.restart_count,
            e.launcher
        ),
        (5, 1, 8, 4, "node0", 1234, true, 2, "torchrun")
    );
    let s = DistEnv::from_vars(vars(&[
        ("SLURM_PROCID", "3"),
        ("SLURM_NTASKS", "4"),
        ("SLURM_LOCALID", "1"),
        ("SLURM_NTASKS_PER_NODE", "2"),
        ("SLURM_JOB_NODELIST", "gpu[07-09,12]"),
    ]))
    .unwrap();
    assert_eq!(
        (
            s.rank,
            s.local_rank,
            s.world_size,
            s.local_world_size,
            s.master_addr.as_str(),
            s.master_port,
            s.use_agent_store,
            s.launcher
        ),
        (3, 1, 4, 2, "gpu07", 29500, false, "slurm")
    );
    // torchrun's variables win over SLURM's (torchrun inside an allocation).
    assert_eq!(
        DistEnv::from_vars(vars(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("SLURM_PROCID", "1"),
            ("SLURM_NTASKS", "4")
        ]))
        .unwrap()
        .launcher,
        "torchrun"
    );
    assert_eq!(DistEnv::from_vars(vars(&[])).unwrap(), DistEnv::single());
    assert!(
        DistEnv::from_vars(vars(&[("RANK", "2"), ("WORLD_SIZE", "2")]))
            .unwrap_err()
            .to_string()
            .contains("rank 2 is not within a world of 2")
    );
    assert!(
        DistEnv::from_vars(vars(&[("RANK", "x"), ("WORLD_SIZE", "2")]))
            .unwrap_err()
            .to_string()
            .contains("RANK=`x`")
    );
    assert!(DistEnv::from_vars(vars(&[
        ("RANK", "0"),
        ("WORLD_SIZE", "2"),
        ("MASTER_PORT", "99999")
    ]))
    .unwrap_err()
    .to_string()
    .contains("MASTER_PORT"));
    assert!(
        DistEnv::from_vars(vars(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2")]))
            .unwrap_err()
            .to_string()
            .contains("SLURM_JOB_NODELIST")
    );
    assert_eq!(first_host("node1,node2").unwrap(), "node1");
    assert_eq!(first_host("a100-[3-4]").unwrap(), "a100-3");
    assert_eq!(first_host("solo").unwrap(), "solo");
    assert!(first_host("gpu[1-2").is_err());
}

#[test]
fn one_process_needs_no_group() {
    let d = Dist::init(
        &DistEnv::single(),
        Backend::Gloo,
        tch::Device::Cpu,
        Duration::from_secs(1),
    )
    .unwrap();
    let t = Tensor::from_slice(&[1.0f32, 2.0]);
    d.all_reduce_sum(&t).unwrap();
    assert_eq!(Vec::<f32>::try_from(&t).unwrap(), [1.0, 2.0]);
    assert_eq!(d.all_gather(&t).unwrap().size(), [2]);
    assert!(d.any(true).unwrap() && !d.any(false).unwrap());
}

/// This test binary again, running only `worker` as rank `rank` of `world`.
fn spawn_worker(rank: usize, world: usize, port: u16, mode: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "worker",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("WORKER_MODE", mode)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs as one rank of `collectives_between_processes`: each collective checked against what
/// every rank contributed.
#[test]
#[ignore = "a worker process of collectives_between_processes"]
fn worker() {
    let env = DistEnv::from_env().unwrap();
    let timeout = Duration::from_secs(20);
    let dist = Dist::init(&env, Backend::Gloo, tch::Device::Cpu, timeout).unwrap();
    let (r, w) = (dist.rank as f64, dist.world_size as f64);
    if std::env::var("WORKER_MODE").as_deref() == Ok("die") && dist.rank == 1 {
        std::process::exit(3);
    }
    // all_reduce: Σ (rank + 1) = w (w + 1) / 2 in every element.
    let t = Tensor::full([3], r + 1.0, (Kind::Float, tch::Device::Cpu));
    dist.all_reduce_sum(&t).unwrap();
    assert_eq!(
        Vec::<f32>::try_from(&t).unwrap(),
        vec![(w * (w + 1.0) / 2.0) as f32; 3]
    );
    // all_gather: rank order.
    let mine = Tensor::from_slice(&[r as f32, 10.0 * r as f32]).view([1, 2]);
    let all = dist.all_gather(&mine).unwrap();
    let expected: Vec<f32> = (0..dist.world_size)
        .flat_map(|i| [i as f32, 10.0 * i as f32])
        .collect();
    assert_eq!(Vec::<f32>::try_from(all.view([-1])).unwrap(), expected);
    // broadcast: rank 0's value everywhere; buckets of mixed dtypes.
    let b = Tensor::full([4], r + 7.0, (Kind::Double, tch::Device::Cpu));
    let c = Tensor::full([2, 2], (r + 1.0) * 3.0, (Kind::Float, tch::Device::Cpu));
    dist.broadcast_tensors(&[b.shallow_clone(), c.shallow_clone()])
        .unwrap();
    assert_eq!(Vec::<f64>::try_from(&b).unwrap(), vec![7.0; 4]);
    assert_eq!(Vec::<f32>::try_from(c.view([-1])).unwrap(), vec![3.0; 4]);
    // Gradients: summed for full_batch shares, averaged for per-rank losses, and replicated
    // ones (logit_scale) averaged either way.
    let p = Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let s = Tensor::zeros([], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    ((&p * (r + 1.0)).sum(Kind::Float) + &s * 5.0).backward();
    let params = vec![
        ("p".to_string(), p.shallow_clone()),
        ("logit_scale".to_string(), s.shallow_clone()),
    ];
    all_reduce_gradients(&dist, &params, false, &["logit_scale"]).unwrap();
    assert_eq!(
        Vec::<f32>::try_from(p.grad()).unwrap(),
        vec![(w * (w + 1.0) / 2.0) as f32; 2]
    );
    assert!((s.grad().double_value(&[]) - 5.0).abs() < 1e-6);
    assert!(dist.any(dist.rank == 0).unwrap());
    let means = dist
        .mean_over_ranks(&Tensor::from_slice(&[r, 1.0]))
        .unwrap();
    assert_eq!(Vec::<f64>::try_from(means).unwrap(), [(w - 1.0) / 2.0, 1.0]);
    dist.barrier().unwrap();
    println!("rank {} ok", dist.rank);
}

fn wait_all(children: Vec<std::process::Child>) -> Vec<Output> {
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

#[test]
fn collectives_between_processes() {
    for world in [2, 3] {
        let port = streetclip::dist::launch::free_port().unwrap();
        let outputs = wait_all(
            (0..world)
                .map(|r| spawn_worker(r, world, port, "check"))
                .collect(),
        );
        for (rank, o) in outputs.iter().enumerate() {
            assert!(
                o.status.success(),
                "world {world} rank {rank}:\n{}\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("rank {rank} ok")));
        }
    }
}

#[test]
fn a_dead_peer_is_an_error_within_the_timeout_not_a_hang() {
    let port = streetclip::dist::launch::free_port().unwrap();
    let start = Instant::now();
    let outputs = wait_all((0..2).map(|r| spawn_worker(r, 2, port, "die")).collect());
    assert_eq!(outputs[1].status.code(), Some(3));
    assert!(!outputs[0].status.success());
    let stderr = String::from_utf8_lossy(&outputs[0].stderr);
    assert!(
        stderr.contains("all_reduce failed (a peer process died or timed out?)"),
        "{stderr}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn rendezvous_errors_are_clear() {
    // The port is taken: the server cannot bind it.
    let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = Store::connect("127.0.0.1", port, 2, true, Duration::from_secs(2), "/t/")
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains(&format!(
            "cannot host the rendezvous store on 127.0.0.1:{port}"
        )) && err.contains("MASTER_PORT"),
        "{err}"
    );
    // Nobody listens: the client gives up after its timeout.
    drop(taken);
    let start = Instant::now();
    let err = Store::connect("127.0.0.1", port, 2, false, Duration::from_secs(2), "/t/")
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("cannot reach the rendezvous store") && err.contains("MASTER_ADDR"),
        "{err}"
    );
    assert!(start.elapsed() < Duration::from_secs(30));
    // A store round trip, keys namespaced by the prefix.
    let port = streetclip::dist::launch::free_port().unwrap();
    let server = Store::connect("127.0.0.1", port, 2, true, Duration::from_secs(5), "/a/").unwrap();
    let client =
        Store::connect("127.0.0.1", port, 2, false, Duration::from_secs(5), "/a/").unwrap();
    server.set("k", "v1").unwrap();
    assert_eq!(client.get("k").unwrap(), "v1");
    let other = Store::connect("127.0.0.1", port, 2, false, Duration::from_secs(1), "/b/").unwrap();
    assert!(
        other.get("k").is_err(),
        "another prefix does not see the key"
    );
    // The NCCL process group is compiled in exactly when the wheel's CUDA/NCCL headers are
    // there (make setup installs them).
    let nvidia = root().join(".venv/libtorch/../nvidia");
    let headers = [
        "cu13/include/cuda_runtime_api.h",
        "cu13/include/crt/host_defines.h",
        "nccl/include/nccl.h",
    ]
    .iter()
    .all(|h| nvidia.join(h).exists());
    assert_eq!(streetclip::dist::has_nccl(), headers);
    // No NCCL on a CPU device.
    let env = DistEnv {
        world_size: 2,
        ..DistEnv::single()
    };
    assert!(Dist::init(
        &env,
        Backend::Nccl,
        tch::Device::Cpu,
        Duration::from_secs(1)
    )
    .err()
    .unwrap()
    .to_string()
    .contains("needs a CUDA device"));
}

/// A tiny model on synthetic scenes; `accum` accumulation steps of micro-batches of 4.
fn config(dir: &Path, data: &Path, accum: usize, mode: &str) -> PathBuf {
    let text = format!(
        r#"{TINY_MODEL_YAML}data:
  manifest: {data}/manifest.csv
  synth: {{countries: 4, cities_per_country: 2, per_city: 8, seed: 3}}
  workers: 1
captions: {{drop_city: 0.5, drop_region: 0.5}}
train:
  micro_batch_size: 4
  grad_accum_steps: {accum}
  accumulation: {mode}
  epochs: 2
  seed: 1
  checkpoint_every: 2
  val_fraction: 0.0
optim: {{lr: 1.0e-3, weight_decay: 0.1, schedule: cosine, warmup_steps: 1}}
dist: {{timeout_s: 30}}
"#,
        data = data.display()
    );
    let path = dir.join(format!("config-{accum}-{mode}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn train(cfg: &Path, out: &Path, extra: &[&str]) -> Output {
    let o = run_command("train", cfg, out, extra);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

#[test]
fn ranks_train_like_one_process_with_their_accumulation() {
    let tmp = tmpdir();
    let data = tmp.path().join("scenes");
    // One process with 2 x 3 = 6 accumulation steps is the reference for 2 ranks x 3 and 3 x 2.
    let one = tmp.path().join("one");
    train(
        &config(tmp.path(), &data, 6, "full_batch"),
        &one,
        &["--max-steps", "3", "--set", EVERY_STEP],
    );
    for (ranks, accum) in [(2, 3), (3, 2)] {
        let run = tmp.path().join(format!("ranks-{ranks}"));
        let out = train(
            &config(tmp.path(), &data, accum, "full_batch"),
            &run,
            &[
                "--max-steps",
                "3",
                "--nproc-per-node",
                &ranks.to_string(),
                "--set",
                EVERY_STEP,
            ],
        );
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(summary["steps"], 3, "only rank 0 prints its summary");
        assert_eq!(summary["samples_seen"], 3 * 24);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!(
                "data parallel: {ranks} ranks (streetclip --nproc-per-node), global batch 24 = {ranks} x {accum} x 4"
            )),
            "{stderr}"
        );
        assert_same_first_step(&step_one(&one), &step_one(&run), LR);
    }
    // One micro-batch per rank (full_batch's one-pass path): 2 ranks x 1 = one process x 2.
    let reference = tmp.path().join("one-of-two");
    let steps = ["--max-steps", "3", "--set", EVERY_STEP];
    train(
        &config(tmp.path(), &data, 2, "full_batch"),
        &reference,
        &steps,
    );
    let run = tmp.path().join("two-by-one");
    let launched = [&steps[..], &["--nproc-per-node", "2"]].concat();
    train(&config(tmp.path(), &data, 1, "full_batch"), &run, &launched);
    assert_same_first_step(&step_one(&reference), &step_one(&run), LR);
}

#[test]
fn per_micro_batch_ranks_average_their_gradients() {
    // StreetCLIP's local negatives: each rank's loss over its own micro-batches; the average over
    // ranks equals one process averaging all their micro-batches.
    let tmp = tmpdir();
    let data = tmp.path().join("scenes");
    let one = tmp.path().join("one");
    train(
        &config(tmp.path(), &data, 4, "per_micro_batch"),
        &one,
        &["--max-steps", "2", "--set", EVERY_STEP],
    );
    let two = tmp.path().join("two");
    train(
        &config(tmp.path(), &data, 2, "per_micro_batch"),
        &two,
        &[
            "--max-steps",
            "2",
            "--nproc-per-node",
            "2",
            "--set",
            EVERY_STEP,
        ],
    );
    assert_same_first_step(&step_one(&one), &step_one(&two), LR);
}

/// `config`'s learning rate (the most any step uses).
const LR: f64 = 1.0e-3;
/// A checkpoint after every step, so the first step can be compared (see
/// `assert_same_first_step`).
const EVERY_STEP: &str = "train.checkpoint_every=1";

fn step_one(run: &Path) -> PathBuf {
    run.join("checkpoints/step-00000001")
}

/// The pids of `pid`'s child processes.
fn children(pid: u32) -> Vec<i32> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    text.split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

fn step_of(checkpoint: &Path) -> u64 {
    checkpoint
        .file_name()
        .unwrap()
        .to_string_lossy()
        .chars()
        .filter(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

/// A long two-worker run under the built-in launcher, once it has written a checkpoint: the
/// launcher and its workers' pids.
fn two_workers_past_a_checkpoint(
    cfg: &Path,
    run: &Path,
    extra: &[&str],
) -> (std::process::Child, Vec<i32>) {
    let launcher = Command::new(env!("CARGO_BIN_EXE_streetclip"))
        .args(["train", "--config"])
        .arg(cfg)
        .arg("--out")
        .arg(run)
        .args(["--nproc-per-node", "2", "--set", "train.epochs=500"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while streetclip::train::checkpoint::list(&run.join("checkpoints")).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let workers = children(launcher.id());
    assert_eq!(workers.len(), 2, "{workers:?}");
    (launcher, workers)
}

#[test]
fn a_killed_worker_stops_the_run_with_a_clear_error_and_it_resumes() {
    let tmp = tmpdir();
    let data = tmp.path().join("scenes");
    let cfg = config(tmp.path(), &data, 2, "full_batch");
    let run = tmp.path().join("run");
    // Once a checkpoint exists, kill rank 1 outright.
    let (launcher, workers) = two_workers_past_a_checkpoint(&cfg, &run, &[]);
    let killed_at = Instant::now();
    unsafe { libc::kill(workers[1], libc::SIGKILL) };
    let o = launcher.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("launcher: worker 1 failed (signal 9)")
            && stderr.contains("rerun the same command to resume"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        killed_at.elapsed() < Duration::from_secs(30),
        "the others stopped after {:?}",
        killed_at.elapsed()
    );
    // Rerunning resumes from the last checkpoint.
    let last = step_of(
        &streetclip::train::checkpoint::list(&run.join("checkpoints"))
            .pop()
            .unwrap(),
    );
    let target = (last + 2).to_string();
    let o = train(
        &cfg,
        &run,
        &[
            "--nproc-per-node",
            "2",
            "--set",
            "train.epochs=500",
            "--max-steps",
            &target,
        ],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(&"resuming from".to_string()) && stderr.contains(&format!("(step {last})")),
        "{stderr}"
    );
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["steps"].as_u64(), Some(last + 2));
}

#[test]
fn torchrun_and_slurm_environments_train_like_the_builtin_launcher() {
    let tmp = tmpdir();
    let data = tmp.path().join("scenes");
    let cfg = config(tmp.path(), &data, 2, "full_batch");
    let ours = tmp.path().join("ours");
    train(
        &cfg,
        &ours,
        &[
            "--max-steps",
            "3",
            "--nproc-per-node",
            "2",
            "--set",
            EVERY_STEP,
        ],
    );
    // SLURM tasks here run a thread per core, launcher workers one (OMP_NUM_THREADS=1, as
    // torchrun): other summation orders, the same numbers.
    let same = |run: &Path| assert_same_first_step(&step_one(&ours), &step_one(run), LR);
    // PyTorch's own torchrun: its agent hosts the store (TORCHELASTIC_USE_AGENT_STORE).
    let torchrun = root().join(".venv/bin/torchrun");
    assert!(
        torchrun.is_file(),
        "{} is missing: run `make setup`",
        torchrun.display()
    );
    let run = tmp.path().join("torchrun");
    let o = Command::new(&torchrun)
        .args(["--no-python", "--nproc-per-node", "2", "--master-port"])
        .arg(streetclip::dist::launch::free_port().unwrap().to_string())
        .arg(env!("CARGO_BIN_EXE_streetclip"))
        .args(["train", "--max-steps", "3", "--set", EVERY_STEP, "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    same(&run);
    // SLURM's variables (two tasks of one node), as srun sets them.
    let run = tmp.path().join("slurm");
    let port = streetclip::dist::launch::free_port().unwrap().to_string();
    let tasks: Vec<_> = (0..2)
        .map(|r| {
            Command::new(env!("CARGO_BIN_EXE_streetclip"))
                .args(["train", "--max-steps", "3", "--set", EVERY_STEP, "--config"])
                .arg(&cfg)
                .arg("--out")
                .arg(&run)
                .envs([
                    ("SLURM_PROCID", r.to_string()),
                    ("SLURM_LOCALID", r.to_string()),
                    ("SLURM_NTASKS", "2".into()),
                    ("SLURM_JOB_NODELIST", "localhost".into()),
                    ("MASTER_PORT", port.clone()),
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for t in tasks {
        let o = t.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    same(&run);
}

#[test]
fn a_stopped_worker_is_named_within_the_heartbeat_timeout() {
    let tmp = tmpdir();
    let data = tmp.path().join("scenes");
    let cfg = config(tmp.path(), &data, 2, "full_batch");
    let run = tmp.path().join("run");
    let (launcher, workers) =
        two_workers_past_a_checkpoint(&cfg, &run, &["--set", "dist.heartbeat_timeout_s=5"]);
    let stopped_at = Instant::now();
    // SAFETY: signalling our own grandchild.
    unsafe { libc::kill(workers[1], libc::SIGSTOP) };
    let o = launcher.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("rank 1 has sent no heartbeat for 5 s"),
        "{stderr}"
    );
    // 5 s of silence, then the launcher's grace period for the stopped worker (SIGKILL).
    assert!(
        stopped_at.elapsed() < Duration::from_secs(45),
        "took {:?}",
        stopped_at.elapsed()
    );
}

#[test]
fn an_interrupted_launcher_exits_with_the_signal_code_after_its_workers_saved() {
    let tmp = tmpdir();
    let data = tmp.path().join("scenes");
    let cfg = config(tmp.path(), &data, 2, "full_batch");
    let run = tmp.path().join("run");
    let (launcher, _) = two_workers_past_a_checkpoint(&cfg, &run, &[]);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(launcher.id() as i32, libc::SIGINT) };
    let o = launcher.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("stopped by signal 2 (SIGINT)"), "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["stopped_by"]["reason"], "signal");
}

/// Activation checkpointing leaves the training unchanged: 20 steps with and without it end
/// with the same weights, bit for bit, in one process (both accumulation modes, several
/// micro-batches a step) and with 2 Gloo ranks.
#[test]
fn activation_checkpointing_trains_the_same_weights() {
    let tmp = tmpdir();
    let data = tmp.path().join("scenes");
    let weights = |run: &Path| {
        let last = run.join("checkpoints/step-00000020/model.safetensors");
        streetclip::formats::tensor_io::read(&last).unwrap()
    };
    for (mode, ranks) in [("full_batch", 1), ("per_micro_batch", 1), ("full_batch", 2)] {
        let cfg = config(tmp.path(), &data, 2, mode);
        let runs: Vec<PathBuf> = ["false", "true"]
            .iter()
            .map(|on| {
                let run = tmp.path().join(format!("{mode}-{ranks}-{on}"));
                let checkpointing = format!("train.activation_checkpointing={on}");
                let ranks = ranks.to_string();
                let mut args = vec!["--max-steps", "20", "--set", "train.epochs=12"];
                args.extend(["--set", &checkpointing]);
                if ranks != "1" {
                    args.extend(["--nproc-per-node", &ranks]);
                }
                let out = train(&cfg, &run, &args);
                let stderr = String::from_utf8_lossy(&out.stderr);
                let said = stderr.contains("activation checkpointing: both towers");
                assert_eq!(said, *on == "true", "{stderr}");
                let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                assert_eq!(summary["steps"], 20);
                run
            })
            .collect();
        let (plain, checkpointed) = (weights(&runs[0]), weights(&runs[1]));
        assert_eq!(plain.len(), checkpointed.len());
        for ((name, w), (other, c)) in plain.iter().zip(&checkpointed) {
            assert_eq!(name, other);
            assert!(w.equal(c), "{mode}, {ranks} ranks: {name} differs");
        }
    }
}
