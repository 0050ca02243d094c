//! PNG figures of evaluations, drawn with plotters into an RGB buffer and encoded by `image`
//! (no system fonts or libraries: the DejaVu Sans font ships in `assets/fonts`).

use super::metrics::THRESHOLDS_KM;
use anyhow::{Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";
/// Distances below this are drawn at it: a log axis has no zero.
const MIN_KM: f64 = 0.1;
const MAX_KM: f64 = 20_100.0;
/// Curve colours, one per compared model.
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Draws on a white `w × h` canvas and writes it to `path` as PNG, atomically.
fn render(path: &Path, (w, h): (u32, u32), draw: impl FnOnce(&Area) -> Result<()>) -> Result<()> {
    static FONT_ONCE: std::sync::Once = std::sync::Once::new();
    FONT_ONCE.call_once(|| {
        plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
            .unwrap_or_else(|_| panic!("the bundled font is a valid TrueType file"))
    });
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        draw(&root).with_context(|| format!("cannot draw {}", path.display()))?;
        root.present()?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).context("plot buffer size")?;
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png)?;
    crate::formats::tensor_io::write_atomic(path, &png.into_inner())
}

/// Cumulative share of images within each distance, on a log km axis with the benchmark
/// thresholds marked; one curve per named series of errors.
pub fn error_curve(path: &Path, series: &[(String, Vec<f64>)]) -> Result<()> {
    render(path, (900, 560), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("Geolocation error", (FAMILY, 22))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(52)
            .build_cartesian_2d((MIN_KM..MAX_KM).log_scale(), 0.0..100.0)?;
        chart
            .configure_mesh()
            .x_desc("error (km, log scale)")
            .y_desc("% of images within")
            .x_label_formatter(&|v| format!("{v}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FAMILY, 13))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for t in THRESHOLDS_KM {
            chart.draw_series(DashedLineSeries::new(
                [(t, 0.0), (t, 100.0)],
                6,
                4,
                BLACK.mix(0.35).stroke_width(1),
            ))?;
            chart.draw_series(std::iter::once(Text::new(
                format!("{t} km"),
                (t * 1.08, 97.0),
                (FAMILY, 12).into_font().color(&BLACK.mix(0.6)),
            )))?;
        }
        for (i, (name, errors)) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(cumulative(errors), color.stroke_width(2)))?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::MiddleLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.3))
            .label_font((FAMILY, 13))
            .draw()?;
        Ok(())
    })
}

/// The step function "% of errors ≤ x" as polyline vertices, from MIN_KM to MAX_KM.
fn cumulative(errors: &[f64]) -> Vec<(f64, f64)> {
    let mut sorted: Vec<f64> = errors.iter().map(|e| e.clamp(MIN_KM, MAX_KM)).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len().max(1) as f64;
    let mut points = vec![(MIN_KM, 0.0)];
    for (i, &e) in sorted.iter().enumerate() {
        points.push((e, 100.0 * i as f64 / n));
        points.push((e, 100.0 * (i + 1) as f64 / n));
    }
    points.push((MAX_KM, 100.0 * sorted.len() as f64 / n));
    points
}

/// A photo's true place and the guess, each (lat, lon).
pub type TruthAndGuess = ((f64, f64), (f64, f64));

/// An equirectangular world map over Natural Earth's country outlines (the map page's), with
/// degree-labelled axes: each truth (green) joined to its guess (red). The more pairs, the
/// fainter each is drawn, so that a few thousand stay readable as densities.
pub fn map_scatter(path: &Path, title: &str, pairs: &[TruthAndGuess]) -> Result<()> {
    let countries = crate::geo::outlines::countries()?;
    // One pair fully drawn among 100, fading to 1/20 of that among 2,000 or more.
    let fade = (100.0 / pairs.len().max(1) as f64).clamp(0.05, 1.0);
    render(path, (1200, 660), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FAMILY, 20))
            .margin(10)
            .x_label_area_size(28)
            .y_label_area_size(44)
            .build_cartesian_2d(-180.0..180.0, -90.0..90.0)?;
        chart
            .configure_mesh()
            .x_labels(13)
            .y_labels(7)
            .x_label_formatter(&|lon| degrees(*lon, "E", "W"))
            .y_label_formatter(&|lat| degrees(*lat, "N", "S"))
            .label_style((FAMILY, 11))
            .light_line_style(WHITE.mix(0.0))
            .bold_line_style(BLACK.mix(0.08))
            .draw()?;
        let rings = || countries.iter().flat_map(|c| c.rings.iter());
        let (land, border) = (RGBColor(238, 235, 226), RGBColor(150, 160, 170));
        chart.draw_series(rings().map(|r| Polygon::new(r.clone(), land.filled())))?;
        chart.draw_series(rings().map(|r| PathElement::new(r.clone(), border.stroke_width(1))))?;
        let (truth_color, guess_color) = (RGBColor(0, 140, 60), RGBColor(200, 30, 30));
        // Links wrap the short way round: a pair across the antimeridian is not drawn across the map.
        chart.draw_series(
            pairs
                .iter()
                .filter(|((_, a), (_, b))| (a - b).abs() <= 180.0)
                .map(|&((la, lo), (pa, po))| {
                    PathElement::new([(lo, la), (po, pa)], guess_color.mix(0.3 * fade))
                }),
        )?;
        let truth = truth_color.mix(fade.max(0.3)).filled();
        let guess = guess_color.mix(fade.max(0.3)).stroke_width(2);
        chart
            .draw_series(
                pairs
                    .iter()
                    .map(|&((la, lo), _)| Circle::new((lo, la), 3, truth)),
            )?
            .label("truth")
            .legend(move |(x, y)| Circle::new((x + 8, y), 3, truth_color.filled()));
        chart
            .draw_series(
                pairs
                    .iter()
                    .map(|&(_, (pa, po))| Cross::new((po, pa), 3, guess)),
            )?
            .label("guess")
            .legend(move |(x, y)| Cross::new((x + 8, y), 3, guess_color.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.3))
            .label_font((FAMILY, 13))
            .draw()?;
        Ok(())
    })
}

