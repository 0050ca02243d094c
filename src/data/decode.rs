//! Image files to 8-bit RGB exactly as `PIL.Image.open(f)` followed by transformers'
//! `convert_to_rgb` gives them (the start of `CLIPImageProcessor`'s PIL path):
//!
//! - JPEG by libjpeg-turbo (the decoder in Pillow's wheels) with Pillow's settings: islow IDCT,
//!   fancy upsampling, libjpeg's own colour conversion; CMYK and YCCK files as Pillow reads them
//!   (Adobe-inverted CMYK, then Pillow's `cmyk2rgb`); libjpeg warnings tolerated as Pillow does.
//! - PNG and WebP by the `image` crate (lossless formats decode to the same samples); 16-bit
//!   samples keep their high byte, as Pillow's PNG reader does for RGB(A).
//! - Alpha (an alpha channel or a PNG `tRNS` colour) composited onto white with Pillow's
//!   `alpha_composite` integer arithmetic, as transformers does before dropping it.
//!
//! The one deliberate difference: 16-bit greyscale PNGs. PIL opens them as mode `I;16` and its
//! RGB conversion clips every sample above 255 to white, destroying the image; here they keep
//! their high byte like 16-bit RGB (docs/models.md, "Preprocessing").
//!
//! Every decode is bounded: dimensions are read from the header first and an image of more than
//! [`MAX_PIXELS`] pixels (PIL's own decompression-bomb limit) is refused before any allocation.

use anyhow::{bail, Result};
use image::{DynamicImage, ImageBuffer, Rgb, RgbImage};
use std::ffi::CStr;
use std::io::Cursor;
use std::ops::Range;
use turbojpeg_sys as tj;

/// Pillow refuses images over `2 * Image.MAX_IMAGE_PIXELS` (a `DecompressionBombError`); so
/// do we, before decoding.
pub const MAX_PIXELS: u64 = 2 * 89_478_485;

/// Bytes refused as a whole, as opposed to an image that is damaged: the service answers these
/// with their own HTTP statuses (415 Unsupported Media Type, 413 Payload Too Large).
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("not a JPEG, PNG or WebP file (unrecognised signature)")]
    NotAnImage,
    #[error("{0:?} images are not supported: convert it to JPEG, PNG or WebP first (streetclip decodes those exactly as PIL does)")]
    Unsupported(image::ImageFormat),
    #[error("image of {w}x{h} = {} pixels is over the limit of {MAX_PIXELS} (PIL's decompression-bomb limit); downscale it first", w * h)]
    TooManyPixels { w: u64, h: u64 },
}

/// Decodes an image file's bytes to RGB as PIL + transformers' `convert_to_rgb` do.
pub fn decode(bytes: &[u8]) -> Result<RgbImage> {
    if bytes.starts_with(&[0xFF, 0xD8]) {
        return decode_jpeg(bytes, None).map(|r| r.image);
    }
    let reader = image::ImageReader::new(Cursor::new(bytes)).with_guessed_format()?;
    let Some(format) = reader.format() else {
        return Err(Refused::NotAnImage.into());
    };
    if !matches!(format, image::ImageFormat::Png | image::ImageFormat::WebP) {
        return Err(Refused::Unsupported(format).into());
    }
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    reader.no_limits(); // the size is checked below; the crate's default would refuse > 512 MiB
    let decoder = reader.into_decoder()?;
    let (w, h) = image::ImageDecoder::dimensions(&decoder);
    check_size(w as u64, h as u64)?;
    Ok(to_rgb(DynamicImage::from_decoder(decoder)?))
}

fn check_size(w: u64, h: u64) -> Result<()> {
    if w == 0 || h == 0 {
        bail!("empty image ({w}x{h})");
    }
    if w * h > MAX_PIXELS {
        return Err(Refused::TooManyPixels { w, h }.into());
    }
    Ok(())
}

/// An end-of-image marker after the last start-of-scan marker. Entropy-coded data stuffs every
/// 0xFF byte, so neither marker can occur inside it; an EXIF thumbnail's markers come earlier.
/// Searched from the ends (the last EOI is near the end of the file, the first SOS near its
/// start), so a whole photo is not scanned.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    const SOS: [u8; 2] = [0xFF, 0xDA];
    let Some(eoi) = bytes.windows(2).rposition(|w| w == [0xFF, 0xD9]) else {
        return false;
    };
    let sos_before = bytes[..eoi].windows(2).any(|w| w == SOS);
    let sos_after = bytes[eoi..].windows(2).any(|w| w == SOS);
    sos_before && !sos_after
}

