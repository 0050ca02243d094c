//! Image preprocessing defined as transformers' `CLIPImageProcessor` (the PIL backend): RGB,
//! resize the shortest edge (bicubic), center crop, rescale, normalize, CHW float32.
//!
//! Decoding is the `image` crate's and resizing is `fast_image_resize`'s Catmull-Rom
//! convolution (PIL's bicubic kernel). Both differ from PIL by rounding only; the measured
//! difference on real photographs is documented in the README and held by a test.

use anyhow::{bail, Context, Result};
use fast_image_resize as fr;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ShortestEdge {
    pub shortest_edge: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CropSize {
    pub height: u32,
    pub width: u32,
}

/// The fields of `preprocessor_config.json` that define the computation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PreprocessConfig {
    pub do_convert_rgb: bool,
    pub do_resize: bool,
    pub size: ShortestEdge,
    /// PIL resample code; only 3 (bicubic) is supported, as every CLIP checkpoint uses.
    pub resample: u32,
    pub do_center_crop: bool,
    pub crop_size: CropSize,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
}

impl Default for PreprocessConfig {
    /// OpenAI CLIP at 224 px (`openai/clip-vit-base-patch32`'s preprocessor config).
    fn default() -> Self {
        Self::for_size(224)
    }
}

pub const PREPROCESSOR_FILE: &str = "preprocessor_config.json";
pub const PROCESSOR_FILE: &str = "processor_config.json";

impl PreprocessConfig {
    /// OpenAI's settings for a square input of `size` pixels.
    pub fn for_size(size: u32) -> Self {
        Self {
            do_convert_rgb: true,
            do_resize: true,
            size: ShortestEdge {
                shortest_edge: size,
            },
            resample: 3,
            do_center_crop: true,
            crop_size: CropSize {
                height: size,
                width: size,
            },
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            image_std: [0.268_629_54, 0.261_302_58, 0.275_777_1],
        }
    }

    /// `preprocessor_config.json` (older checkpoints) or `processor_config.json`'s
    /// `image_processor` (transformers v5), else OpenAI's settings for `image_size`.
    pub fn from_dir(dir: &Path, image_size: u32) -> Result<Self> {
        for name in [PREPROCESSOR_FILE, PROCESSOR_FILE] {
            let path = dir.join(name);
            if !path.is_file() {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let mut json: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", path.display()))?;
            if let Some(inner) = json.get_mut("image_processor") {
                json = inner.take();
            }
            let cfg: Self = serde_json::from_value(json).with_context(|| {
                format!("{}: unexpected image processor fields", path.display())
            })?;
            cfg.validate()
                .with_context(|| format!("unsupported image processor in {}", path.display()))?;
            return Ok(cfg);
        }
        Ok(Self::for_size(image_size))
    }

    fn validate(&self) -> Result<()> {
        if self.do_resize && self.resample != 3 {
            bail!(
                "resample {} (only 3, bicubic, is implemented)",
                self.resample
            );
        }
        if self.do_resize
            && self.do_center_crop
            && (self.crop_size.height > self.size.shortest_edge
                || self.crop_size.width > self.size.shortest_edge)
        {
            bail!(
                "crop_size {:?} is larger than the resized shortest edge {}",
                self.crop_size,
                self.size.shortest_edge
            );
        }
        Ok(())
    }

    /// The `[3, H, W]` output size.
    pub fn output_size(&self) -> (u32, u32) {
        (self.crop_size.height, self.crop_size.width)
    }

    /// Reads and preprocesses one image file into CHW float32.
    pub fn load(&self, path: &Path) -> Result<Vec<f32>> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read image {}", path.display()))?;
        let img = decode(&bytes).with_context(|| {
            format!(
                "cannot decode image {} (corrupt, truncated or not an image)",
                path.display()
            )
        })?;
        self.apply(img)
            .with_context(|| format!("cannot preprocess image {}", path.display()))
    }

    /// Preprocesses a decoded image into CHW float32.
    pub fn apply(&self, img: image::DynamicImage) -> Result<Vec<f32>> {
        // PIL's convert("RGB") drops alpha without compositing; so does into_rgb8 (which does
        // not copy an image that is RGB already, as JPEGs are).
        let rgb = img.into_rgb8();
        let (w, h) = rgb.dimensions();
        if w == 0 || h == 0 {
            bail!("empty image ({w}x{h})");
        }
        let (rw, rh, resized) = if self.do_resize {
            let (rw, rh) = shortest_edge_size(w, h, self.size.shortest_edge);
            (rw, rh, resize_bicubic(rgb.into_raw(), w, h, rw, rh)?)
        } else {
            (w, h, rgb.into_raw())
        };
        let (ch, cw, top, left) = if self.do_center_crop {
            let (ch, cw) = (self.crop_size.height, self.crop_size.width);
            if ch > rh || cw > rw {
                bail!("image of {rw}x{rh} after resizing is smaller than the {cw}x{ch} crop");
            }
            (ch, cw, (rh - ch) / 2, (rw - cw) / 2)
        } else {
            (rh, rw, 0, 0)
        };
        Ok(self.to_chw(&resized, rw, ch, cw, top, left))
    }

