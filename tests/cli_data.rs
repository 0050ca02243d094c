//! `captions` and `synth-data` from the command line.

mod common;
use common::*;
use std::process::Command;

fn streetclip(args: &[&dyn AsRef<std::ffi::OsStr>]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_streetclip"))
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .unwrap()
}

#[test]
fn captions_on_im2gps3k_metadata() {
    let out = streetclip(&[
        &"captions",
        &"--manifest",
        &im2gps3k_sample().join("meta.csv"),
        &"--limit",
        &"3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3);
    for l in &lines {
        let (image, caption) = l.split_once('\t').unwrap();
        assert!(
            image.ends_with(".jpg") && caption.starts_with("A Street View photo"),
            "{l}"
        );
    }
    assert!(String::from_utf8_lossy(&out.stderr).contains("300 rows: 300 kept, 0 skipped"));
    let json = streetclip(&[
        &"captions",
        &"--manifest",
        &im2gps3k_sample().join("meta.csv"),
        &"--limit",
        &"2",
        &"--json",
    ]);
    let rows: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert!(rows[0]["lat"].is_number() && rows[0]["country"].is_string());
}

#[test]
fn captions_with_a_config_and_its_errors() {
    let tmp = tmpdir();
    std::fs::write(tmp.path().join("a.jpg"), b"x").unwrap();
    std::fs::write(
        tmp.path().join("m.csv"),
        "image,city,country\na.jpg,Lyon,FR\n",
    )
    .unwrap();
    let cfg = tmp.path().join("c.yaml");
    std::fs::write(&cfg, format!("data:\n  manifest: {}\ncaptions:\n  templates: [\"A photo from {{city}}, {{country}}.\"]\n", tmp.path().join("m.csv").display())).unwrap();
    let out = streetclip(&[&"captions", &"--config", &cfg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("\tA photo from Lyon, France.\n"));
    std::fs::write(&cfg, "data:\n  manifest: m.csv\n  shufle: true\n").unwrap();
    let out = streetclip(&[&"captions", &"--config", &cfg]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("c.yaml") && err.contains("unknown field `shufle`") && err.contains("line 3"),
        "{err}"
    );
}

#[test]
fn synth_data_is_deterministic() {
    let tmp = tmpdir();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for dir in [&a, &b] {
        let out = streetclip(&[
            &"synth-data",
            &"--out",
            dir,
            &"--countries",
            &"3",
            &"--per-city",
            &"2",
            &"--seed",
            &"4",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let manifest = std::fs::read_to_string(a.join("manifest.csv")).unwrap();
    assert_eq!(
        manifest,
        std::fs::read_to_string(b.join("manifest.csv")).unwrap()
    );
    assert_eq!(manifest.lines().count(), 1 + 3 * 3 * 2);
    let first = manifest.lines().nth(1).unwrap().split(',').next().unwrap();
    assert_eq!(
        std::fs::read(a.join(first)).unwrap(),
        std::fs::read(b.join(first)).unwrap()
    );
}
