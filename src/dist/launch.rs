//! `streetclip train --nproc-per-node N`: a single-node launcher in the manner of torchrun. It
//! starts N copies of this program with torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE,
//! LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), forwards SIGINT/SIGTERM to them (and exits with
//! the signal's code once they saved their state), and when one fails stops the others and says
//! which one failed. Workers die with the launcher, however it ends.

use anyhow::{bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// How long workers get to stop after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(20);

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on a child's pid; a process that already exited makes it fail harmlessly.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// A free TCP port on the loopback interface (for MASTER_PORT when none is given).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .context("cannot find a free port for the rendezvous")?;
    Ok(listener.local_addr()?.port())
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "unknown status".into(),
    }
}

/// Runs `args` (this program's arguments, without the launcher's own) as `nproc` workers and
/// waits for all of them. `port`: MASTER_PORT, or a free one.
pub fn run(nproc: usize, args: &[std::ffi::OsString], port: Option<u16>) -> Result<()> {
    if nproc == 0 {
        bail!("--nproc-per-node must be at least 1");
    }
    let exe =
        std::env::current_exe().context("cannot find this program's path to start workers")?;
    let port = match port {
        Some(p) => p,
        None => free_port()?,
    };
    crate::interrupt::install();
    // As torchrun: one intra-op thread per worker unless OMP_NUM_THREADS says otherwise, so
    // N workers do not each start a thread per core.
    let omp_threads = std::env::var("OMP_NUM_THREADS")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| if nproc > 1 { "1".into() } else { String::new() });
    let mut workers = Vec::new();
    for rank in 0..nproc {
        let mut command = worker_command(&exe, args, (rank, nproc, port));
        if !omp_threads.is_empty() {
            command.env("OMP_NUM_THREADS", &omp_threads);
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start worker {rank}"))?;
        workers.push(child);
    }
    eprintln!("launcher: {nproc} workers on 127.0.0.1:{port}");
    let (status, failure) = supervise(&mut workers)?;
    if let Some(f) = failure {
        bail!("{f}; the other workers were stopped. Its error is printed above; rerun the same command to resume from the last checkpoint");
    }
    if let Some(signal) = crate::interrupt::received() {
        // The workers saved their state; exit as the signal would have made us.
        return Err(crate::interrupt::Interrupted { signal }.into());
    }
    if let Some((rank, s)) = status.iter().enumerate().find(|(_, s)| !s.success()) {
        bail!("worker {rank} stopped ({})", describe(*s));
    }
    Ok(())
}

/// Worker `rank` of `nproc`: this program with `args` and torchrun's environment, dying with
/// the launcher.
fn worker_command(
    exe: &std::path::Path,
    args: &[std::ffi::OsString],
    (rank, nproc, port): (usize, usize, u16),
) -> Command {
    let mut command = Command::new(exe);
    // Workers die with the launcher, even when it is killed with SIGKILL: orphans would go on
    // training and race a rerun for the run directory.
    let launcher = std::process::id();
    // SAFETY: prctl and getppid are async-signal-safe, as pre_exec requires.
    unsafe {
        command.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            if libc::getppid() as u32 != launcher {
                libc::raise(libc::SIGTERM); // the launcher died before prctl took effect
            }
            Ok(())
        });
    }
    command
        .args(args)
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("WORLD_SIZE", nproc.to_string())
        .env("LOCAL_WORLD_SIZE", nproc.to_string())
        .env("GROUP_RANK", "0")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("STREETCLIP_LAUNCHER", "1")
        .env_remove("TORCHELASTIC_USE_AGENT_STORE");
    command
}

/// Waits for every worker; a signal to the launcher is forwarded to them (they save and stop),
/// and the first failure stops the others (SIGTERM, then SIGKILL after `GRACE`). Returns each
/// worker's status and the first failure.
fn supervise(workers: &mut [Child]) -> Result<(Vec<ExitStatus>, Option<String>)> {
    let interrupted = || crate::interrupt::received().is_some();
    let mut status: Vec<Option<ExitStatus>> = vec![None; workers.len()];
    let mut failure: Option<String> = None;
    let mut stopping_since: Option<Instant> = None;
    let mut forwarded = false;
    loop {
        for (rank, child) in workers.iter_mut().enumerate() {
            if status[rank].is_none() {
                if let Some(s) = child.try_wait()? {
                    status[rank] = Some(s);
                    if !s.success() && failure.is_none() && !interrupted() {
                        failure = Some(format!("worker {rank} failed ({})", describe(s)));
                    }
                }
            }
        }
        if status.iter().all(Option::is_some) {
            return Ok((status.into_iter().flatten().collect(), failure));
        }
        let running = |rank: usize| status[rank].is_none();
        if interrupted() && !forwarded {
            // Workers save a checkpoint and stop at their next step.
            workers.iter().for_each(|c| signal(c, libc::SIGTERM));
            forwarded = true;
            stopping_since = Some(Instant::now());
        }
        if let (Some(f), None) = (&failure, stopping_since) {
            eprintln!("launcher: {f}; stopping the other workers");
            for (_, c) in workers.iter().enumerate().filter(|(r, _)| running(*r)) {
                signal(c, libc::SIGTERM);
            }
            stopping_since = Some(Instant::now());
        }
        if stopping_since.is_some_and(|t| t.elapsed() > GRACE) {
            for (_, c) in workers.iter().enumerate().filter(|(r, _)| running(*r)) {
                signal(c, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
