//! SIGINT/SIGTERM for long runs: the first asks the run to stop cleanly (training saves a
//! checkpoint at its next step), a second one stops the process at once. Either way the process
//! exits with the signal's conventional code (128 + signal, e.g. 130 for Ctrl-C), so
//! `streetclip train ... && streetclip eval ...` does not go on after an interrupted run.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Once;

static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe calls here: an atomic swap and _exit.
    if RECEIVED.swap(sig, Ordering::SeqCst) != 0 {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + sig) }
    }
}

/// Installs the handlers (once per process).
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: installs a handler that only touches an atomic and calls _exit.
            unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
        }
    });
}

/// The signal received since `install`, if any.
pub fn received() -> Option<i32> {
    Some(RECEIVED.load(Ordering::SeqCst)).filter(|&s| s != 0)
}

/// A run that stopped because of a signal, after saving its state: `main` exits with
/// 128 + the signal number.
#[derive(Debug, thiserror::Error)]
#[error("stopped by signal {signal} ({}); the last checkpoint is saved: rerun the same command to resume", name(*.signal))]
pub struct Interrupted {
    pub signal: i32,
}

impl Interrupted {
    pub fn exit_code(&self) -> i32 {
        128 + self.signal
    }
}

fn name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}
