//! Pillow's `Image.resize(size, Image.BICUBIC)` for 8-bit RGB, bit for bit (Pillow's
//! `libImaging/Resample.c`): per output pixel, filter coefficients computed in double and
//! normalised to sum 1, then converted to fixed point with 22 fractional bits; two passes with an
//! 8-bit image between them, horizontal first (over the source rows the vertical pass reads)
//! unless the height shrinks more than twice as much as the width (Pillow 13's rule); each sum
//! starts at `1 << 21` (rounding) and is shifted and clamped to 0..=255.
//!
//! Every output pixel depends only on its own coefficients, so resizing just the rows and
//! columns a centre crop keeps gives the same values as resizing everything and cropping, for a
//! fraction of the work and with memory bounded by the crop, whatever the aspect ratio.

use std::ops::Range;

/// Fixed-point fraction bits (Pillow: `32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

/// Pillow's bicubic kernel (a = -0.5), in the same arithmetic order.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// The taps of one axis for the output indices in `keep`: for each, the first source index and
/// its fixed-point weights.
struct Taps {
    first: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

impl Taps {
    /// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for `in_size -> out_size`.
    fn new(in_size: u32, out_size: u32, keep: Range<u32>) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = 2.0 * filterscale;
        let inv_filterscale = 1.0 / filterscale;
        let (mut first, mut weights) = (Vec::new(), Vec::new());
        for xx in keep {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) truncates toward zero; so does `as`.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let k: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) * inv_filterscale))
                .collect();
            let ww: f64 = k.iter().fold(0.0, |s, w| s + w);
            let fixed = k
                .iter()
                .map(|&w| {
                    let w = if ww != 0.0 { w / ww } else { w };
                    let scaled = w * (1u32 << PRECISION_BITS) as f64;
                    if w < 0.0 {
                        (-0.5 + scaled) as i32
                    } else {
                        (0.5 + scaled) as i32
                    }
                })
                .collect();
            first.push(xmin as usize);
            weights.push(fixed);
        }
        Self { first, weights }
    }

    /// Source indices `[first, last)` any kept output reads.
    fn span(&self) -> Range<usize> {
        let last = self
            .first
            .iter()
            .zip(&self.weights)
            .map(|(f, w)| f + w.len())
            .max()
            .unwrap_or(0);
        self.first.first().copied().unwrap_or(0)..last
    }
}

/// Pillow's `clip8`: the rounded sum shifted down and clamped to a byte.
#[inline]
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pixel rows and columns kept from the resized image.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub rows: Range<u32>,
    pub cols: Range<u32>,
}

impl Window {
    /// The whole `w x h` image.
    pub fn all(w: u32, h: u32) -> Self {
        Self {
            rows: 0..h,
            cols: 0..w,
        }
    }
}

/// Resizes packed RGB `src` (`w x h`) to `out_w x out_h` as Pillow's BICUBIC does and returns
/// the `window` of the result as packed RGB.
pub fn resize_bicubic(
    src: &[u8],
    w: u32,
    h: u32,
    out_w: u32,
    out_h: u32,
    window: &Window,
) -> Vec<u8> {
    let whole = Part { x: 0, y: 0, w, h };
    resize_bicubic_part(src, &whole, w, h, out_w, out_h, window)
}

/// A rectangle of a larger image: `w x h` pixels from column `x`, row `y`.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

/// The source indices `0..in_size` that the output indices `keep` of an `in_size -> out_size`
/// resize read: what a caller must decode of the image.
pub fn source_span(in_size: u32, out_size: u32, keep: Range<u32>) -> Range<u32> {
    if in_size == out_size {
        return keep;
    }
    let span = Taps::new(in_size, out_size, keep).span();
    span.start as u32..span.end as u32
}