    /// Training augmentation: a random crop of `scale` (fraction of the area, aspect ratio
    /// 3/4..4/3 as torchvision's RandomResizedCrop) resized to the output size.
    pub fn apply_random_crop(
        &self,
        img: &image::DynamicImage,
        scale: [f64; 2],
        rng: &mut impl rand::Rng,
    ) -> Result<Vec<f32>> {
        use rand::RngExt;
        let rgb = img.to_rgb8();
        let (w, h) = rgb.dimensions();
        let area = (w as f64) * (h as f64) * rng.random_range(scale[0]..=scale[1]);
        let ratio = rng
            .random_range((3.0f64 / 4.0).ln()..=(4.0f64 / 3.0).ln())
            .exp();
        let cw = ((area * ratio).sqrt().round() as u32).clamp(1, w);
        let ch = ((area / ratio).sqrt().round() as u32).clamp(1, h);
        let (left, top) = (rng.random_range(0..=w - cw), rng.random_range(0..=h - ch));
        let crop = image::imageops::crop_imm(&rgb, left, top, cw, ch).to_image();
        let (oh, ow) = self.output_size();
        let resized = resize_bicubic(crop.into_raw(), cw, ch, ow, oh)?;
        Ok(self.to_chw(&resized, ow, oh, ow, 0, 0))
    }

    /// Mirrors preprocessed CHW pixels left to right.
    pub fn hflip(&self, chw: &mut [f32]) {
        let (_, w) = self.output_size();
        for row in chw.chunks_mut(w as usize) {
            row.reverse();
        }
    }

    /// Crop, rescale and normalize in one pass, with transformers' arithmetic: rescale in f64
    /// then cast to f32, normalize in f32.
    fn to_chw(&self, rgb: &[u8], stride_w: u32, ch: u32, cw: u32, top: u32, left: u32) -> Vec<f32> {
        let plane = (ch * cw) as usize;
        let mut out = vec![0f32; 3 * plane];
        let lut: Vec<[f32; 3]> = (0..256)
            .map(|v| {
                let x = if self.do_rescale {
                    (v as f64 * self.rescale_factor) as f32
                } else {
                    v as f32
                };
                std::array::from_fn(|c| {
                    if self.do_normalize {
                        (x - self.image_mean[c]) / self.image_std[c]
                    } else {
                        x
                    }
                })
            })
            .collect();
        for y in 0..ch as usize {
            let row = ((top as usize + y) * stride_w as usize + left as usize) * 3;
            for x in 0..cw as usize {
                let px = &rgb[row + 3 * x..row + 3 * x + 3];
                for c in 0..3 {
                    out[c * plane + y * cw as usize + x] = lut[px[c] as usize][c];
                }
            }
        }
        out
    }
}

/// Decodes an image file's bytes. A JPEG cut short is an error, as in PIL: the `image` crate
/// would otherwise fill the missing part with grey.
pub fn decode(bytes: &[u8]) -> Result<image::DynamicImage> {
    if bytes.starts_with(&[0xFF, 0xD8]) && !jpeg_is_complete(bytes) {
        bail!("JPEG data ends before its end-of-image marker (truncated file)");
    }
    Ok(image::load_from_memory(bytes)?)
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

/// transformers' `get_resize_output_image_size(default_to_square=False)`: the short side
/// becomes `target`, the long side is scaled and truncated toward zero.
pub fn shortest_edge_size(w: u32, h: u32, target: u32) -> (u32, u32) {
    if w <= h {
        (target, (target as u64 * h as u64 / w as u64) as u32)
    } else {
        ((target as u64 * w as u64 / h as u64) as u32, target)
    }
}

fn resize_bicubic(rgb: Vec<u8>, w: u32, h: u32, nw: u32, nh: u32) -> Result<Vec<u8>> {
    if (w, h) == (nw, nh) {
        return Ok(rgb);
    }
    let src = fr::images::Image::from_vec_u8(w, h, rgb, fr::PixelType::U8x3)?;
    let mut dst = fr::images::Image::new(nw, nh, fr::PixelType::U8x3);
    let opts =
        fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom));
    fr::Resizer::new().resize(&src, &mut dst, &opts)?;
    Ok(dst.into_vec())
}
