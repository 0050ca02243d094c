//! Manifests (CSV, JSONL, IM2GPS3K's layout), WebDataset shards and bad rows.

mod common;
use common::*;
use std::path::Path;
use streetclip::data::dataset::{DataConfig, Dataset, OnError};
use streetclip::data::manifest::Columns;
use streetclip::data::webdataset::expand_braces;
use streetclip::data::ImageRef;
use streetclip::geo::Gazetteer;

fn cfg_manifest(path: &Path, on_error: OnError) -> DataConfig {
    DataConfig {
        manifest: Some(path.to_path_buf()),
        on_error,
        ..DataConfig::default()
    }
}

#[test]
fn im2gps3k_metadata_works_without_configuration() {
    let g = Gazetteer::bundled().unwrap();
    let (data, report) = Dataset::load(
        &cfg_manifest(&im2gps3k_sample().join("meta.csv"), OnError::Fail),
        g,
    )
    .unwrap();
    assert_eq!((report.rows, report.kept, report.skipped), (300, 300, 0));
    let first = &data.samples[0];
    assert!(
        matches!(&first.image, ImageRef::File(p) if p.is_file() && p.parent().unwrap().ends_with("images"))
    );
    assert!(first.place.lat.is_some() && first.place.names.country.is_some());
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn touch_images(dir: &Path, names: &[&str]) {
    for n in names {
        std::fs::write(dir.join(n), b"not decoded here").unwrap();
    }
}

#[test]
fn csv_and_jsonl_with_configured_columns() {
    let g = Gazetteer::bundled().unwrap();
    let tmp = tmpdir();
    touch_images(tmp.path(), &["a.jpg", "b.jpg"]);
    let csv = write(
        tmp.path(),
        "m.csv",
        "photo,town,nation\na.jpg,Lyon,France\nb.jpg,Osaka,Japan\n",
    );
    let mut cfg = cfg_manifest(&csv, OnError::Fail);
    cfg.columns = Columns {
        image: Some("photo".into()),
        city: Some("town".into()),
        country: Some("nation".into()),
        ..Columns::default()
    };
    let (data, _) = Dataset::load(&cfg, g).unwrap();
    assert_eq!(data.samples[1].place.names.city.as_deref(), Some("Osaka"));
    let jsonl = write(tmp.path(), "m.jsonl", "{\"image\": \"a.jpg\", \"lat\": 45.76, \"lon\": 4.84}\n{\"image\": \"b.jpg\", \"country\": \"JP\"}\n");
    let (data, _) = Dataset::load(&cfg_manifest(&jsonl, OnError::Fail), g).unwrap();
    assert_eq!(
        data.samples[0].place.names.country.as_deref(),
        Some("France")
    );
    assert_eq!(
        data.samples[1].place.names.country.as_deref(),
        Some("Japan")
    );
    // A configured column that is not there names the key.
    cfg.columns.region = Some("province".into());
    let err = format!("{:#}", Dataset::load(&cfg, g).err().unwrap());
    assert!(
        err.contains("data.columns.region") && err.contains("province"),
        "{err}"
    );
}

#[test]
fn bad_rows_skip_and_count_or_fail() {
    let g = Gazetteer::bundled().unwrap();
    let tmp = tmpdir();
    touch_images(
        tmp.path(),
        &["ok.jpg", "ocean.jpg", "x.jpg", "y.jpg", "z.jpg"],
    );
    let csv = write(
        tmp.path(),
        "m.csv",
        "image,lat,lon,country\nok.jpg,48.85,2.35,\nx.jpg,north,2.0,\ny.jpg,95.0,2.0,\nz.jpg,,,Atlantis\nmissing.jpg,48.8,2.3,\n",
    );
    let (data, report) = Dataset::load(&cfg_manifest(&csv, OnError::Skip), g).unwrap();
    assert_eq!((report.rows, report.kept, report.skipped), (5, 1, 4));
    assert_eq!(data.samples.len(), 1);
    let all = report.first_skipped.join("\n");
    for needle in [
        "m.csv:3: lat `north` is not a number",
        "out of range",
        "unknown country `Atlantis`",
        "missing.jpg does not exist",
    ] {
        assert!(all.contains(needle), "`{needle}` in {all}");
    }
    let err = format!(
        "{:#}",
        Dataset::load(&cfg_manifest(&csv, OnError::Fail), g)
            .err()
            .unwrap()
    );
    assert!(err.contains("m.csv:3") && err.contains("on_error"), "{err}");
}

#[test]
fn empty_and_missing_manifests_are_errors() {
    let g = Gazetteer::bundled().unwrap();
    let tmp = tmpdir();
    let empty = write(tmp.path(), "empty.csv", "image,lat,lon\n");
    let err = format!(
        "{:#}",
        Dataset::load(&cfg_manifest(&empty, OnError::Skip), g)
            .err()
            .unwrap()
    );
    assert!(
        err.contains("empty.csv") && err.contains("no rows"),
        "{err}"
    );
    let err = format!(
        "{:#}",
        Dataset::load(
            &cfg_manifest(&tmp.path().join("nope.csv"), OnError::Skip),
            g
        )
        .err()
        .unwrap()
    );
    assert!(err.contains("nope.csv does not exist"), "{err}");
    let err = format!(
        "{:#}",
        Dataset::load(&DataConfig::default(), g).err().unwrap()
    );
    assert!(err.contains("data.manifest"), "{err}");
}

#[test]
fn brace_expansion() {
    assert_eq!(
        expand_braces("s-{0008..0011}.tar").unwrap(),
        ["s-0008.tar", "s-0009.tar", "s-0010.tar", "s-0011.tar"]
    );
    assert_eq!(
        expand_braces("{a,b}/x{1..2}").unwrap(),
        ["a/x1", "a/x2", "b/x1", "b/x2"]
    );
    assert_eq!(expand_braces("plain.tar").unwrap(), ["plain.tar"]);
    assert!(expand_braces("s-{3..1}.tar").is_err());
    assert!(expand_braces("s-{1..2.tar").is_err());
}

/// A tar entry with exactly this name, bypassing the tar crate's own path checks.
fn append_raw(builder: &mut tar::Builder<std::fs::File>, name: &str, data: &[u8]) {
    let mut header = tar::Header::new_old();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    builder.append(&header, data).unwrap();
}

#[test]
fn webdataset_shards_are_indexed_in_place() {
    let g = Gazetteer::bundled().unwrap();
    let tmp = tmpdir();
    let jpeg = std::fs::read(root().join("assets/demo/coffee.jpg")).unwrap();
    for shard in 0..2 {
        let mut b = tar::Builder::new(
            std::fs::File::create(tmp.path().join(format!("train-{shard:04}.tar"))).unwrap(),
        );
        append_raw(&mut b, &format!("{shard}00.jpg"), &jpeg);
        append_raw(
            &mut b,
            &format!("{shard}00.json"),
            br#"{"city": "Lyon", "country": "FR"}"#,
        );
        append_raw(&mut b, &format!("{shard}01.jpg"), &jpeg);
        append_raw(&mut b, &format!("{shard}01.txt"), b"a photo of coffee");
        append_raw(&mut b, "../evil.jpg", &jpeg);
        append_raw(&mut b, "/abs.jpg", &jpeg);
        append_raw(
            &mut b,
            &format!("{shard}02.json"),
            br#"{"lat": "abc", "lon": 2}"#,
        );
        append_raw(&mut b, &format!("{shard}02.jpg"), &jpeg);
        b.finish().unwrap();
    }
    let pattern = tmp
        .path()
        .join("train-{0000..0001}.tar")
        .to_string_lossy()
        .to_string();
    let cfg = DataConfig {
        shards: Some(pattern.clone()),
        ..DataConfig::default()
    };
    let (data, report) = Dataset::load(&cfg, g).unwrap();
    assert_eq!(
        (report.kept, report.skipped),
        (4, 6),
        "{}",
        report.summary()
    );
    let all = report.first_skipped.join("\n");
    assert!(
        all.contains("absolute or contains `..`") && all.contains("lat/lon is not a number"),
        "{all}"
    );
    assert_eq!(data.samples[0].place.names.city.as_deref(), Some("Lyon"));
    assert_eq!(
        data.samples[1].place.caption.as_deref(),
        Some("a photo of coffee")
    );
    // The indexed bytes are the member's bytes; a sample is named by its shard and key.
    assert_eq!(data.samples[2].image.read().unwrap(), jpeg);
    let name = data.samples[2].image.to_string();
    assert!(name.ends_with("train-0001.tar:100"), "{name}");
    let fail = DataConfig {
        shards: Some(pattern),
        on_error: OnError::Fail,
        ..DataConfig::default()
    };
    assert!(Dataset::load(&fail, g).is_err());
}

#[test]
fn truncated_shard_keeps_what_precedes_the_damage() {
    let g = Gazetteer::bundled().unwrap();
    let tmp = tmpdir();
    let jpeg = std::fs::read(root().join("assets/demo/coffee.jpg")).unwrap();
    let path = tmp.path().join("t.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
    for k in 0..3 {
        append_raw(&mut b, &format!("{k}.jpg"), &jpeg);
        append_raw(&mut b, &format!("{k}.txt"), b"x");
    }
    b.finish().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..jpeg.len() * 2 + 2000]).unwrap();
    let cfg = DataConfig {
        shards: Some(path.to_string_lossy().into()),
        ..DataConfig::default()
    };
    let (data, report) = Dataset::load(&cfg, g).unwrap();
    assert!(
        !data.samples.is_empty() && report.skipped >= 1,
        "{}",
        report.summary()
    );
}

