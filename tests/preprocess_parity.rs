//! Preprocessing against transformers' `CLIPImageProcessorPil` (the PIL path, `use_fast=False`)
//! on `PIL.Image.open(f)`: every photo of ../shared/data/im2gps3k-sample plus generated files of
//! each format and colour mode (scripts/preprocess_reference.py; the YCCK JPEG, which Pillow
//! cannot write, is written here with libjpeg-turbo).
//!
//! Decoding and resizing are Pillow's own algorithms, so the uint8 resized crop must be equal
//! (compared as the processor's output with rescale and normalisation off), and the normalised
//! pixels equal to float32 rounding.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use streetclip::data::PreprocessConfig;
use tch::Tensor;

struct Reference {
    files: Vec<PathBuf>,
    pixel_values: Tensor,
    levels: Tensor,
    dir: tempfile::TempDir,
}

fn reference(config: &serde_json::Value, images: &[PathBuf]) -> Reference {
    let dir = tmpdir();
    let config_path = dir.path().join("input_config.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let mut args = vec![
        root()
            .join("scripts/preprocess_reference.py")
            .into_os_string(),
        dir.path().into(),
        config_path.into(),
    ];
    args.extend(images.iter().map(|p| p.clone().into_os_string()));
    run_python(&args);
    let files =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("files.json")).unwrap())
            .unwrap();
    let mut tensors: std::collections::HashMap<_, _> =
        streetclip::formats::tensor_io::read(&dir.path().join("reference.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    Reference {
        files,
        pixel_values: tensors.remove("pixel_values").unwrap(),
        levels: tensors.remove("levels").unwrap(),
        dir,
    }
}

/// A YCCK JPEG (Adobe transform 2) from a photo, through libjpeg-turbo's compressor.
fn write_ycck(photo: &Path, out: &Path) {
    use turbojpeg_sys as tj;
    let rgb = streetclip::data::decode::decode(&std::fs::read(photo).unwrap()).unwrap();
    let (w, h) = rgb.dimensions();
    // Adobe (inverted) CMYK, as Photoshop stores it: the stored value is 255 - ink.
    let cmyk: Vec<u8> = rgb
        .pixels()
        .flat_map(|p| {
            let k = 255 - p.0.iter().max().copied().unwrap();
            [
                p[0].saturating_add(k),
                p[1].saturating_add(k),
                p[2].saturating_add(k),
                255 - k,
            ]
        })
        .collect();
    unsafe {
        let handle = tj::tj3Init(tj::TJINIT_TJINIT_COMPRESS as i32);
        assert_eq!(
            tj::tj3Set(handle, tj::TJPARAM_TJPARAM_QUALITY as i32, 90),
            0
        );
        assert_eq!(
            tj::tj3Set(
                handle,
                tj::TJPARAM_TJPARAM_SUBSAMP as i32,
                tj::TJSAMP_TJSAMP_420
            ),
            0
        );
        assert_eq!(
            tj::tj3Set(
                handle,
                tj::TJPARAM_TJPARAM_COLORSPACE as i32,
                tj::TJCS_TJCS_YCCK as i32
            ),
            0
        );
        let (mut buf, mut size) = (std::ptr::null_mut(), 0);
        let rc = tj::tj3Compress8(
            handle,
            cmyk.as_ptr(),
            w as i32,
            0,
            h as i32,
            tj::TJPF_TJPF_CMYK,
            &mut buf,
            &mut size,
        );
        assert_eq!(rc, 0);
        std::fs::write(out, std::slice::from_raw_parts(buf, size as usize)).unwrap();
        tj::tj3Free(buf as *mut _);
        tj::tj3Destroy(handle);
    }
}

fn check(config: serde_json::Value, photos: Vec<PathBuf>) {
    let extra = tmpdir();
    let ycck = extra.path().join("ycck.jpg");
    write_ycck(&photos[0], &ycck);
    let mut images = photos;
    images.push(ycck);
    let r = reference(&config, &images);
    let cfg = PreprocessConfig::from_dir(r.dir.path(), 0).unwrap();
    let raw = PreprocessConfig {
        do_rescale: false,
        do_normalize: false,
        ..cfg.clone()
    };
    let (h, w) = cfg.output_size();
    let shape = [3, h as i64, w as i64];
    let mut worst: f64 = 0.0;
    for (i, f) in r.files.iter().enumerate() {
        let name = f.file_name().unwrap().to_string_lossy();
        let levels = Tensor::from_slice(&raw.load(f).unwrap()).view(shape);
        let expected_levels = r.levels.get(i as i64);
        let differing = levels
            .ne_tensor(&expected_levels)
            .sum(tch::Kind::Int64)
            .int64_value(&[]);
        assert_eq!(
            differing,
            0,
            "{name}: {differing} resized-crop values differ from PIL's (max {})",
            max_diff(&levels, &expected_levels)
        );
        let ours = Tensor::from_slice(&cfg.load(f).unwrap()).view(shape);
        let d = max_diff(&ours, &r.pixel_values.get(i as i64));
        assert!(d <= 1e-6, "{name}: normalised pixels differ by {d:e}");
        worst = worst.max(d);
    }
    eprintln!(
        "{} images: resized crops identical, normalised max |diff| {worst:e}",
        r.files.len()
    );
}

fn clip_config(size: u32) -> serde_json::Value {
    serde_json::to_value(PreprocessConfig::for_size(size)).unwrap()
}

#[test]
fn clip_336_equals_pil_on_every_sample_photo_and_every_format() {
    check(clip_config(336), im2gps3k_images(usize::MAX));
}

#[test]
fn clip_224_equals_pil() {
    check(clip_config(224), im2gps3k_images(40));
}

#[test]
fn other_processor_settings_equal_pil() {
    // A non-square crop, other statistics and rescale factor; then an exact resize
    // with a crop larger than the image (transformers pads with zeros).
    let mut config = clip_config(256);
    config["crop_size"] = serde_json::json!({"height": 200, "width": 240});
    config["image_mean"] = serde_json::json!([0.5, 0.5, 0.5]);
    config["image_std"] = serde_json::json!([0.25, 0.3, 0.2]);
    config["rescale_factor"] = serde_json::json!(0.0039);
    check(config, im2gps3k_images(8));
    let mut exact = clip_config(224);
    exact["size"] = serde_json::json!({"height": 180, "width": 200});
    check(exact, im2gps3k_images(8));
}

#[test]
fn sixteen_bit_greyscale_keeps_its_high_byte() {
    // PIL clips I;16 to white on RGB conversion; streetclip keeps the high byte (docs/models.md, "Preprocessing").
    let img = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(4, 3, |x, y| {
        image::Luma([(x * 4000 + y * 9000) as u16])
    });
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let rgb = streetclip::data::decode::decode(&png).unwrap();
    for (x, y, p) in rgb.enumerate_pixels() {
        let v = ((x * 4000 + y * 9000) >> 8) as u8;
        assert_eq!(p.0, [v; 3]);
    }
}
