//! Packed RGB bytes to float channel planes through a table of the 256 levels of each channel.
//! The table holds the preprocessing's arithmetic (rescale, normalise), so every path through
//! it gives exactly those values.

/// Each channel's 256 levels as floats.
pub struct Levels([[f32; 256]; 3]);

impl Levels {
    /// The table of `value(level)` (the three channels' floats for one 8-bit level).
    pub fn new(value: impl Fn(u8) -> [f32; 3]) -> Self {
        let mut table = [[0.0; 256]; 3];
        for level in 0..=255u8 {
            for (c, v) in value(level).into_iter().enumerate() {
                table[c][level as usize] = v;
            }
        }
        Self(table)
    }

    /// Level `level` of channel `c`.
    pub fn get(&self, c: usize, level: u8) -> f32 {
        self.0[c][level as usize]
    }

    /// One row: pixel `i` of `rgb` (packed RGB) into `r[i]`, `g[i]`, `b[i]`.
    pub fn row(&self, rgb: &[u8], r: &mut [f32], g: &mut [f32], b: &mut [f32]) {
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2.
            done = unsafe { self.row_avx2(rgb, r, g, b) };
        }
        let pixels = rgb[done * 3..].chunks_exact(3);
        for (((px, r), g), b) in pixels
            .zip(&mut r[done..])
            .zip(&mut g[done..])
            .zip(&mut b[done..])
        {
            *r = self.get(0, px[0]);
            *g = self.get(1, px[1]);
            *b = self.get(2, px[2]);
        }
    }

    /// [`row`](Self::row) eight pixels at a time (two overlapping 16-byte loads per 24 bytes,
    /// each channel's bytes picked out by shuffles, its eight levels looked up by one gather);
    /// returns how many pixels it did.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn row_avx2(&self, rgb: &[u8], r: &mut [f32], g: &mut [f32], b: &mut [f32]) -> usize {
        use std::arch::x86_64::*;
        let n = (rgb.len() / 3).min(r.len()).min(g.len()).min(b.len()) / 8 * 8;
        // SAFETY: 16 bytes from each 16-byte array.
        let picks = CHANNEL_BYTES.map(|[first, second]| unsafe {
            (
                _mm_loadu_si128(first.as_ptr().cast()),
                _mm_loadu_si128(second.as_ptr().cast()),
            )
        });
        let planes = [r.as_mut_ptr(), g.as_mut_ptr(), b.as_mut_ptr()];
        for i in (0..n).step_by(8) {
            // SAFETY: pixels i..i + 8 are bytes 3i..3i + 24 of `rgb` and floats i..i + 8 of
            // each plane (`n` above); the table has 256 entries per channel, indexed by bytes.
            unsafe {
                let lo = _mm_loadu_si128(rgb.as_ptr().add(3 * i).cast());
                let hi = _mm_loadu_si128(rgb.as_ptr().add(3 * i + 8).cast());
                for c in 0..3 {
                    let (first, second) = picks[c];
                    let bytes =
                        _mm_or_si128(_mm_shuffle_epi8(lo, first), _mm_shuffle_epi8(hi, second));
                    let levels = _mm256_cvtepu8_epi32(bytes);
                    let values = _mm256_i32gather_ps::<4>(self.0[c].as_ptr(), levels);
                    _mm256_storeu_ps(planes[c].add(i), values);
                }
            }
        }
        n
    }
}

/// Shuffles picking channel `c`'s bytes of eight packed RGB pixels: from bytes 0..16 (the
/// first load) those there, from bytes 8..24 (the second) the rest; -1 gives a zero byte.
#[cfg(target_arch = "x86_64")]
const CHANNEL_BYTES: [[[i8; 16]; 2]; 3] = {
    let mut picks = [[[-1i8; 16]; 2]; 3];
    let mut c = 0;
    while c < 3 {
        let mut p = 0;
        while p < 8 {
            let at = 3 * p + c;
            if at < 16 {
                picks[c][0][p] = at as i8;
            } else {
                picks[c][1][p] = (at - 8) as i8;
            }
            p += 1;
        }
        c += 1;
    }
    picks
};

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector rows (where the CPU has AVX2) equal the table looked up pixel by pixel, for
    /// rows of every length around the vector width.
    #[test]
    fn a_row_is_the_table_looked_up() {
        let levels = Levels::new(|v| [v as f32, v as f32 * 0.5 - 3.0, -(v as f32)]);
        for n in 0..40 {
            let rgb: Vec<u8> = (0..n * 3).map(|i| (i * 89 + 7) as u8).collect();
            let mut planes = vec![vec![f32::NAN; n]; 3];
            let [r, g, b] = &mut planes[..] else {
                unreachable!()
            };
            levels.row(&rgb, r, g, b);
            for (i, px) in rgb.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    assert_eq!(planes[c][i], levels.get(c, px[c]), "{n} pixels, pixel {i}");
                }
            }
        }
    }
}
