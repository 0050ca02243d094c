//! The parallel loader: determinism, rank sharding, exact resume, bad samples, augmentation.

mod common;
use common::*;
use std::collections::HashSet;
use std::sync::Arc;
use streetclip::data::dataset::{AugmentConfig, DataConfig, Dataset, OnError};
use streetclip::data::loader::{epoch_order, Loader, LoaderConfig, Position};
use streetclip::data::PreprocessConfig;
use streetclip::geo::Gazetteer;
use streetclip::synth::{generate, SynthArgs};
use streetclip::text::{CaptionConfig, Captioner};

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    data: Arc<Dataset>,
}

fn synth(n_countries: usize) -> Fixture {
    let g = Gazetteer::bundled().unwrap();
    let tmp = tmpdir();
    let dir = tmp.path().to_path_buf();
    let args = SynthArgs {
        countries: n_countries,
        cities_per_country: 2,
        per_city: 5,
        seed: 1,
        width: 96,
        height: 72,
    };
    generate(&dir, &args, g).unwrap();
    let cfg = DataConfig {
        manifest: Some(dir.join("manifest.csv")),
        ..DataConfig::default()
    };
    let (data, _) = Dataset::load(&cfg, g).unwrap();
    Fixture {
        _tmp: tmp,
        dir,
        data: Arc::new(data),
    }
}

fn config(batch: usize) -> LoaderConfig {
    LoaderConfig {
        batch_size: batch,
        workers: 2,
        prefetch: 2,
        seed: 5,
        shuffle: true,
        rank: 0,
        world_size: 1,
        on_error: OnError::Skip,
        drop_last: true,
        augment: AugmentConfig::default(),
        epochs: Some(2),
    }
}

fn captioner() -> Arc<Captioner> {
    Arc::new(
        Captioner::new(&CaptionConfig {
            drop_city: 0.5,
            ..CaptionConfig::default()
        })
        .unwrap(),
    )
}

fn run(
    data: &Arc<Dataset>,
    cfg: LoaderConfig,
    from: Position,
) -> Vec<streetclip::data::loader::Batch> {
    Loader::start(
        data.clone(),
        captioner(),
        PreprocessConfig::for_size(32),
        cfg,
        from,
    )
    .unwrap()
    .map(|b| b.unwrap())
    .collect()
}

#[test]
fn same_seed_same_stream_other_seed_other_order() {
    let f = synth(3);
    let a = run(&f.data, config(4), Position::default());
    let b = run(&f.data, config(4), Position::default());
    assert_eq!(a.len(), 2 * (30 / 4), "two epochs of full batches");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (&x.samples, &x.captions, &x.pixels),
            (&y.samples, &y.captions, &y.pixels)
        );
    }
    let other = run(
        &f.data,
        LoaderConfig {
            seed: 6,
            ..config(4)
        },
        Position::default(),
    );
    assert_ne!(
        a.iter().map(|b| b.samples.clone()).collect::<Vec<_>>(),
        other.iter().map(|b| b.samples.clone()).collect::<Vec<_>>()
    );
    // Each epoch is a permutation: no sample twice.
    let epoch0: Vec<usize> = a
        .iter()
        .filter(|b| b.epoch == 0)
        .flat_map(|b| b.samples.clone())
        .collect();
    assert_eq!(epoch0.iter().collect::<HashSet<_>>().len(), epoch0.len());
}