#[test]
fn one_missing_file_does_not_move_the_other_rows() {
    // Files beside the manifest, one only in images/, and the first row's file missing: each
    // row is resolved on its own (before, the first row moved every row into images/).
    let tmp = tmpdir();
    std::fs::create_dir(tmp.path().join("images")).unwrap();
    let mut text = String::from("image, country\n"); // a space after the comma, as people type
    for i in 0..6 {
        text += &format!("p{i}.jpg, FR\n");
        let place = match i {
            0 => continue,
            5 => format!("images/p{i}.jpg"),
            _ => format!("p{i}.jpg"),
        };
        std::fs::copy(
            root().join("assets/demo/coffee.jpg"),
            tmp.path().join(place),
        )
        .unwrap();
    }
    let manifest = write(tmp.path(), "m.csv", &text);
    let g = Gazetteer::bundled().unwrap();
    let (data, report) = Dataset::load(&cfg_manifest(&manifest, OnError::Skip), g).unwrap();
    assert_eq!((report.rows, report.kept), (6, 5), "{}", report.summary());
    for s in &data.samples {
        assert!(
            matches!(&s.image, ImageRef::File(p) if p.is_file()),
            "{:?}",
            s.image
        );
    }
    assert!(
        data.samples.iter().all(|s| s.place.country.is_some()),
        "the country column is read"
    );
}

#[test]
fn absurd_shard_ranges_are_refused_without_allocating() {
    let err = expand_braces("shards/train-{0000..99999999999}.tar")
        .unwrap_err()
        .to_string();
    assert!(err.contains("more than 1000000"), "{err}");
    let err = expand_braces("a-{0000..0999}-{0000..9999}.tar")
        .unwrap_err()
        .to_string();
    assert!(err.contains("10000000 shards"), "{err}");
    assert_eq!(expand_braces("a-{00..02}.tar").unwrap().len(), 3);
}
