//! Generated hostile inputs for the image decoder and preprocessing, the manifest reader and the
//! WebDataset shard reader, run in a child process under a memory limit (setrlimit
//! RLIMIT_DATA): each must give a clean `Err` (or a correct image), never a panic, an abort or
//! an allocation beyond the limit.

mod common;
use common::*;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use streetclip::data::dataset::{DataConfig, Dataset, OnError};
use streetclip::data::decode::decode;
use streetclip::data::PreprocessConfig;
use streetclip::geo::Gazetteer;

const CHILD: &str = "STREETCLIP_HOSTILE_CHILD";
/// Heap + anonymous mappings allowed to the child: ample for the largest legal image this
/// suite builds, far below what an unbounded allocation would take.
const LIMIT_BYTES: u64 = 3 << 30;

#[test]
fn hostile_inputs_fail_cleanly_under_a_memory_limit() {
    if std::env::var_os(CHILD).is_some() {
        return child();
    }
    let exe = std::env::current_exe().unwrap();
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        "--exact",
        "hostile_inputs_fail_cleanly_under_a_memory_limit",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env(CHILD, "1");
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: LIMIT_BYTES,
                rlim_max: LIMIT_BYTES,
            };
            if libc::setrlimit(libc::RLIMIT_DATA, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the child failed (status {:?}):\n{text}",
        out.status
    );
    assert!(text.contains("hostile inputs: all handled"), "{text}");
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 3) as u8, 90]));
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// A valid PNG whose header claims another size (CRC fixed, so only the size lies).
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut bytes = png(4, 4);
    bytes[16..20].copy_from_slice(&w.to_be_bytes());
    bytes[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn image_cases() -> Vec<(String, Vec<u8>)> {
    let jpeg = std::fs::read(root().join("assets/demo/coffee.jpg")).unwrap();
    let mut rng = Rng(0x5EED);
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), vec![]),
        ("jpeg magic only".into(), vec![0xFF, 0xD8]),
        (
            "jpeg claiming 65535x65535".into(),
            jpeg_claiming(&jpeg, 65535, 65535),
        ),
        (
            "jpeg claiming 13000x13000".into(),
            jpeg_claiming(&jpeg, 13000, 13000),
        ),
        ("jpeg claiming 0x0".into(), jpeg_claiming(&jpeg, 0, 0)),
        (
            "png claiming 100000x100000".into(),
            png_claiming(100_000, 100_000),
        ),
        (
            "png claiming 2^31-1 x 1".into(),
            png_claiming(i32::MAX as u32, 1),
        ),
        ("png 60000x1".into(), png(60_000, 1)),
        ("png 1x60000".into(), png(1, 60_000)),
        (
            "gif".into(),
            b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec(),
        ),
        (
            "webp header only".into(),
            b"RIFF\x10\x00\x00\x00WEBPVP8 \x04\x00\x00\x00".to_vec(),
        ),
    ];
    for i in 0..40 {
        let mut b = jpeg.clone();
        for _ in 0..1 + i % 8 {
            let at = rng.below(b.len());
            b[at] ^= 1 << rng.below(8);
        }
        cases.push((format!("jpeg with flipped bits #{i}"), b));
    }
    for i in 1..20 {
        cases.push((
            format!("jpeg cut at {i}/20"),
            jpeg[..jpeg.len() * i / 20].to_vec(),
        ));
        let p = png(64, 48);
        cases.push((format!("png cut at {i}/20"), p[..p.len() * i / 20].to_vec()));
    }
    for i in 0..20 {
        let n = rng.below(4096);
        cases.push((
            format!("random bytes #{i}"),
            (0..n).map(|_| rng.next() as u8).collect(),
        ));
    }
    cases
}

