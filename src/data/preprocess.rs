//! Image preprocessing defined as transformers' `CLIPImageProcessor` (the PIL backend): RGB,
//! resize the shortest edge (bicubic), center crop, rescale, normalize, CHW float32.
//!
//! Decoding ([`super::decode`]) and resizing ([`super::resample`]) are Pillow's, bit for bit,
//! and the crop, rescale and normalisation are transformers' arithmetic, so pixel values equal
//! `CLIPImageProcessorPil` on `PIL.Image.open(f)` to float32 rounding (tests/preprocess_parity.rs).

use super::decode::decode_region;
use super::image_ref::ImageRef;
use super::levels::Levels;
use super::resample::{resize_bicubic, resize_bicubic_part, source_span, Part, Window};
use anyhow::{bail, Context, Result};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `size` in `preprocessor_config.json`: the shortest edge (CLIP's) or an exact size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum ResizeTo {
    ShortestEdge { shortest_edge: u32 },
    Exact { height: u32, width: u32 },
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
    pub size: ResizeTo,
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
            size: ResizeTo::ShortestEdge {
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
            image_std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
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
        let sides = match self.size {
            ResizeTo::ShortestEdge { shortest_edge } => [shortest_edge; 2],
            ResizeTo::Exact { height, width } => [height, width],
        };
        if sides.iter().any(|s| !(1..=MAX_CROP).contains(s)) {
            bail!(
                "size {:?} is outside 1..={MAX_CROP} pixels per side",
                self.size
            );
        }
        if self.do_resize && self.resample != 3 {
            bail!(
                "resample {} (only 3, bicubic, is implemented)",
                self.resample
            );
        }
        // Batches need one size per model: the centre crop gives it.
        if !self.do_center_crop {
            bail!(
                "do_center_crop is false: streetclip batches images and needs the fixed crop size"
            );
        }
        let CropSize { height, width } = self.crop_size;
        if !(1..=MAX_CROP).contains(&height) || !(1..=MAX_CROP).contains(&width) {
            bail!("crop_size {height}x{width} is outside 1..={MAX_CROP} pixels per side");
        }
        if self.do_rescale && !(self.rescale_factor.is_finite() && self.rescale_factor > 0.0) {
            bail!(
                "rescale_factor {} is not a finite number > 0",
                self.rescale_factor
            );
        }
        if self.do_normalize {
            if self.image_mean.iter().any(|m| !m.is_finite()) {
                bail!(
                    "image_mean {:?} holds a value that is not finite",
                    self.image_mean
                );
            }
            if self.image_std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
                bail!(
                    "image_std {:?}: every value must be a finite number > 0 (pixels are divided by it)",
                    self.image_std
                );
            }
        }
        Ok(())
    }

    /// The `[3, H, W]` output size.
    pub fn output_size(&self) -> (u32, u32) {
        (self.crop_size.height, self.crop_size.width)
    }

    /// Reads and preprocesses one image file into CHW float32.
    pub fn load(&self, path: &Path) -> Result<Vec<f32>> {
        self.load_ref(&ImageRef::File(path.to_path_buf()))
    }

    /// Reads and preprocesses one image (a file or a shard member) into CHW float32: the one
    /// route from an image to pixels every command, the loader and validation take
    /// (`apply_bytes`, which decodes a JPEG only about its centre crop).
    pub fn load_ref(&self, image: &ImageRef) -> Result<Vec<f32>> {
        let bytes = image.read()?;
        let mut out = vec![0.0; self.output_len()];
        self.apply_bytes(&bytes, &mut out)
            .with_context(|| format!("cannot decode image {image}"))?;
        Ok(out)
    }

    /// Preprocesses a decoded image into CHW float32: resize the shortest edge, centre crop
    /// (zero-padded where the image is smaller, as transformers pads), rescale, normalise.
    /// Only the pixels the crop keeps are resized, so the cost is bounded by the crop.
    pub fn apply(&self, rgb: &RgbImage) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.output_len()];
        self.apply_into(rgb, &mut out)?;
        Ok(out)
    }

    /// The number of floats one preprocessed image holds (3 × height × width).
    pub fn output_len(&self) -> usize {
        let (h, w) = self.output_size();
        3 * (h * w) as usize
    }

    /// [`apply`](Self::apply) into `out` (`output_len()` floats), e.g. a batch's slot.
    pub fn apply_into(&self, rgb: &RgbImage, out: &mut [f32]) -> Result<()> {
        let (w, h) = rgb.dimensions();
        let whole = Part { x: 0, y: 0, w, h };
        self.apply_part(rgb.as_raw(), &whole, w, h, out)
    }

    /// Decodes and preprocesses an image file's bytes into `out`, decoding a JPEG only about
    /// the part its centre crop reads (the same pixels as decoding it whole).
    pub fn apply_bytes(&self, bytes: &[u8], out: &mut [f32]) -> Result<()> {
        let region = decode_region(bytes, |w, h| {
            let g = self.geometry(w, h)?;
            Ok((
                source_span(w, g.resized.0, g.window.cols.clone()),
                source_span(h, g.resized.1, g.window.rows.clone()),
            ))
        })?;
        let part = Part {
            x: region.x,
            y: region.y,
            w: region.image.width(),
            h: region.image.height(),
        };
        let raw = region.image.as_raw();
        self.apply_part(raw, &part, region.full_w, region.full_h, out)
    }

    /// Resize and crop of a `w x h` image: the resized size, the kept window of the resized
    /// image and where it sits in the output canvas.
    fn geometry(&self, w: u32, h: u32) -> Result<Geometry> {
        let (rw, rh) = if self.do_resize {
            match self.size {
                ResizeTo::ShortestEdge { shortest_edge } => {
                    shortest_edge_size(w, h, shortest_edge)?
                }
                ResizeTo::Exact { height, width } => (width, height),
            }
        } else {
            (w, h)
        };
        let CropSize {
            height: ch,
            width: cw,
        } = self.crop_size;
        // transformers' offsets: floor((resized - crop) / 2), negative when padding.
        let top = (rh as i64 - ch as i64).div_euclid(2);
        let left = (rw as i64 - cw as i64).div_euclid(2);
        let clamp = |v: i64, hi: u32| v.clamp(0, hi as i64) as u32;
        let window = Window {
            rows: clamp(top, rh)..clamp(top + ch as i64, rh),
            cols: clamp(left, rw)..clamp(left + cw as i64, rw),
        };
        // Where the crop is larger than the image, the kept block sits at transformers' padding
        // offset ceil((crop - resized) / 2) inside a zero canvas.
        let pad = |offset: i64| (-offset).max(0) as u32;
        let block = Block {
            w: window.cols.len() as u32,
            h: window.rows.len() as u32,
            top: pad(top),
            left: pad(left),
        };
        Ok(Geometry {
            resized: (rw, rh),
            window,
            block,
        })
    }

    /// The centre crop of a `w x h` image of which `src` holds `part`, into `out`.
    fn apply_part(&self, src: &[u8], part: &Part, w: u32, h: u32, out: &mut [f32]) -> Result<()> {
        let g = self.geometry(w, h)?;
        let (rw, rh) = g.resized;
        let kept = resize_bicubic_part(src, part, w, h, rw, rh, &g.window);
        self.to_chw(&kept, &g.block, out);
        Ok(())
    }

    /// Training augmentation: a random crop of `scale` (fraction of the area, aspect ratio
    /// 3/4..4/3 as torchvision's RandomResizedCrop) resized to the output size.
    pub fn apply_random_crop(
        &self,
        rgb: &RgbImage,
        scale: [f64; 2],
        rng: &mut impl rand::Rng,
        out: &mut [f32],
    ) -> Result<()> {
        use rand::RngExt;
        let (w, h) = rgb.dimensions();
        let area = (w as f64) * (h as f64) * rng.random_range(scale[0]..=scale[1]);
        let ratio = rng
            .random_range((3.0f64 / 4.0).ln()..=(4.0f64 / 3.0).ln())
            .exp();
        let cw = ((area * ratio).sqrt().round() as u32).clamp(1, w);
        let ch = ((area / ratio).sqrt().round() as u32).clamp(1, h);
        let (left, top) = (rng.random_range(0..=w - cw), rng.random_range(0..=h - ch));
        let region = image::imageops::crop_imm(rgb, left, top, cw, ch).to_image();
        let (oh, ow) = self.output_size();
        let resized = resize_bicubic(region.as_raw(), cw, ch, ow, oh, &Window::all(ow, oh));
        let whole = Block {
            w: ow,
            h: oh,
            top: 0,
            left: 0,
        };
        self.to_chw(&resized, &whole, out);
        Ok(())
    }

    /// Mirrors preprocessed CHW pixels left to right.
    pub fn hflip(&self, chw: &mut [f32]) {
        let (_, w) = self.output_size();
        for row in chw.chunks_mut(w as usize) {
            row.reverse();
        }
    }

    /// Rescale and normalize into the CHW canvas `out` (`output_len()` floats), with
    /// transformers' arithmetic: rescale in f64 then cast to f32, normalize in f32. Pixels
    /// outside `block` are padding (value 0 before rescaling, as transformers' zero padding).
    fn to_chw(&self, rgb: &[u8], block: &Block, out: &mut [f32]) {
        let (ch, cw) = self.output_size();
        let levels = Levels::new(|v| self.normalized(v));
        let plane = (ch * cw) as usize;
        assert_eq!(out.len(), 3 * plane, "a preprocessed image's slot");
        if (block.w, block.h) != (cw, ch) {
            // Level 0 is transformers' padding.
            for (c, channel) in out.chunks_exact_mut(plane).enumerate() {
                channel.fill(levels.get(c, 0));
            }
        }
        let (r, rest) = out.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        let (bw, left) = (block.w as usize, block.left as usize);
        if bw == 0 {
            return; // all padding
        }
        let rows = rgb.chunks_exact(bw * 3).take(block.h as usize);
        for (y, src) in rows.enumerate() {
            let at = (block.top as usize + y) * cw as usize + left;
            let span = at..at + bw;
            levels.row(
                src,
                &mut r[span.clone()],
                &mut g[span.clone()],
                &mut b[span],
            );
        }
    }

    /// One 8-bit level after rescaling and normalisation, per channel.
    fn normalized(&self, v: u8) -> [f32; 3] {
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
    }
}

/// How an image becomes the output: resized to `resized` (width, height), the `window` of
/// that kept, placed as `block` in the canvas.
struct Geometry {
    resized: (u32, u32),
    window: Window,
    block: Block,
}

/// Where the kept pixels (`w x h`, packed RGB) sit in the output canvas.
struct Block {
    w: u32,
    h: u32,
    top: u32,
    left: u32,
}

/// Largest crop side accepted from a `preprocessor_config.json` (CLIP models use 224-448).
const MAX_CROP: u32 = 4096;

/// transformers' `get_resize_output_image_size(default_to_square=False)`: the short side
/// becomes `target`, the long side `int(target * long / short)` (integer division gives the
/// same truncation exactly). Sizes PIL cannot represent are refused.
pub fn shortest_edge_size(w: u32, h: u32, target: u32) -> Result<(u32, u32)> {
    let (short, long) = (w.min(h) as u64, w.max(h) as u64);
    let new_long = target as u64 * long / short;
    if new_long > i32::MAX as u64 {
        bail!("an image of {w}x{h} resized to a shortest edge of {target} would be {new_long} pixels long: its aspect ratio is too extreme");
    }
    Ok(if w <= h {
        (target, new_long as u32)
    } else {
        (new_long as u32, target)
    })
}