/// A TurboJPEG decompressor, destroyed on drop.
struct Decompressor(tj::tjhandle);

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init and is destroyed once.
        unsafe { tj::tj3Destroy(self.0) }
    }
}

impl Decompressor {
    fn new() -> Result<Self> {
        // SAFETY: plain constructor; null on failure.
        let handle = unsafe { tj::tj3Init(tj::TJINIT_TJINIT_DECOMPRESS as i32) };
        if handle.is_null() {
            bail!("cannot initialise libjpeg-turbo");
        }
        Ok(Self(handle))
    }

    fn error(&self) -> String {
        // SAFETY: the handle is valid; the string is owned by it and copied here.
        unsafe { CStr::from_ptr(tj::tj3GetErrorStr(self.0)) }
            .to_string_lossy()
            .into_owned()
    }

    /// `(width, height, colorspace)` from the header.
    fn header(&mut self, jpeg: &[u8]) -> Result<(usize, usize, i32)> {
        // SAFETY: pointer and length describe `jpeg`.
        if unsafe { tj::tj3DecompressHeader(self.0, jpeg.as_ptr(), jpeg.len() as _) } != 0 {
            bail!("invalid JPEG header: {}", self.error());
        }
        // SAFETY: valid handle, known parameter ids.
        let get = |p| unsafe { tj::tj3Get(self.0, p as i32) };
        let (w, h) = (
            get(tj::TJPARAM_TJPARAM_JPEGWIDTH),
            get(tj::TJPARAM_TJPARAM_JPEGHEIGHT),
        );
        let colorspace = get(tj::TJPARAM_TJPARAM_COLORSPACE);
        check_size(w.max(0) as u64, h.max(0) as u64)?;
        Ok((w as usize, h as usize, colorspace))
    }

    /// Decodes into `channels` bytes per pixel of `format`. A warning (libjpeg's "corrupt data:
    /// extraneous bytes" and the like) still yields the image, as in Pillow.
    fn decompress(
        &mut self,
        jpeg: &[u8],
        w: usize,
        h: usize,
        format: i32,
        channels: usize,
    ) -> Result<Vec<u8>> {
        let mut out = vec![0u8; w * h * channels];
        // SAFETY: `out` holds h rows of w * channels bytes, the pitch given.
        let rc = unsafe {
            tj::tj3Decompress8(
                self.0,
                jpeg.as_ptr(),
                jpeg.len() as _,
                out.as_mut_ptr(),
                (w * channels) as i32,
                format,
            )
        };
        // SAFETY: valid handle.
        if rc != 0 && unsafe { tj::tj3GetErrorCode(self.0) } == tj::TJERR_TJERR_FATAL as i32 {
            bail!("corrupt JPEG: {}", self.error());
        }
        Ok(out)
    }
}

/// A decoded part of an image: `image` holds the pixels from column `x`, row `y` of the whole
/// `full_w x full_h` image.
pub struct Region {
    pub image: RgbImage,
    pub x: u32,
    pub y: u32,
    pub full_w: u32,
    pub full_h: u32,
}

/// Decodes at least the columns and rows `wanted(width, height)` names: a JPEG only about
/// them (libjpeg-turbo skips the IDCT, upsampling and colour conversion of the rest, and the
/// pixels are those of a whole decode), any other image whole. Same checks as [`decode`].
pub fn decode_region(
    bytes: &[u8],
    wanted: impl Fn(u32, u32) -> Result<(Range<u32>, Range<u32>)>,
) -> Result<Region> {
    if bytes.starts_with(&[0xFF, 0xD8]) {
        return decode_jpeg(bytes, Some(&wanted));
    }
    let image = decode(bytes)?;
    let (full_w, full_h) = image.dimensions();
    Ok(Region {
        image,
        x: 0,
        y: 0,
        full_w,
        full_h,
    })
}

