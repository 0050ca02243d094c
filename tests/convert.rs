//! Pickled Hugging Face checkpoints read without Python: `pytorch_model.bin`, single and sharded,
//! gives exactly the tensors of the safetensors it was written from, and `streetclip convert`
//! writes them as a complete safetensors directory; a pickle that names `os.system` is refused
//! and runs nothing (scripts/make_pickles.py writes all three with torch and transformers).

mod common;
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use streetclip::formats::weights;
use tch::Tensor;

/// `dir/bin`, `dir/sharded` and `dir/hostile.bin`; running the hostile pickle would create
/// `dir/executed`.
fn pickles() -> (tempfile::TempDir, PathBuf) {
    let tmp = tmpdir();
    let marker = tmp.path().join("executed");
    run_python([
        root().join("scripts/make_pickles.py").into_os_string(),
        fixture("tiny-p14-336").into_os_string(),
        tmp.path().as_os_str().to_owned(),
        marker.clone().into_os_string(),
    ]);
    (tmp, marker)
}

/// A checkpoint's tensors by name (the `position_ids` buffers old checkpoints carry left out).
fn tensors(dir: &Path) -> BTreeMap<String, Tensor> {
    weights::weight_files(dir)
        .unwrap()
        .iter()
        .flat_map(|f| weights::read_file(f).unwrap())
        .filter(|(n, _)| !n.ends_with("position_ids"))
        .collect()
}

fn assert_same_tensors(
    got: &BTreeMap<String, Tensor>,
    want: &BTreeMap<String, Tensor>,
    what: &str,
) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}"
    );
    for (name, t) in want {
        assert_eq!(got[name].size(), t.size(), "{what}: {name}");
        assert_eq!(got[name].kind(), t.kind(), "{what}: {name}");
        assert_eq!(max_diff(&got[name], t), 0.0, "{what}: {name}");
    }
}

#[test]
fn pytorch_bin_single_and_sharded_read_as_the_safetensors_and_convert() {
    let (tmp, _) = pickles();
    let reference = tensors(&fixture("tiny-p14-336"));
    assert!(reference.len() > 50);
    assert_eq!(
        weights::weight_files(&tmp.path().join("bin")).unwrap(),
        vec![tmp.path().join("bin/pytorch_model.bin")]
    );
    assert!(
        weights::weight_files(&tmp.path().join("sharded"))
            .unwrap()
            .len()
            > 1
    );
    for source in ["bin", "sharded"] {
        let dir = tmp.path().join(source);
        assert_same_tensors(&tensors(&dir), &reference, source);
        let out = tmp.path().join(format!("{source}-converted"));
        let o = Command::new(env!("CARGO_BIN_EXE_streetclip"))
            .args(["convert", "--from"])
            .arg(&dir)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{stderr}");
        assert!(stderr.contains("tensors)"), "{stderr}");
        assert_hf_directory(&out);
        assert_same_tensors(&tensors(&out), &reference, &format!("{source} converted"));
    }
}

#[test]
fn a_pickle_that_names_os_system_is_refused_and_runs_nothing() {
    let (tmp, marker) = pickles();
    let hostile = tmp.path().join("hostile.bin");
    let Err(err) = streetclip::formats::pickle::read(&hostile) else {
        panic!("a pickle with os.system must be refused");
    };
    let message = format!("{err:#}");
    assert!(
        message.contains("hostile.bin: refused") && message.contains("global `posix.system`"),
        "{message}"
    );
    eprintln!("refused: {message}");
    assert!(!marker.exists(), "the pickle's payload ran");
    // The same file as a model's weights: one clean error, not a crash.
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::copy(
        fixture("tiny-p14-336").join("config.json"),
        model.join("config.json"),
    )
    .unwrap();
    std::fs::copy(&hostile, model.join("pytorch_model.bin")).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_streetclip"))
        .args(["convert", "--from"])
        .arg(&model)
        .arg("--out")
        .arg(tmp.path().join("never"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("pytorch_model.bin") && !stderr.contains("panicked"),
        "{stderr}"
    );
    assert!(!marker.exists() && !tmp.path().join("never").exists());
}

/// `dir/NAME.EXT`: `pickle` as `NAME/data.pkl` in a zip laid out as torch.save writes it, with
/// four bytes of storage `0` (`NAME/data/0`) beside it.
fn pickle_zip(dir: &Path, name: &str, ext: &str, pickle: &[u8]) -> PathBuf {
    let path = dir.join(format!("{name}.{ext}"));
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    for (member, bytes) in [("data.pkl", pickle), ("data/0", &[0u8; 4][..])] {
        zip.start_file(
            format!("{name}/{member}"),
            zip::write::FileOptions::default(),
        )
        .unwrap();
        std::io::Write::write_all(&mut zip, bytes).unwrap();
    }
    zip.finish().unwrap();
    path
}

/// Malformed pickles are one error, never a panic: a stack popped below its MARK, an unknown
/// opcode, a pickle cut short, a storage of a negative size (each in a zip laid out as
/// torch.save writes it).
#[test]
fn malformed_pickles_are_errors_not_panics() {
    let tmp = tmpdir();
    for (name, pickle) in [
        ("below-mark", &b"\x80\x02}NN(st."[..]),
        ("opcode", &b"\x80\x02\xff."[..]),
        ("short", &b"\x80\x02X\xff\x00\x00\x00ab"[..]),
        // A storage of -1 elements (its size must not overflow into an allocation).
        (
            "storage",
            &b"\x80\x02(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuJ\xff\xff\xff\xfftQ."[..],
        ),
    ] {
        let path = pickle_zip(tmp.path(), name, "bin", pickle);
        let Err(err) = streetclip::formats::pickle::read(&path) else {
            panic!("{name}: a malformed pickle was accepted");
        };
        assert!(
            format!("{err:#}").contains(&format!("{name}.bin: refused")),
            "{err:#}"
        );
    }
}

/// TorchScript's typed-list helpers, which older archives (OpenAI's were written by torch 1.7)
/// call, read as their argument; `os.system` under the same opcodes stays refused.
#[test]
fn torchscript_list_helpers_are_read_as_their_argument() {
    let tmp = tmpdir();
    let write = |name: &str, pickle: &[u8]| pickle_zip(tmp.path(), name, "pt", pickle);
    // {"sizes": build_intlist([1, 2])}
    let helper = write(
        "helper",
        b"\x80\x02}X\x05\x00\x00\x00sizesctorch.jit._pickle\nbuild_intlist\n](K\x01K\x02e\x85Rs.",
    );
    // The same with os.system in place of the helper.
    let hostile = write(
        "hostile",
        b"\x80\x02}X\x05\x00\x00\x00sizescos\nsystem\n](K\x01K\x02e\x85Rs.",
    );
    let read = streetclip::formats::pickle::read(&helper).unwrap();
    assert!(read.tensors.is_empty());
    let Err(err) = streetclip::formats::pickle::read(&hostile) else {
        panic!("os.system accepted");
    };
    assert!(format!("{err:#}").contains("global `os.system`"), "{err:#}");
}