fn shard_cases(dir: &Path) -> Vec<(String, String)> {
    let mut rng = Rng(0xBAD5);
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(dir.join(name), bytes).unwrap();
        dir.join(name).display().to_string()
    };
    let mut cases = vec![(
        "not a tar".to_string(),
        write("junk.tar", b"hello, not a tar"),
    )];
    // A tar whose header declares a huge member.
    let mut header = tar::Header::new_gnu();
    header.set_path("000.jpg").unwrap();
    header.set_size(1 << 40);
    header.set_cksum();
    cases.push((
        "member of 1 TiB".into(),
        write("huge.tar", header.as_bytes()),
    ));
    // Members escaping the root, and a truncated real shard.
    let mut escaping = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_old();
    // Written into the raw name field: the tar crate itself refuses to build such a member.
    h.as_old_mut().name[..15].copy_from_slice(b"../../etc/x.jpg");
    h.set_size(3);
    h.set_cksum();
    escaping.append(&h, &b"abc"[..]).unwrap();
    cases.push((
        "escaping member".into(),
        write("escape.tar", &escaping.into_inner().unwrap()),
    ));
    let mut real = tar::Builder::new(Vec::new());
    for i in 0..4 {
        let jpeg = std::fs::read(root().join("assets/demo/coffee.jpg")).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(jpeg.len() as u64);
        h.set_cksum();
        real.append_data(&mut h, format!("{i:03}.jpg"), &jpeg[..])
            .unwrap();
        let json = br#"{"country": "FR"}"#;
        let mut h = tar::Header::new_gnu();
        h.set_size(json.len() as u64);
        h.set_cksum();
        real.append_data(&mut h, format!("{i:03}.json"), &json[..])
            .unwrap();
    }
    let real = real.into_inner().unwrap();
    for i in 1..10 {
        cases.push((
            format!("shard cut at {i}/10"),
            write(&format!("cut{i}.tar"), &real[..real.len() * i / 10]),
        ));
    }
    for i in 0..10 {
        let mut b = real.clone();
        for _ in 0..8 {
            let at = rng.below(b.len());
            b[at] = rng.next() as u8;
        }
        cases.push((
            format!("shard with random bytes #{i}"),
            write(&format!("noise{i}.tar"), &b),
        ));
    }
    cases
}

fn manifest_cases(dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut rng = Rng(0x3A71);
    let write = |name: &str, bytes: Vec<u8>| {
        std::fs::write(dir.join(name), bytes).unwrap();
        (name.to_string(), dir.join(name))
    };
    let mut cases = vec![
        write("empty.csv", vec![]),
        write("header-only.csv", b"image,country\n".to_vec()),
        write(
            "invalid-utf8.csv",
            b"image,country\n\xff\xfe.jpg,\xc3\x28\n".to_vec(),
        ),
        write(
            "long-line.csv",
            format!("image,country\n{},FR\n", "a".repeat(5 << 20)).into_bytes(),
        ),
        write(
            "many-columns.csv",
            format!(
                "{}\n",
                (0..200_000)
                    .map(|i| format!("c{i}"))
                    .collect::<Vec<_>>()
                    .join(",")
            )
            .into_bytes(),
        ),
        write(
            "nested.jsonl",
            format!("{}{}\n", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        ),
        write(
            "coordinates.csv",
            b"image,lat,lon\na.jpg,NaN,inf\nb.jpg,1e308,-1e308\nc.jpg,91,181\n".to_vec(),
        ),
    ];
    for i in 0..10 {
        let n = rng.below(2000);
        cases.push(write(
            &format!("random{i}.csv"),
            (0..n).map(|_| rng.next() as u8).collect(),
        ));
    }
    cases
}

fn child() {
    let pre = PreprocessConfig::for_size(336);
    let mut handled = 0;
    for (name, bytes) in image_cases() {
        let result = std::panic::catch_unwind(|| decode(&bytes).and_then(|img| pre.apply(&img)));
        match result {
            Ok(Ok(pixels)) => assert_eq!(pixels.len(), 3 * 336 * 336, "{name}"),
            Ok(Err(e)) => assert!(!format!("{e:#}").is_empty(), "{name}"),
            Err(_) => panic!("decoding `{name}` panicked"),
        }
        handled += 1;
    }
    let tmp = tmpdir();
    let g = Gazetteer::bundled().unwrap();
    for (name, pattern) in shard_cases(tmp.path()) {
        let cfg = DataConfig {
            shards: Some(pattern),
            on_error: OnError::Skip,
            ..DataConfig::default()
        };
        let result =
            std::panic::catch_unwind(|| Dataset::load(&cfg, g).map(|(d, _)| d.samples.len()));
        assert!(result.is_ok(), "reading shard `{name}` panicked");
        handled += 1;
    }
    for (name, path) in manifest_cases(tmp.path()) {
        for on_error in [OnError::Skip, OnError::Fail] {
            let cfg = DataConfig {
                manifest: Some(path.clone()),
                on_error,
                ..DataConfig::default()
            };
            let result =
                std::panic::catch_unwind(|| Dataset::load(&cfg, g).map(|(d, _)| d.samples.len()));
            assert!(result.is_ok(), "reading manifest `{name}` panicked");
        }
        handled += 1;
    }
    let _ = std::io::stdout().flush();
    println!("hostile inputs: all handled ({handled} cases)");
}