/// The rectangle to decode for `cols` x `rows` of a `w x h` JPEG with subsampling `subsamp`:
/// widened by one iMCU on every side (libjpeg-turbo's fancy upsampling treats a cropped
/// region's left and right edges as the image's, so the outermost columns may differ from a
/// whole decode), the left edge on an iMCU boundary as libjpeg-turbo requires. `None` when
/// that is the whole image or the subsampling is unknown.
fn crop_rect(
    w: u32,
    h: u32,
    subsamp: i32,
    cols: Range<u32>,
    rows: Range<u32>,
) -> Option<tj::tjregion> {
    // turbojpeg.h's tjMCUWidth / tjMCUHeight (header-only tables) by TJSAMP value.
    const MCU: [(u32, u32); 7] = [(8, 8), (16, 8), (16, 16), (8, 8), (8, 16), (32, 8), (8, 32)];
    let (mw, mh) = *MCU.get(usize::try_from(subsamp).ok()?)?;
    let x0 = cols.start.saturating_sub(mw) / mw * mw;
    let x1 = (cols.end + mw).min(w);
    let y0 = rows.start.saturating_sub(mh);
    let y1 = (rows.end + mh).min(h);
    if (x0, y0, x1, y1) == (0, 0, w, h) || x1 <= x0 || y1 <= y0 {
        return None;
    }
    Some(tj::tjregion {
        x: x0 as i32,
        y: y0 as i32,
        w: (x1 - x0) as i32,
        h: (y1 - y0) as i32,
    })
}

type Wanted<'a> = &'a dyn Fn(u32, u32) -> Result<(Range<u32>, Range<u32>)>;

fn decode_jpeg(jpeg: &[u8], wanted: Option<Wanted>) -> Result<Region> {
    // PIL refuses a JPEG cut short ("image file is truncated"); libjpeg would only warn.
    if !jpeg_is_complete(jpeg) {
        bail!("JPEG data ends before its end-of-image marker (truncated file)");
    }
    let mut d = Decompressor::new()?;
    let (full_w, full_h, colorspace) = d.header(jpeg)?;
    let crop = match wanted {
        Some(f) => {
            let (cols, rows) = f(full_w as u32, full_h as u32)?;
            // SAFETY: valid handle, known parameter id.
            let subsamp = unsafe { tj::tj3Get(d.0, tj::TJPARAM_TJPARAM_SUBSAMP as i32) };
            crop_rect(full_w as u32, full_h as u32, subsamp, cols, rows)
        }
        None => None,
    };
    // SAFETY: valid handle; the region lies inside the image, its left edge on an iMCU
    // boundary (checked again by libjpeg-turbo, which refuses to crop some kinds of JPEG, such
    // as lossless ones: those are decoded whole, as before).
    let cropped = crop.filter(|&r| unsafe { tj::tj3SetCroppingRegion(d.0, r) } == 0);
    let (x, y, w, h) = match cropped {
        Some(r) => (r.x as usize, r.y as usize, r.w as usize, r.h as usize),
        None => (0, 0, full_w, full_h),
    };
    let rgb = match colorspace as u32 {
        tj::TJCS_TJCS_GRAY => {
            let gray = d.decompress(jpeg, w, h, tj::TJPF_TJPF_GRAY, 1)?;
            gray.iter().flat_map(|&l| [l; 3]).collect()
        }
        tj::TJCS_TJCS_CMYK | tj::TJCS_TJCS_YCCK => {
            let cmyk = d.decompress(jpeg, w, h, tj::TJPF_TJPF_CMYK, 4)?;
            cmyk.chunks_exact(4)
                .flat_map(inverted_cmyk_to_rgb)
                .collect()
        }
        _ => d.decompress(jpeg, w, h, tj::TJPF_TJPF_RGB, 3)?,
    };
    Ok(Region {
        image: RgbImage::from_raw(w as u32, h as u32, rgb).expect("w * h * 3 bytes"),
        x: x as u32,
        y: y as u32,
        full_w: full_w as u32,
        full_h: full_h as u32,
    })
}

/// Pillow's `MULDIV255`: `a * b / 255`, rounded, in integers.
fn muldiv255(a: u32, b: u32) -> u32 {
    let t = a * b + 128;
    ((t >> 8) + t) >> 8
}

/// Pillow reads every CMYK JPEG with Adobe's inverted polarity (raw mode `CMYK;I`) and converts
/// to RGB with `cmyk2rgb`: `255 - k` scaled by `255 - c`, in integers.
fn inverted_cmyk_to_rgb(px: &[u8]) -> [u8; 3] {
    let [c, m, y, k] = [px[0], px[1], px[2], px[3]].map(|v| 255 - v as u32);
    let nk = 255 - k;
    [c, m, y].map(|v| (nk - muldiv255(v, nk)) as u8)
}