/// [`resize_bicubic`] of a `full_w x full_h` image of which `src` holds only `part` (at least
/// the source pixels the window reads: see [`source_span`]).
pub fn resize_bicubic_part(
    src: &[u8],
    part: &Part,
    full_w: u32,
    full_h: u32,
    out_w: u32,
    out_h: u32,
    window: &Window,
) -> Vec<u8> {
    let (w, h) = (full_w, full_h);
    debug_assert_eq!(src.len(), (part.w * part.h * 3) as usize);
    // Pillow skips a pass whose size does not change (with a = -0.5 the identity taps would give
    // the same bytes anyway).
    let horizontal = (out_w != w).then(|| Taps::new(w, out_w, window.cols.clone()));
    let vertical = (out_h != h).then(|| Taps::new(h, out_h, window.rows.clone()));
    let source = Plane {
        px: src,
        w: part.w as usize,
    };
    let (x0, y0) = (part.x as usize, part.y as usize);
    // Source indices relative to `part`. The kept output indices are source indices only on an
    // axis that is not resized (where the passes read them).
    let local = |r: &Range<usize>, o: usize| r.start - o..r.end - o;
    let (keep_rows, keep_cols) = (
        window.rows.start as usize..window.rows.end as usize,
        window.cols.start as usize..window.cols.end as usize,
    );
    let unresized_rows = || match vertical {
        None => local(&keep_rows, y0),
        Some(_) => 0..0,
    };
    let unresized_cols = || match horizontal {
        None => local(&keep_cols, x0),
        Some(_) => 0..0,
    };
    // Pillow 13 runs the vertical pass first when the height shrinks more than twice as much as
    // the width; the 8-bit intermediate rounds differently, so the order is part of the result.
    let vertical_first = h > out_h && (h as i64 - out_h as i64) > (w as i64 - out_w as i64) * 2;
    if horizontal.is_none() && vertical.is_none() {
        return copy_window(&source, local(&keep_rows, y0), local(&keep_cols, x0));
    }
    if vertical_first {
        // The kept output rows over the source columns the kept output columns read.
        let cols = span(&horizontal, &keep_cols);
        let mid = pass_vertical(
            &source,
            vertical.as_ref(),
            y0,
            unresized_rows(),
            local(&cols, x0),
        );
        let mid = Plane {
            px: &mid,
            w: cols.len(),
        };
        // Without horizontal taps `cols` is exactly the kept columns.
        pass_horizontal(
            &mid,
            horizontal.as_ref(),
            0..keep_rows.len(),
            0..keep_cols.len(),
            cols.start,
        )
    } else {
        // The kept output columns over the source rows the kept output rows read.
        let rows = span(&vertical, &keep_rows);
        let mid = pass_horizontal(
            &source,
            horizontal.as_ref(),
            local(&rows, y0),
            unresized_cols(),
            x0,
        );
        let mid = Plane {
            px: &mid,
            w: keep_cols.len(),
        };
        // Without vertical taps `rows` is exactly the kept rows.
        pass_vertical(
            &mid,
            vertical.as_ref(),
            rows.start,
            0..keep_rows.len(),
            0..keep_cols.len(),
        )
    }
}

/// Rows `rows`, columns `cols` of `src` as packed RGB (an axis that is not resized).
fn copy_window(src: &Plane, rows: Range<usize>, cols: Range<usize>) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * cols.len() * 3);
    for y in rows {
        out.extend_from_slice(&src.row(y)[cols.start * 3..cols.end * 3]);
    }
    out
}

/// Packed RGB rows of `w` pixels.
struct Plane<'a> {
    px: &'a [u8],
    w: usize,
}

impl Plane<'_> {
    fn row(&self, y: usize) -> &[u8] {
        &self.px[y * self.w * 3..(y + 1) * self.w * 3]
    }
}

/// Source indices an axis reads: the taps' span, or the kept range when the axis is not resized.
fn span(taps: &Option<Taps>, keep: &Range<usize>) -> Range<usize> {
    match taps {
        Some(t) => t.span(),
        None => keep.clone(),
    }
}

/// The horizontal pass over `rows` of `src`, whose column 0 is source column `col0`: each row's
/// kept output columns, or its columns `cols` when the width is not resized. Run as the vertical
/// pass on the transposed image, so that both passes are sums of whole contiguous rows (which
/// vectorise); integer sums, so the result is Pillow's whatever the order of the terms.
fn pass_horizontal(
    src: &Plane,
    taps: Option<&Taps>,
    rows: Range<usize>,
    cols: Range<usize>,
    col0: usize,
) -> Vec<u8> {
    let Some(taps) = taps else {
        return copy_window(src, rows, cols);
    };
    let span = taps.span();
    let n = rows.len();
    // One row per source column the taps read, each holding that column's `rows`.
    let columns = transpose(src, rows, span.start - col0..span.end - col0);
    let columns = Plane { px: &columns, w: n };
    let out_columns = pass_vertical(&columns, Some(taps), span.start, 0..0, 0..n);
    transpose(
        &Plane {
            px: &out_columns,
            w: n,
        },
        0..taps.first.len(),
        0..n,
    )
}

/// Rows `rows`, columns `cols` of `src`, transposed: one packed row per column.
fn transpose(src: &Plane, rows: Range<usize>, cols: Range<usize>) -> Vec<u8> {
    const BLOCK: usize = 32;
    let (h, w) = (rows.len(), cols.len());
    let mut out = vec![[0u8; 3]; h * w];
    // Blocks of 32 x 32 pixels keep both sides in cache; whole pixels are moved at once.
    for by in (0..h).step_by(BLOCK) {
        for bx in (0..w).step_by(BLOCK) {
            let bx_end = (bx + BLOCK).min(w);
            for y in by..(by + BLOCK).min(h) {
                let line =
                    &src.row(rows.start + y)[(cols.start + bx) * 3..(cols.start + bx_end) * 3];
                let (pixels, _) = line.as_chunks::<3>();
                for (column, px) in out[bx * h..].chunks_exact_mut(h).zip(pixels) {
                    column[y] = *px;
                }
            }
        }
    }
    out.into_flattened()
}

