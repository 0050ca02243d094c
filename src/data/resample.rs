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

/// Where every sum starts: one half, so that the shift rounds.
const ROUND: i32 = 1 << (PRECISION_BITS - 1);

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

/// Pillow's filter geometry for `in_size -> out_size`.
struct Axis {
    in_size: u32,
    scale: f64,
    filterscale: f64,
}

impl Axis {
    fn new(in_size: u32, out_size: u32) -> Self {
        let scale = in_size as f64 / out_size as f64;
        Self {
            in_size,
            scale,
            filterscale: scale.max(1.0),
        }
    }

    /// Output index `xx`'s filter centre and the source indices `xmin..xmax` it reads; both
    /// ends only grow with `xx`.
    fn window(&self, xx: u32) -> (f64, i64, i64) {
        let support = 2.0 * self.filterscale;
        let center = (xx as f64 + 0.5) * self.scale;
        // C's (int) truncates toward zero; so does `as`.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(self.in_size as i64);
        (center, xmin, xmax)
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
        let axis = Axis::new(in_size, out_size);
        let inv_filterscale = 1.0 / axis.filterscale;
        let (mut first, mut weights) = (Vec::new(), Vec::new());
        for xx in keep {
            let (center, xmin, xmax) = axis.window(xx);
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
    if in_size == out_size || keep.is_empty() {
        return keep;
    }
    // The windows only move right: the span runs from the first's start to the last's end.
    let axis = Axis::new(in_size, out_size);
    let (_, start, _) = axis.window(keep.start);
    let (_, _, end) = axis.window(keep.end - 1);
    start as u32..end as u32
}

/// [`resize_bicubic`] of a `full_w x full_h` image of which `src` holds only `part` (at least
/// the source pixels the window reads: see [`source_span`]). Long on purpose: Pillow's two-pass
/// kernel, kept in one piece so it can be read against `Resample.c`.
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
/// kept output columns, or its columns `cols` when the width is not resized.
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
    let taps = RowTaps::new(taps, col0);
    let stride = taps.first.len() * 3;
    let mut out = vec![0u8; rows.len() * stride];
    for (y, line) in rows.zip(out.chunks_exact_mut(stride)) {
        // The rest of the plane from this row on: the vector loads may read past the row's
        // end (with zero weights) but never past the plane's.
        taps.convolve(&src.px[y * src.w * 3..], line);
    }
    out
}

/// Horizontal taps with one tap count `k` for every output pixel (fewer taps padded with zero
/// weights), relative to the first source column of the plane they read.
struct RowTaps {
    first: Vec<usize>,
    k: usize,
    /// `k` weights per output pixel.
    weights: Vec<i32>,
    /// The same weights for the AVX2 kernel: per output pixel, `k.div_ceil(4)` groups of four
    /// taps, each as two 16-bit vectors (the weight's bits 11 and up, then its low 11 bits)
    /// laid out as [`QUAD_SHUFFLE`] lays out the pixels.
    #[cfg(target_arch = "x86_64")]
    quads: Vec<[[i16; 16]; 2]>,
}

impl RowTaps {
    fn new(taps: &Taps, col0: usize) -> Self {
        let k = taps.weights.iter().map(Vec::len).max().unwrap_or(0);
        let end = taps.span().end;
        let (mut first, mut weights) = (Vec::new(), Vec::new());
        for (&f, w) in taps.first.iter().zip(&taps.weights) {
            // Near the right edge the window moves left over zero weights, so that it stays
            // inside the span (the output with the most taps ends inside it, so it fits).
            let start = f.min(end - k);
            first.push(start - col0);
            let lead = f - start;
            weights.extend((0..k).map(|j| match j.checked_sub(lead) {
                Some(i) if i < w.len() => w[i],
                _ => 0,
            }));
        }
        #[cfg(target_arch = "x86_64")]
        let quads = weights
            .chunks(k.max(1))
            .flat_map(|w| w.chunks(4).map(quad_weights))
            .collect();
        Self {
            first,
            k,
            weights,
            #[cfg(target_arch = "x86_64")]
            quads,
        }
    }

    /// One row's output pixels into `out` from `row` (packed RGB from the row's first column on).
    fn convolve(&self, row: &[u8], out: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2.
            return unsafe { self.convolve_avx2(row, out) };
        }
        for (x, px) in out.chunks_exact_mut(3).enumerate() {
            px.copy_from_slice(&self.pixel(row, x));
        }
    }

