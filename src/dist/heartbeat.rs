//! Silent-peer detection. A collective with a stopped (SIGSTOP) or hung peer only fails after
//! `dist.timeout_s` (30 minutes by default), and then names whichever rank noticed. Every rank
//! therefore runs a thread that bumps its own counter in the rendezvous store every couple of
//! seconds and watches everyone else's; a peer whose counter stands still for
//! `dist.heartbeat_timeout_s` is named and this process stops with an error (the launcher, or
//! torchrun, then stops the rest). The thread is independent of the training loop, so a long
//! step, a checkpoint write or rank 0's validation never looks silent. It is stopped before the
//! job's last barrier, so no rank still talks to rank 0's store when rank 0 exits (libtorch would
//! print a broken-pipe warning with a stack trace).

use super::Store;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Where to reach the store and whom to watch.
pub struct Heartbeat {
    pub host: String,
    pub port: u16,
    pub prefix: String,
    pub rank: usize,
    pub world_size: usize,
    /// Silence longer than this stops the process.
    pub timeout: Duration,
}

/// A running heartbeat thread; `stop` ends it and waits for it.
pub struct Running {
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Running {
    pub fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

impl Heartbeat {
    /// Starts the beating-and-watching thread.
    pub fn start(self) -> Option<Running> {
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || self.run(stopped))
            .ok()?;
        Some(Running { stop, thread })
    }

    fn interval(&self) -> Duration {
        (self.timeout / 10).clamp(Duration::from_millis(200), Duration::from_secs(2))
    }

    fn run(self, stopped: mpsc::Receiver<()>) {
        // Its own client connection: the store's handle is not shared across threads.
        let store = match Store::connect(
            &self.host,
            self.port,
            self.world_size,
            false,
            self.timeout,
            &self.prefix,
        ) {
            Ok(s) => s,
            Err(e) => return eprintln!("rank {}: heartbeat disabled ({e:#})", self.rank),
        };
        let key = |r: usize| format!("heartbeat/{r}");
        let started = Instant::now();
        // Per peer: its last counter and when it last changed.
        let mut seen: Vec<(String, Instant)> = vec![(String::new(), started); self.world_size];
        for beat in 0u64.. {
            if store.set(&key(self.rank), &beat.to_string()).is_err() {
                return; // the store is gone: the job is ending
            }
            for (peer, last) in seen.iter_mut().enumerate().filter(|(p, _)| *p != self.rank) {
                match store.get(&key(peer)) {
                    Ok(v) if v != last.0 => *last = (v, Instant::now()),
                    Ok(_) => {}
                    Err(_) => return,
                }
                if last.1.elapsed() > self.timeout {
                    eprintln!(
                        "error: rank {peer} has sent no heartbeat for {} s (stopped, e.g. by SIGSTOP, or hung); rank {} stops the job. Rerun the same command to resume from the last checkpoint",
                        self.timeout.as_secs(),
                        self.rank
                    );
                    std::process::exit(1);
                }
            }
            if stopped.recv_timeout(self.interval()) != Err(mpsc::RecvTimeoutError::Timeout) {
                return;
            }
        }
    }
}