/// Pillow's `alpha_composite` of one pixel over opaque white (7 fraction bits, rounded).
fn over_white(rgb: [u16; 3], a: u16) -> [u8; 3] {
    if a == 0 {
        return [255; 3];
    }
    let a = a as u32;
    let coef1 = a * 255 * 255 * 128 / (255 * 255);
    let coef2 = 255 * 128 - coef1;
    rgb.map(|c| {
        let t = c as u32 * coef1 + 255 * coef2 + (0x80 << 7);
        ((((t >> 8) + t) >> 8) >> 7) as u8
    })
}

/// PIL's RGB conversion of a decoded PNG/WebP, with transformers' white background for alpha.
fn to_rgb(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let from_pixels = |px: Vec<u8>| -> RgbImage {
        ImageBuffer::<Rgb<u8>, _>::from_raw(w, h, px).expect("w * h * 3 bytes")
    };
    let hi = |v: u16| (v >> 8) as u8;
    match img {
        DynamicImage::ImageRgb8(i) => i,
        DynamicImage::ImageLuma8(i) => {
            from_pixels(i.into_raw().iter().flat_map(|&l| [l; 3]).collect())
        }
        DynamicImage::ImageLumaA8(i) => from_pixels(
            i.pixels()
                .flat_map(|p| over_white([p[0] as u16; 3], p[1] as u16))
                .collect(),
        ),
        DynamicImage::ImageRgba8(i) => from_pixels(
            i.pixels()
                .flat_map(|p| over_white([p[0], p[1], p[2]].map(u16::from), p[3] as u16))
                .collect(),
        ),
        DynamicImage::ImageRgb16(i) => from_pixels(i.into_raw().iter().map(|&v| hi(v)).collect()),
        DynamicImage::ImageLuma16(i) => {
            from_pixels(i.into_raw().iter().flat_map(|&v| [hi(v); 3]).collect())
        }
        DynamicImage::ImageLumaA16(i) => from_pixels(
            i.pixels()
                .flat_map(|p| over_white([hi(p[0]) as u16; 3], hi(p[1]) as u16))
                .collect(),
        ),
        DynamicImage::ImageRgba16(i) => from_pixels(
            i.pixels()
                .flat_map(|p| over_white([p[0], p[1], p[2]].map(|v| hi(v) as u16), hi(p[3]) as u16))
                .collect(),
        ),
        other => other.into_rgb8(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_rects_keep_an_imcu_of_margin_and_start_on_an_imcu() {
        let r = |x, y, w, h| Some((x, y, w, h));
        let got = |subsamp, cols, rows| {
            crop_rect(1024, 768, subsamp, cols, rows).map(|t| (t.x, t.y, t.w, t.h))
        };
        // 4:2:0 (16 x 16 iMCUs): columns 122..902 of every row.
        assert_eq!(got(2, 122..902, 0..768), r(96, 0, 822, 768));
        // 4:4:4 (8 x 8): rows too.
        assert_eq!(got(0, 130..900, 100..700), r(120, 92, 788, 616));
        // Everything, or an unknown subsampling: decode whole.
        assert_eq!(got(2, 10..1020, 0..768), None);
        assert_eq!(got(-1, 122..902, 0..768), None);
    }

    #[test]
    fn compositing_matches_pillows_integer_formula() {
        assert_eq!(over_white([10, 20, 30], 255), [10, 20, 30]);
        assert_eq!(over_white([0, 0, 0], 0), [255, 255, 255]);
        // Pillow: Image.alpha_composite(white, (0, 100, 200, 128)) -> (127, 177, 227)
        assert_eq!(over_white([0, 100, 200], 128), [127, 177, 227]);
    }

    #[test]
    fn cmyk_follows_pillow() {
        // Stored inverted: c=m=y=0 (stored 255), k=0 (stored 255) is white.
        assert_eq!(inverted_cmyk_to_rgb(&[255, 255, 255, 255]), [255, 255, 255]);
        assert_eq!(inverted_cmyk_to_rgb(&[255, 255, 255, 0]), [0, 0, 0]);
    }

    #[test]
    fn oversized_and_empty_images_are_refused_before_decoding() {
        assert!(check_size(20_000, 20_000)
            .unwrap_err()
            .to_string()
            .contains("over the limit"));
        assert!(check_size(0, 5).unwrap_err().to_string().contains("empty"));
        assert!(check_size(60_000, 1).is_ok());
    }
}
