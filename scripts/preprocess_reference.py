"""Reference preprocessing for tests/preprocess_parity.rs: transformers' CLIPImageProcessorPil
(`use_fast=False`, the path OpenAI CLIP and StreetCLIP were trained with) on `PIL.Image.open(f)`.

Usage: .venv/bin/python scripts/preprocess_reference.py OUT_DIR CONFIG_JSON IMAGE...

Besides the given images, writes generated variants of the first one covering the formats and
colour modes users have: baseline/progressive JPEG with 4:4:4, 4:2:2 and 4:2:0 chroma, greyscale
and CMYK JPEG, greyscale/RGB/RGBA/LA/palette PNG (palette with and without tRNS alpha, RGB with
a tRNS colour), lossy/lossless WebP with and without alpha, and small, extreme-aspect and tall downscaled images.
CONFIG_JSON is a preprocessor_config.json; it is copied to OUT_DIR so that both sides read it.

Writes OUT_DIR/reference.safetensors with `pixel_values` (normalised, N x 3 x H x W) and
`levels` (the same with do_rescale and do_normalize off: the uint8 resized crop as float32), and
OUT_DIR/files.json (the N image paths, in order).
"""
import json
import os
import shutil
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

out_dir, config_path, images = sys.argv[1], sys.argv[2], sys.argv[3:]
os.makedirs(out_dir, exist_ok=True)
shutil.copy(config_path, os.path.join(out_dir, "preprocessor_config.json"))
with open(config_path) as f:
    config = json.load(f)


def variants(photo):
    rgb = photo.convert("RGB")
    w, h = rgb.size
    alpha = Image.linear_gradient("L").resize(rgb.size)  # every alpha level, 0 and 255 included
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    yield "q90-444.jpg", rgb, dict(quality=90, subsampling=0)
    yield "q75-422.jpg", rgb, dict(quality=75, subsampling=1)
    yield "q85-420-progressive.jpg", rgb, dict(quality=85, subsampling=2, progressive=True)
    yield "q95-444-progressive.jpg", rgb, dict(quality=95, subsampling=0, progressive=True)
    yield "gray.jpg", rgb.convert("L"), {}
    yield "cmyk.jpg", rgb.convert("CMYK"), dict(quality=90)
    yield "rgb.png", rgb, {}
    yield "gray.png", rgb.convert("L"), {}
    yield "rgba.png", rgba, {}
    yield "la.png", rgba.convert("LA"), {}
    yield "palette.png", palette, {}
    trns = bytes(range(0, 256, 4))  # 64 palette entries, each with its own alpha
    yield "palette-alpha.png", palette, dict(transparency=trns)
    posterised = rgb.quantize(8).convert("RGB")
    yield "rgb-trns.png", posterised, dict(transparency=posterised.getpixel((0, 0)))
    yield "lossy.webp", rgb, dict(quality=80)
    yield "lossy-alpha.webp", rgba, dict(quality=80)
    yield "lossless.webp", rgba, dict(lossless=True)
    yield "small.png", rgb.resize((200, 150)), {}
    yield "tiny.jpg", rgb.resize((9, 7)), dict(quality=90)
    yield "wide.jpg", rgb.resize((w, max(2, h // 20))), dict(quality=90)
    yield "tall.png", rgb.resize((max(2, w // 25), h)), {}
    # Taller than twice its width and downscaled: Pillow 13 resizes it vertically first.
    yield "tall-large.png", rgb.resize((400, 1000)), {}


files = list(images)
for name, im, options in variants(Image.open(images[0])):
    path = os.path.join(out_dir, name)
    im.save(path, **options)
    files.append(path)

kwargs = {k: v for k, v in config.items() if k not in ("image_processor_type", "processor_class", "feature_extractor_type")}
normalised = CLIPImageProcessorPil(**kwargs)
levels = CLIPImageProcessorPil(**{**kwargs, "do_rescale": False, "do_normalize": False})


def run(processor):
    return torch.from_numpy(np.stack([processor(images=Image.open(f), return_tensors="np")["pixel_values"][0] for f in files]))


save_file(
    {"pixel_values": run(normalised).contiguous(), "levels": run(levels).float().contiguous()},
    os.path.join(out_dir, "reference.safetensors"),
)
with open(os.path.join(out_dir, "files.json"), "w") as f:
    json.dump(files, f)