#[test]
fn ranks_are_disjoint_and_cover_the_epoch() {
    let n = 30;
    let whole = epoch_order(n, 9, 0, true, 0, 1, 3);
    for world in [2, 3, 4] {
        let block = 3;
        let shares: Vec<Vec<usize>> = (0..world)
            .map(|r| epoch_order(n, 9, 0, true, r, world, block))
            .collect();
        let all: Vec<usize> = shares.iter().flatten().copied().collect();
        let distinct: HashSet<usize> = all.iter().copied().collect();
        assert_eq!(distinct.len(), all.len(), "disjoint");
        let global = world * block;
        assert_eq!(
            all.len(),
            n / global * global,
            "covering whole global batches"
        );
        assert!(
            shares.iter().all(|s| s.len() == n / global * block),
            "equal shares"
        );
        // Global batch g, rank by rank, is the one-rank order's g-th run of world x block.
        for g in 0..n / global {
            let spliced: Vec<usize> = shares
                .iter()
                .flat_map(|s| s[g * block..(g + 1) * block].to_vec())
                .collect();
            assert_eq!(
                spliced,
                whole[g * global..(g + 1) * global],
                "world {world}, global batch {g}"
            );
        }
    }
    let f = synth(3);
    let r0 = run(
        &f.data,
        LoaderConfig {
            rank: 0,
            world_size: 2,
            ..config(3)
        },
        Position::default(),
    );
    let r1 = run(
        &f.data,
        LoaderConfig {
            rank: 1,
            world_size: 2,
            ..config(3)
        },
        Position::default(),
    );
    let s0: HashSet<usize> = r0
        .iter()
        .filter(|b| b.epoch == 0)
        .flat_map(|b| b.samples.clone())
        .collect();
    let s1: HashSet<usize> = r1
        .iter()
        .filter(|b| b.epoch == 0)
        .flat_map(|b| b.samples.clone())
        .collect();
    assert!(s0.is_disjoint(&s1));
    assert_eq!(s0.len() + s1.len(), 30 / 6 * 6);
}

#[test]
fn resuming_from_a_saved_position_continues_exactly() {
    let f = synth(3);
    let full = run(&f.data, config(4), Position::default());
    for cut in [1, 7, 9] {
        let resumed = run(&f.data, config(4), full[cut - 1].next);
        assert_eq!(resumed.len(), full.len() - cut);
        for (x, y) in full[cut..].iter().zip(&resumed) {
            assert_eq!(
                (&x.samples, &x.captions, &x.pixels, x.next),
                (&y.samples, &y.captions, &y.pixels, y.next)
            );
        }
    }
}

#[test]
fn pixels_are_the_preprocessed_images() {
    let f = synth(1);
    let pre = PreprocessConfig::for_size(32);
    let batches = run(
        &f.data,
        LoaderConfig {
            shuffle: false,
            epochs: Some(1),
            ..config(4)
        },
        Position::default(),
    );
    let first = &batches[0];
    let streetclip::data::ImageRef::File(path) = &f.data.samples[first.samples[0]].image else {
        panic!()
    };
    assert_eq!(&first.pixels[..3 * 32 * 32], &pre.load(path).unwrap()[..]);
}

#[test]
fn bad_images_are_skipped_and_counted_or_fail() {
    let f = synth(1);
    // Corrupt two images after indexing: the loader finds them.
    let mut broken = vec![];
    for s in f.data.samples.iter().take(2) {
        let streetclip::data::ImageRef::File(p) = &s.image else {
            panic!()
        };
        std::fs::write(p, b"\xff\xd8broken").unwrap();
        broken.push(p.clone());
    }
    // Every image sits in its own row of the batch, also after a skipped one freed a slot, and
    // also in the second epoch, whose batches reuse the first's buffers (checked as they come,
    // each batch dropped before the next, so that its buffer goes back to the loader).
    let pre = PreprocessConfig::for_size(32);
    let per = pre.output_len();
    let (mut skipped, mut buffers, mut reused) = (vec![], HashSet::new(), 0);
    let mut loader = start(&f, config(4));
    for b in loader.by_ref() {
        let b = b.unwrap();
        assert_eq!(b.samples.len(), 4, "batches stay full");
        skipped.extend(b.skipped.clone());
        reused += usize::from(!buffers.insert(b.pixels.as_ptr() as usize));
        for (row, &i) in b.samples.iter().enumerate() {
            let streetclip::data::ImageRef::File(p) = &f.data.samples[i].image else {
                panic!()
            };
            assert_eq!(
                &b.pixels[row * per..(row + 1) * per],
                &pre.load(p).unwrap()[..]
            );
        }
    }
    skipped.extend(loader.take_dropped_skips(2));
    assert_eq!(skipped.len(), 4, "two per epoch: {skipped:?}");
    assert!(reused > 0, "batch buffers are reused");
    let mut failing = Loader::start(
        f.data.clone(),
        captioner(),
        PreprocessConfig::for_size(32),
        LoaderConfig {
            on_error: OnError::Fail,
            shuffle: false,
            ..config(4)
        },
        Position::default(),
    )
    .unwrap();
    let err = format!("{:#}", failing.next().unwrap().err().unwrap());
    assert!(
        err.contains("manifest.csv:2") && err.contains("cannot decode"),
        "{err}"
    );
    let _ = f.dir;
}