/// `30°E`, `45°S`, `0°`: an axis value in degrees with its hemisphere.
fn degrees(value: f64, positive: &str, negative: &str) -> String {
    let side = match value {
        v if v > 0.0 => positive,
        v if v < 0.0 => negative,
        _ => "",
    };
    format!("{}°{side}", value.abs().round())
}

/// A confusion matrix (rows: true class, columns: predicted), shaded by the share of each true
/// class, with counts in the cells. Columns are numbered; the row labels give the names.
pub fn confusion_matrix(path: &Path, classes: &[String], counts: &[Vec<usize>]) -> Result<()> {
    let n = classes.len().max(1) as u32;
    let cell = (560 / n).clamp(14, 64);
    let label_w = 16
        + 8 * classes
            .iter()
            .map(|c| c.chars().count() as u32 + 4)
            .max()
            .unwrap_or(4)
            .min(40);
    // Column labels are the class names, written upwards above their columns.
    let longest = classes
        .iter()
        .map(|c| c.chars().count().min(36) as u32)
        .max()
        .unwrap_or(1);
    let (left, top) = (label_w, 60 + 7 * longest);
    let (w, h) = ((left + n * cell + 30).max(420), top + n * cell + 30);
    render(path, (w, h), |root| {
        let font = |size: u32| (FAMILY, size).into_font();
        root.draw(&Text::new("Confusion matrix", (10, 8), font(16)))?;
        root.draw(&Text::new(
            "rows: true class, columns: predicted class",
            (10, 30),
            font(12).color(&BLACK.mix(0.6)),
        ))?;
        let text_size = (cell / 3).clamp(8, 14);
        for (i, row) in counts.iter().enumerate() {
            let total = row.iter().sum::<usize>().max(1) as f64;
            let y = top + i as u32 * cell;
            let name: String = classes[i].chars().take(36).collect();
            root.draw(&Text::new(name, (8, (y + cell / 2 - 7) as i32), font(13)))?;
            for (j, &c) in row.iter().enumerate() {
                let x = left + j as u32 * cell;
                let share = c as f64 / total;
                // White to dark blue by the share of the true class.
                let shade = |lo: f64, hi: f64| (lo + (hi - lo) * share).round() as u8;
                let color = RGBColor(shade(247.0, 8.0), shade(251.0, 48.0), shade(255.0, 107.0));
                root.draw(&Rectangle::new(
                    [(x as i32, y as i32), ((x + cell) as i32, (y + cell) as i32)],
                    color.filled(),
                ))?;
                root.draw(&Rectangle::new(
                    [(x as i32, y as i32), ((x + cell) as i32, (y + cell) as i32)],
                    BLACK.mix(0.15),
                ))?;
                if cell >= 20 {
                    let ink = if share > 0.5 { WHITE } else { BLACK };
                    let text = c.to_string();
                    let x_text = x + cell / 2 - (text.len() as u32 * text_size) / 4;
                    root.draw(&Text::new(
                        text,
                        (x_text as i32, (y + cell / 2 - text_size / 2) as i32),
                        font(text_size).color(&ink),
                    ))?;
                }
            }
        }
        for (j, class) in classes.iter().enumerate() {
            let name: String = class.chars().take(36).collect();
            root.draw(&Text::new(
                name,
                (
                    (left + j as u32 * cell + cell / 2 - 7) as i32,
                    (top - 6) as i32,
                ),
                font(12).transform(FontTransform::Rotate270),
            ))?;
        }
        Ok(())
    })
}