    /// Output pixel `x`: Pillow's sums, rounded, shifted and clamped. Four lanes (the fourth
    /// unused), so that a CPU with 4 x 32-bit vectors (NEON, SSE4.1) does a tap in one
    /// multiply-add.
    #[inline(always)]
    fn pixel(&self, row: &[u8], x: usize) -> [u8; 3] {
        let src = &row[self.first[x] * 3..][..self.k * 3];
        let w = &self.weights[x * self.k..][..self.k];
        let mut sums = [ROUND; 4];
        for (p, &weight) in src.chunks_exact(3).zip(w) {
            let p = [p[0], p[1], p[2], 0];
            for c in 0..4 {
                sums[c] += p[c] as i32 * weight;
            }
        }
        [clip8(sums[0]), clip8(sums[1]), clip8(sums[2])]
    }

    /// [`convolve`](Self::convolve) with 16-bit multiply-adds: four taps of one output pixel
    /// per vector, each weight in two 16-bit parts ([`WEIGHT_LOW_BITS`]); four output pixels
    /// at a time, their sums shifted, clamped and packed together. The same integer sums as
    /// [`pixel`](Self::pixel), in another order.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn convolve_avx2(&self, row: &[u8], out: &mut [u8]) {
        use std::arch::x86_64::*;
        let quads = self.k.div_ceil(4);
        // Each group's load reads 16 bytes, 4 past its four pixels; the windows only move
        // right, so the pixels from the first whose loads would leave `row` are done one by one.
        let vector = self
            .first
            .partition_point(|&f| f * 3 + 12 * quads + 4 <= row.len());
        // Bytes 0..3 of each of four 4-byte pixels, packed.
        let pack = _mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1);
        let mut fours = out[..vector / 4 * 12].chunks_exact_mut(12);
        for (q, px) in fours.by_ref().enumerate() {
            // SAFETY: the four windows' loads lie inside `row` (`vector` above).
            let [a, b, c, d] = unsafe { self.sums_avx2(row, 4 * q) };
            let bytes = _mm_packus_epi16(_mm_packs_epi32(a, b), _mm_packs_epi32(c, d));
            let mut packed = [0u8; 16];
            // SAFETY: 16 bytes into a 16-byte array.
            unsafe { _mm_storeu_si128(packed.as_mut_ptr().cast(), _mm_shuffle_epi8(bytes, pack)) };
            px.copy_from_slice(&packed[..12]);
        }
        for (x, px) in out.chunks_exact_mut(3).enumerate().skip(vector / 4 * 4) {
            px.copy_from_slice(&self.pixel(row, x));
        }
    }

    /// The three channel sums of output pixels `x..x + 4`, rounded and shifted, in lanes 0..3
    /// of each (four at once, so that their multiplies overlap).
    ///
    /// # Safety
    /// AVX2; the loads (`first[x + i] * 3 + 12 * k.div_ceil(4) + 4` bytes) lie inside `row`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn sums_avx2(&self, row: &[u8], x: usize) -> [std::arch::x86_64::__m128i; 4] {
        use std::arch::x86_64::*;
        let quads = self.k.div_ceil(4);
        let base: [*const u8; 4] = std::array::from_fn(|i| row.as_ptr().add(self.first[x + i] * 3));
        let weights = &self.quads[x * quads..][..4 * quads];
        let shuffle = _mm256_loadu_si256(QUAD_SHUFFLE.as_ptr().cast());
        let mut high = [_mm256_setzero_si256(); 4];
        let mut low = [_mm256_setr_epi32(ROUND, ROUND, ROUND, 0, 0, 0, 0, 0); 4];
        for m in 0..quads {
            for i in 0..4 {
                let bytes = _mm_loadu_si128(base[i].add(12 * m).cast());
                let v = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(bytes), shuffle);
                let [wh, wl] = &weights[i * quads + m];
                let (wh, wl) = (
                    _mm256_loadu_si256(wh.as_ptr().cast()),
                    _mm256_loadu_si256(wl.as_ptr().cast()),
                );
                high[i] = _mm256_add_epi32(high[i], _mm256_madd_epi16(v, wh));
                low[i] = _mm256_add_epi32(low[i], _mm256_madd_epi16(v, wl));
            }
        }
        // The last two taps of each group (lanes 3..6) onto the first two.
        let second = _mm256_setr_epi32(3, 4, 5, 7, 7, 7, 7, 7);
        let mut sums = [_mm_setzero_si128(); 4];
        for ((s, h), l) in sums.iter_mut().zip(high).zip(low) {
            let a = _mm256_add_epi32(_mm256_slli_epi32::<WEIGHT_LOW_BITS>(h), l);
            let sum = _mm256_add_epi32(a, _mm256_permutevar8x32_epi32(a, second));
            *s = _mm_srai_epi32::<{ PRECISION_BITS as i32 }>(_mm256_castsi256_si128(sum));
        }
        sums
    }
}