#[test]
fn augmentation_is_seeded_and_flip_mirrors() {
    let f = synth(1);
    let aug = AugmentConfig {
        random_resized_crop: Some([0.5, 1.0]),
        hflip: 0.0,
    };
    let a = run(
        &f.data,
        LoaderConfig {
            augment: aug.clone(),
            epochs: Some(1),
            ..config(4)
        },
        Position::default(),
    );
    let b = run(
        &f.data,
        LoaderConfig {
            augment: aug,
            epochs: Some(1),
            ..config(4)
        },
        Position::default(),
    );
    assert_eq!(a[0].pixels, b[0].pixels, "same seed, same crops");
    let plain = run(
        &f.data,
        LoaderConfig {
            epochs: Some(1),
            ..config(4)
        },
        Position::default(),
    );
    assert_ne!(a[0].pixels, plain[0].pixels);
    let flipped = run(
        &f.data,
        LoaderConfig {
            augment: AugmentConfig {
                random_resized_crop: None,
                hflip: 1.0,
            },
            epochs: Some(1),
            ..config(4)
        },
        Position::default(),
    );
    let row = |p: &[f32]| p[..32].to_vec();
    let mut mirrored = row(&plain[0].pixels);
    mirrored.reverse();
    assert_eq!(row(&flipped[0].pixels), mirrored);
}

/// A loader over the fixture from the start.
fn start(f: &Fixture, cfg: LoaderConfig) -> Loader {
    Loader::start(
        f.data.clone(),
        captioner(),
        PreprocessConfig::for_size(32),
        cfg,
        Position::default(),
    )
    .unwrap()
}

#[test]
fn a_crash_while_decoding_is_an_error_not_the_end_of_the_data() {
    // An augmentation the config check would refuse ([1.0, 0.5] is an empty range) makes the
    // random crop panic inside a decode worker.
    let f = synth(2);
    let cfg = LoaderConfig {
        augment: AugmentConfig {
            random_resized_crop: Some([1.0, 0.5]),
            hflip: 0.0,
        },
        ..config(4)
    };
    let mut loader = start(&f, cfg);
    let first = loader.next().expect("an error, not the end of the data");
    let err = format!("{:#}", first.expect_err("an error"));
    assert!(err.contains("data loader crashed"), "{err}");
}

#[test]
fn skips_in_the_dropped_last_batch_are_counted() {
    // 20 samples in batches of 8: each epoch drops its last 4. Make every sample unreadable
    // but 17, so every epoch's dropped partial batch also holds unreadable ones.
    let f = synth(2);
    for s in f.data.samples.iter().skip(17) {
        let streetclip::data::ImageRef::File(p) = &s.image else {
            unreachable!()
        };
        std::fs::write(p, b"").unwrap();
    }
    let cfg = LoaderConfig {
        shuffle: false,
        epochs: Some(1),
        ..config(8)
    };
    let mut loader = start(&f, cfg);
    let mut reported: usize = 0;
    let mut batches = 0;
    for b in loader.by_ref() {
        let b = b.unwrap();
        reported += b.skipped.len();
        batches += 1;
    }
    // 17 readable: two full batches of 8; the 3 unreadable are all in the dropped tail.
    assert_eq!(batches, 2);
    assert_eq!(reported, 0);
    assert_eq!(
        loader.take_dropped_skips(1).len(),
        3,
        "the dropped tail's skips are reported once"
    );
    assert!(loader.take_dropped_skips(1).is_empty());
}
