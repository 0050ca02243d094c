//! Evaluation throughput: the hierarchical zero-shot geolocation of `eval geo` (model loading,
//! candidate text embeddings, decode, preprocess, image tower, two stages) on the ../shared
//! IM2GPS3K sample with the tiny 336 px model, against the same procedure in Python with
//! transformers (scripts/bench_geo.py), in one run. Prints images/s, the ratio, and how often
//! the two pick the same country and city (their preprocessing differs by rounding only).

mod reference;

use std::path::PathBuf;
use std::time::Instant;
use streetclip::config::Config;
use streetclip::eval::geo_eval::evaluate as eval_geo;
use streetclip::eval::geo_model::GeoModel;
use streetclip::formats::pretrained::Pretrained;

const BATCH: usize = 32;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let sample = root.join("../shared/data/im2gps3k-sample");
    assert!(
        sample.join("meta.csv").is_file(),
        "{} is missing: the benchmark needs the shared real photographs",
        sample.display()
    );
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    tch::set_num_threads(threads as i32);
    let model_dir = root.join("tests/fixtures/tiny-p14-336");
    let mut cfg = Config::default();
    cfg.data.manifest = Some(sample.join("meta.csv"));
    // Both sides encode every prompt: the text-embedding cache would make reruns unfairly fast.
    cfg.geo.cache = false;

    let start = Instant::now();
    let clip = Pretrained::load(&model_dir, tch::Device::Cpu).unwrap();
    let model = GeoModel::Hierarchical(None);
    let predictions = eval_geo(&clip, &model, &cfg, "tiny", None, BATCH)
        .unwrap()
        .remove(0)
        .predictions;
    let ours = predictions.len() as f64 / start.elapsed().as_secs_f64();

    let images: Vec<&str> = predictions.iter().map(|p| p.image.as_str()).collect();
    let mut args = vec![
        model_dir.clone().into_os_string(),
        root.join("data/gazetteer").into(),
    ];
    args.extend([BATCH.to_string().into(), threads.to_string().into()]);
    args.extend(images.iter().map(std::ffi::OsString::from));
    let stdout = reference::run(&root, "bench_geo.py", &args, &[]);
    let theirs = reference::rate(&stdout, "images_per_s");
    let guesses: Vec<(&str, &str)> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("guess\t"))
        .filter_map(|l| l.split_once('\t'))
        .collect();
    let same_country = predictions
        .iter()
        .zip(&guesses)
        .filter(|(p, g)| p.pred_country == g.0)
        .count();
    let same_city = predictions
        .iter()
        .zip(&guesses)
        .filter(|(p, g)| p.pred_country == g.0 && p.pred_city == g.1)
        .count();
    println!("eval geo, {} IM2GPS3K photos, tiny 336 px CLIP, batch {BATCH}, {threads} threads (model load + candidates + images)", predictions.len());
    println!("  streetclip    {ours:7.1} images/s");
    println!("  transformers  {theirs:7.1} images/s");
    println!("  ratio         {:7.2}x", ours / theirs);
    println!(
        "  same country {same_country}/{n}, same city {same_city}/{n}",
        n = predictions.len()
    );
}
