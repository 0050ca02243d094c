//! `synth-data`: procedural "street scenes" for real gazetteer cities, whose look depends on the
//! place the way Street View imagery does — driving side, road-marking colour, sign shape and
//! colour, vegetation and sky by latitude, building palette by country and city — so a small
//! CLIP trained on them has something to learn. Deterministic for a seed; seconds to make.

use crate::data::DataConfig;
use crate::formats::tensor_io::write_atomic;
use crate::geo::{Country, Gazetteer};
use anyhow::{bail, Context, Result};
use image::{Rgb, RgbImage};
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

pub struct SynthArgs {
    pub countries: usize,
    pub cities_per_country: usize,
    pub per_city: usize,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
}

impl Default for SynthArgs {
    fn default() -> Self {
        Self {
            countries: 8,
            cities_per_country: 3,
            per_city: 12,
            seed: 0,
            width: 160,
            height: 120,
        }
    }
}

/// Countries that drive on the left (the largest of them; the rest drive on the right).
const LEFT_DRIVING: [&str; 24] = [
    "GB", "IE", "JP", "IN", "AU", "NZ", "ZA", "TH", "ID", "MY", "PK", "BD", "KE", "UG", "TZ", "LK",
    "NP", "SG", "HK", "JM", "ZW", "ZM", "MZ", "NA",
];

/// What a country's streets look like.
struct Style {
    left_driving: bool,
    centre_line: Rgb<u8>,
    sign_shape: u8,
    sign_colour: Rgb<u8>,
    sky: Rgb<u8>,
    vegetation: f64,
    foliage: Rgb<u8>,
    ground: Rgb<u8>,
    buildings: [Rgb<u8>; 2],
}

fn palette(rng: &mut ChaCha8Rng) -> Rgb<u8> {
    Rgb([
        rng.random_range(40..230),
        rng.random_range(40..230),
        rng.random_range(40..230),
    ])
}

fn style(country: &Country) -> Style {
    let mut rng = ChaCha8Rng::seed_from_u64(
        country
            .iso2
            .bytes()
            .fold(17u64, |h, b| h.wrapping_mul(131).wrapping_add(b as u64)),
    );
    let abs_lat = country.lat.abs();
    let americas = matches!(country.continent.as_str(), "NA" | "SA");
    // Dense green in the tropics, sparse and dry in the subtropical desert belt, medium beyond.
    let (vegetation, foliage, ground) = match abs_lat {
        l if l < 15.0 => (0.9, Rgb([30, 140, 40]), Rgb([90, 120, 50])),
        l if l < 35.0 => (0.25, Rgb([120, 130, 60]), Rgb([200, 170, 110])),
        l if l < 55.0 => (0.6, Rgb([60, 120, 50]), Rgb([110, 130, 80])),
        _ => (0.4, Rgb([40, 90, 60]), Rgb([170, 175, 170])),
    };
    let pale = (abs_lat * 2.0).min(120.0) as u8;
    Style {
        left_driving: LEFT_DRIVING.contains(&country.iso2.as_str()),
        centre_line: if americas {
            Rgb([240, 200, 20])
        } else {
            Rgb([245, 245, 245])
        },
        sign_shape: rng.random_range(0..3),
        sign_colour: palette(&mut rng),
        sky: Rgb([90 + pale, 150 + pale / 2, 235]),
        vegetation,
        foliage,
        ground,
        buildings: [palette(&mut rng), palette(&mut rng)],
    }
}

fn fill_rect(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb<u8>) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    for y in y0.max(0)..y1.min(h) {
        for x in x0.max(0)..x1.min(w) {
            img.put_pixel(x as u32, y as u32, c);
        }
    }
}

/// Fills the points inside `inside(x, y)` within a bounding box.
fn fill_shape(
    img: &mut RgbImage,
    bbox: (i64, i64, i64, i64),
    c: Rgb<u8>,
    inside: impl Fn(f64, f64) -> bool,
) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    for y in bbox.1.max(0)..bbox.3.min(h) {
        for x in bbox.0.max(0)..bbox.2.min(w) {
            if inside(x as f64 + 0.5, y as f64 + 0.5) {
                img.put_pixel(x as u32, y as u32, c);
            }
        }
    }
}