/// How the AVX2 kernel lays out four packed RGB pixels (12 of 16 bytes loaded into both
/// halves of a vector) as 16-bit lanes, channel by channel in pairs of taps, so that a
/// multiply-add of pairs gives 32-bit lanes `[r01, g01, b01, r23, g23, b23, 0, 0]`
/// (`r01`: red of taps 0 and 1). -1 gives a zero byte.
#[cfg(target_arch = "x86_64")]
const QUAD_SHUFFLE: [i8; 32] = [
    0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, 6, -1, 9, -1, // r0 r1 g0 g1 b0 b1 r2 r3
    7, -1, 10, -1, 8, -1, 11, -1, -1, -1, -1, -1, -1, -1, -1, -1, // g2 g3 b2 b3 0 0 0 0
];

/// Low bits of a weight in the second 16-bit part. A weight `w` (a normalised coefficient,
/// under 2^23 in magnitude) is `(w >> 11) * 2^11 + (w & 0x7ff)`: both parts fit 16 bits, so
/// every multiply-add is exact, and the parts' 32-bit sums, combined with wrapping arithmetic
/// (a ring modulo 2^32), give Pillow's sum exactly, which fits 32 bits.
#[cfg(target_arch = "x86_64")]
const WEIGHT_LOW_BITS: i32 = 11;

/// Up to four taps' weights as [`QUAD_SHUFFLE`] lays out their pixels: high parts, low parts.
#[cfg(target_arch = "x86_64")]
fn quad_weights(w: &[i32]) -> [[i16; 16]; 2] {
    let tap = |j: usize| w.get(j).copied().unwrap_or(0);
    let order = [0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3];
    let part = |f: fn(i32) -> i16| {
        let mut lanes = [0i16; 16];
        for (lane, &j) in lanes.iter_mut().zip(&order) {
            *lane = f(tap(j));
        }
        lanes
    };
    [
        part(|w| (w >> WEIGHT_LOW_BITS) as i16),
        part(|w| (w & ((1 << WEIGHT_LOW_BITS) - 1)) as i16),
    ]
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
        sums.fill(ROUND);
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

    /// RowTaps (equal tap counts, windows moved left at the right edge, the AVX2 kernel where
    /// the CPU has one, the one-by-one pixels where its loads would leave the row) against
    /// Pillow's sums written straight from the taps.
    #[test]
    fn row_taps_equal_the_direct_sums() {
        let cases = [
            (1024, 448, 56..392), // CLIP 336 on a 1024 x 768 photo
            (37, 19, 3..17),
            (13, 300, 0..300),   // upscaling: four taps
            (4000, 336, 0..336), // 48 taps
            (5, 2, 0..2),
            (2, 7, 0..7),
            (640, 336, 0..336),
        ];
        for (in_w, out_w, keep) in cases {
            // Extremes next to each other, so that sums overshoot and get clamped.
            let src: Vec<u8> = (0..in_w * 3)
                .map(|i| match i % 7 {
                    0 | 3 => 255,
                    1 => 0,
                    _ => (i * i * 7 + 13) as u8,
                })
                .collect();
            let taps = Taps::new(in_w as u32, out_w, keep.clone());
            let expected: Vec<u8> = taps
                .first
                .iter()
                .zip(&taps.weights)
                .flat_map(|(f, w)| {
                    let sum = |c: usize| {
                        w.iter()
                            .enumerate()
                            .fold(ROUND, |s, (j, &wt)| s + src[(f + j) * 3 + c] as i32 * wt)
                    };
                    [0, 1, 2].map(|c| clip8(sum(c)))
                })
                .collect();
            let span = taps.span();
            let row_taps = RowTaps::new(&taps, span.start);
            // Exactly the span (no bytes after it to read) and the span with the rest after it.
            for row in [&src[span.start * 3..span.end * 3], &src[span.start * 3..]] {
                let mut out = vec![0; expected.len()];
                row_taps.convolve(row, &mut out);
                assert_eq!(out, expected, "{in_w} -> {out_w}, {keep:?}");
                let one_by_one: Vec<u8> = (0..keep.len())
                    .flat_map(|x| row_taps.pixel(row, x))
                    .collect();
                assert_eq!(one_by_one, expected, "{in_w} -> {out_w}, {keep:?}");
            }
        }
    }

    /// The span from the first and last windows equals the span of all the taps.
    #[test]
    fn source_spans_are_the_taps_spans() {
        for (in_size, out_size, keep) in [
            (1024, 448, 56..392),
            (37, 19, 3..17),
            (13, 300, 0..300),
            (4000, 336, 10..20),
            (5, 2, 1..2),
        ] {
            let taps = Taps::new(in_size, out_size, keep.clone()).span();
            let span = source_span(in_size, out_size, keep);
            assert_eq!(span, taps.start as u32..taps.end as u32);
        }
    }

    #[test]
    fn same_size_is_a_copy() {
        let src: Vec<u8> = (0..6 * 4 * 3).map(|i| (i * 13) as u8).collect();
        assert_eq!(resize_bicubic(&src, 6, 4, 6, 4, &Window::all(6, 4)), src);
    }
}
