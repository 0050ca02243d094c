//! The benchmarks' reference side: a script under `scripts/` run by the project's Python
//! (`make setup`'s `.venv`), which prints its rate as `NAME VALUE` on a line of its own.

use std::ffi::OsStr;
use std::path::Path;

/// The standard output of `scripts/SCRIPT ARGS...` run from the repository root with `env`
/// set, after checking that it succeeded.
pub fn run<S: AsRef<OsStr>>(root: &Path, script: &str, args: &[S], env: &[(&str, &str)]) -> String {
    let out = std::process::Command::new(root.join(".venv/bin/python"))
        .current_dir(root)
        .arg(root.join("scripts").join(script))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run make setup first");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of the `name VALUE` line of a script's output.
pub fn rate(stdout: &str, name: &str) -> f64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{name}` line in: {stdout}"))
}
