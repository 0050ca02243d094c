"""Reference preprocessing: transformers' CLIPImageProcessor (PIL backend) on real photographs,
plus mode variants of the first photo (grayscale, palette, RGBA, CMYK, a small upscaled one),
for the Rust preprocessing parity test.

Usage: .venv/bin/python scripts/preprocess_reference.py OUT_DIR SIZE IMAGE...
Writes OUT_DIR/<variants>, OUT_DIR/reference.safetensors (`pixel_values`, N x 3 x SIZE x SIZE)
and OUT_DIR/files.json (the N image paths, in order).
"""
import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

out_dir, size, images = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
os.makedirs(out_dir, exist_ok=True)
first = Image.open(images[0])
variants = {
    "gray.jpg": first.convert("L"),
    "palette.png": first.convert("P", palette=Image.Palette.ADAPTIVE, colors=64),
    "rgba.png": first.convert("RGBA"),
    "cmyk.jpg": first.convert("CMYK"),
    "small.png": first.convert("RGB").resize((200, 150)),
}
files = list(images)
for name, im in variants.items():
    path = os.path.join(out_dir, name)
    im.save(path)
    files.append(path)

processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
pixels = [processor(images=Image.open(f), return_tensors="np")["pixel_values"][0] for f in files]
save_file({"pixel_values": torch.from_numpy(np.stack(pixels)).contiguous()}, os.path.join(out_dir, "reference.safetensors"))
with open(os.path.join(out_dir, "files.json"), "w") as f:
    json.dump(files, f)
