"""Python reference for benches/embed_throughput.rs: transformers' CLIPImageProcessor (PIL) and
CLIPModel.get_image_features over the same images, model, batch size and thread count.

Usage: .venv/bin/python scripts/bench_embed.py MODEL_DIR BATCH THREADS IMAGE...
Prints one line: `images_per_s <float>`.
"""
import sys
import time

import torch
from PIL import Image
from transformers import CLIPModel
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

model_dir, batch, threads, images = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
torch.set_num_threads(threads)
model = CLIPModel.from_pretrained(model_dir).eval()
processor = CLIPImageProcessorPil.from_pretrained(model_dir)


def run(paths):
    with torch.inference_mode():
        for i in range(0, len(paths), batch):
            chunk = [Image.open(p) for p in paths[i : i + batch]]
            pixels = processor(images=chunk, return_tensors="pt")["pixel_values"]
            model.get_image_features(pixel_values=pixels)


run(images[:batch])  # warm-up
start = time.perf_counter()
run(images)
print(f"images_per_s {len(images) / (time.perf_counter() - start):.2f}")