/// The vertical pass over columns `cols` of `src`, whose row 0 is source row `row0`: the kept
/// output rows, or its rows `rows` when the height is not resized.
fn pass_vertical(
    src: &Plane,
    taps: Option<&Taps>,
    row0: usize,
    rows: Range<usize>,
    cols: Range<usize>,
) -> Vec<u8> {
    let Some(taps) = taps else {
        return copy_window(src, rows, cols);
    };
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2.
        return unsafe { convolve_rows_avx2(src, taps, row0, cols) };
    }
    convolve_rows(src, taps, row0, cols)
}

/// Each kept output row as the weighted sum of its source rows, a whole row at a time (it
/// vectorises); integer sums, so the order of the terms does not matter.
#[inline(always)]
fn convolve_rows(src: &Plane, taps: &Taps, row0: usize, cols: Range<usize>) -> Vec<u8> {
    let stride = cols.len() * 3;
    let mut out = Vec::with_capacity(taps.first.len() * stride);
    let mut sums = vec![0i32; stride];
    for (first, k) in taps.first.iter().zip(&taps.weights) {
        sums.fill(1 << (PRECISION_BITS - 1));
        for (j, &weight) in k.iter().enumerate() {
            let row = &src.row(first - row0 + j)[cols.start * 3..cols.end * 3];
            for (s, &p) in sums.iter_mut().zip(row) {
                *s += p as i32 * weight;
            }
        }
        out.extend(sums.iter().map(|&s| clip8(s)));
    }
    out
}

/// [`convolve_rows`] compiled for AVX2 (8 lanes of 32-bit multiplies; the x86-64 baseline has
/// no 32-bit vector multiply), chosen at run time. The same sums either way.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn convolve_rows_avx2(src: &Plane, taps: &Taps, row0: usize, cols: Range<usize>) -> Vec<u8> {
    convolve_rows(src, taps, row0, cols)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_is_pillows_catmull_rom() {
        assert_eq!(bicubic(0.0), 1.0);
        assert_eq!(bicubic(1.0), 0.0);
        assert_eq!(bicubic(0.5), 0.5625);
        assert_eq!(bicubic(-1.5), -0.0625);
        assert_eq!(bicubic(2.0), 0.0);
    }

    /// The window of a resize equals that part of the whole resize, in both pass orders.
    fn check_window(w: u32, h: u32, ow: u32, oh: u32, window: Window) {
        let src: Vec<u8> = (0..w * h * 3).map(|i| (i * 97 % 251) as u8).collect();
        let whole = resize_bicubic(&src, w, h, ow, oh, &Window::all(ow, oh));
        assert_eq!(whole.len(), (ow * oh * 3) as usize);
        let part = resize_bicubic(&src, w, h, ow, oh, &window);
        let expected: Vec<u8> = window
            .rows
            .clone()
            .flat_map(|y| {
                whole[(y * ow + window.cols.start) as usize * 3
                    ..(y * ow + window.cols.end) as usize * 3]
                    .to_vec()
            })
            .collect();
        assert_eq!(part, expected, "{w}x{h} -> {ow}x{oh}, {window:?}");
    }

    #[test]
    fn a_window_equals_the_same_part_of_the_whole() {
        check_window(
            37,
            23,
            19,
            41,
            Window {
                rows: 5..30,
                cols: 3..17,
            },
        ); // horizontal first
        check_window(
            23,
            60,
            30,
            20,
            Window {
                rows: 2..19,
                cols: 4..25,
            },
        ); // vertical first
        check_window(
            40,
            60,
            40,
            20,
            Window {
                rows: 1..12,
                cols: 7..30,
            },
        ); // vertical only
        check_window(
            40,
            60,
            13,
            60,
            Window {
                rows: 9..50,
                cols: 2..11,
            },
        ); // horizontal only
        check_window(
            90,
            50,
            20,
            16,
            Window {
                rows: 4..12,
                cols: 3..15,
            },
        ); // downscale, horizontal first
        check_window(
            30,
            90,
            24,
            12,
            Window {
                rows: 5..11,
                cols: 6..20,
            },
        ); // downscale, vertical first
    }

    #[test]
    fn same_size_is_a_copy() {
        let src: Vec<u8> = (0..6 * 4 * 3).map(|i| (i * 13) as u8).collect();
        assert_eq!(resize_bicubic(&src, 6, 4, 6, 4, &Window::all(6, 4)), src);
    }
}