fn jitter(c: Rgb<u8>, rng: &mut ChaCha8Rng, amount: i32) -> Rgb<u8> {
    Rgb(c
        .0
        .map(|v| (v as i32 + rng.random_range(-amount..=amount)).clamp(0, 255) as u8))
}

/// A street scene drawn layer by layer (sky, buildings, road, signs, vegetation). Long on
/// purpose: the drawing reads top to bottom as the picture is painted.
fn scene(s: &Style, city_tint: Rgb<u8>, rng: &mut ChaCha8Rng, w: u32, h: u32) -> RgbImage {
    let (wf, hf) = (w as f64, h as f64);
    let horizon = (hf * rng.random_range(0.38..0.48)) as i64;
    let mut img = RgbImage::from_pixel(w, h, jitter(s.sky, rng, 12));
    fill_rect(
        &mut img,
        0,
        horizon,
        w as i64,
        h as i64,
        jitter(s.ground, rng, 10),
    );
    // Buildings along the horizon, in the country's colours tinted by the city.
    let mut x = -(rng.random_range(0..20) as i64);
    while x < w as i64 {
        let bw = rng.random_range(12..30) as i64;
        let bh = (hf * rng.random_range(0.1..0.3)) as i64;
        let base = s.buildings[rng.random_range(0..2)];
        let c = Rgb([0, 1, 2].map(|i| ((base.0[i] as u16 * 3 + city_tint.0[i] as u16) / 4) as u8));
        fill_rect(
            &mut img,
            x,
            horizon - bh,
            x + bw - 1,
            horizon,
            jitter(c, rng, 8),
        );
        x += bw;
    }
    // Trees: more and greener where the country is greener.
    for _ in 0..(12.0 * s.vegetation) as usize + 1 {
        let (cx, r) = (rng.random_range(0.0..wf), rng.random_range(3.0..8.0));
        let cy = horizon as f64 - r * 0.5;
        let c = jitter(s.foliage, rng, 15);
        fill_shape(
            &mut img,
            (
                (cx - r) as i64,
                (cy - r) as i64,
                (cx + r) as i64 + 1,
                (cy + r) as i64 + 1,
            ),
            c,
            |x, y| (x - cx).powi(2) + (y - cy).powi(2) < r * r,
        );
    }
    // The road: a trapezoid to the vanishing point, centre line dashed in the country's colour.
    let vx = wf * rng.random_range(0.42..0.58);
    let top = horizon as f64;
    let road = Rgb([70, 70, 75]);
    fill_shape(
        &mut img,
        (0, horizon, w as i64, h as i64),
        jitter(road, rng, 6),
        |x, y| {
            let t = (y - top) / (hf - top);
            (x - vx).abs() < 2.0 + t * wf * 0.55
        },
    );
    for k in 0..8 {
        let y0 = top + (hf - top) * (k as f64 / 8.0).powi(2);
        let y1 = top + (hf - top) * ((k as f64 + 0.5) / 8.0).powi(2);
        fill_shape(
            &mut img,
            (0, y0 as i64, w as i64, y1 as i64 + 1),
            s.centre_line,
            |x, y| {
                let t = (y - top) / (hf - top);
                (x - vx).abs() < 0.4 + t * 2.0
            },
        );
    }
    // A car on the side of the road its country drives on.
    let side = if s.left_driving { -1.0 } else { 1.0 };
    let t = rng.random_range(0.35..0.8);
    let (cy, cw) = (top + (hf - top) * t, 4.0 + t * wf * 0.18);
    let cx = vx + side * t * wf * 0.22;
    fill_rect(
        &mut img,
        (cx - cw / 2.0) as i64,
        (cy - cw * 0.5) as i64,
        (cx + cw / 2.0) as i64,
        cy as i64,
        palette(rng),
    );
    // A road sign on the verge: the country's shape and colour.
    let sx = vx - side * wf * rng.random_range(0.3..0.42);
    let (sy, r) = (top + (hf - top) * 0.15, hf * 0.07);
    fill_rect(
        &mut img,
        sx as i64,
        sy as i64,
        sx as i64 + 1,
        (sy + r * 3.0) as i64,
        Rgb([90, 90, 90]),
    );
    let bbox = (
        (sx - r) as i64,
        (sy - r) as i64,
        (sx + r) as i64 + 1,
        (sy + r) as i64 + 1,
    );
    match s.sign_shape {
        0 => fill_shape(&mut img, bbox, s.sign_colour, |x, y| {
            (x - sx).powi(2) + (y - sy).powi(2) < r * r
        }),
        1 => fill_shape(&mut img, bbox, s.sign_colour, |x, y| {
            y - (sy - r) > 1.7 * (x - sx).abs() && y < sy + r * 0.7
        }),
        _ => fill_shape(&mut img, bbox, s.sign_colour, |x, y| {
            (x - sx).abs() + (y - sy).abs() < r
        }),
    }
    img
}

/// Writes `OUT/images/*.jpg` and `OUT/manifest.csv` (image, city, region, country, lat, lon).
/// Returns the number of images.
pub fn generate(out: &Path, args: &SynthArgs, g: &Gazetteer) -> Result<usize> {
    if args.countries == 0 || args.per_city == 0 || args.cities_per_country == 0 {
        bail!("--countries, --cities-per-country and --per-city must be at least 1");
    }
    let images = out.join("images");
    std::fs::create_dir_all(&images)
        .with_context(|| format!("cannot create {}", images.display()))?;
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    // Populous countries with enough cities, drawn by the seed.
    let mut pool: Vec<usize> = (0..g.countries.len())
        .filter(|&c| {
            g.countries[c].lat.is_finite()
                && g.largest_cities(c, args.cities_per_country).len() == args.cities_per_country
        })
        .collect();
    pool.sort_by_key(|&c| std::cmp::Reverse(g.countries[c].population));
    pool.truncate(60.max(args.countries));
    pool.shuffle(&mut rng);
    pool.truncate(args.countries);
    pool.sort_by(|&a, &b| g.countries[a].iso2.cmp(&g.countries[b].iso2));
    let mut csv = String::from("image,city,region,country,lat,lon\n");
    let mut n = 0;
    for &c in &pool {
        let country = &g.countries[c];
        let st = style(country);
        for city in g.largest_cities(c, args.cities_per_country) {
            let place = &g.cities[city];
            let tint = palette(&mut ChaCha8Rng::seed_from_u64(place.geonameid));
            for k in 0..args.per_city {
                let img = scene(&st, tint, &mut rng, args.width, args.height);
                let name = format!("{}_{}_{k:03}.jpg", country.iso2, place.geonameid);
                let mut bytes = Vec::new();
                img.write_to(
                    &mut std::io::Cursor::new(&mut bytes),
                    image::ImageFormat::Jpeg,
                )?;
                write_atomic(&images.join(&name), &bytes)?;
                // Within a few km of the city centre, as geotags are.
                let (lat, lon) = (
                    place.lat + rng.random_range(-0.03..0.03),
                    place.lon + rng.random_range(-0.03..0.03),
                );
                let region = place
                    .region
                    .map(|r| g.regions[r].name.clone())
                    .unwrap_or_default();
                let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
                csv += &format!(
                    "images/{name},{},{},{},{lat:.5},{lon:.5}\n",
                    quote(&place.name),
                    quote(&region),
                    country.iso2
                );
                n += 1;
            }
        }
    }
    write_atomic(&out.join("manifest.csv"), csv.as_bytes())?;
    Ok(n)
}

/// Draws the scenes `data.synth` asks for into the manifest's folder when the manifest is
/// absent (the demo config uses this, so it runs on a fresh clone); a no-op otherwise.
pub fn draw_if_missing(cfg: &DataConfig, g: &Gazetteer) -> Result<()> {
    let (Some(spec), Some(manifest)) = (&cfg.synth, &cfg.manifest) else {
        return Ok(());
    };
    if manifest.is_file() {
        return Ok(());
    }
    let dir = manifest.parent().unwrap_or(Path::new("."));
    let args = SynthArgs {
        countries: spec.countries,
        cities_per_country: spec.cities_per_country,
        per_city: spec.per_city,
        seed: spec.seed,
        ..Default::default()
    };
    let n = generate(dir, &args, g)?;
    eprintln!("data: drew {n} synthetic scenes into {}", dir.display());
    Ok(())
}
