"""Python reference for benches/loader_throughput.rs: open + CLIPImageProcessor (PIL backend)
on the same images, with the same number of threads (PIL releases the GIL while decoding and
resizing), as a DataLoader worker would do per sample.

Usage: .venv/bin/python scripts/bench_loader.py SIZE THREADS IMAGE...
Prints one line: `images_per_s <float>`.
"""
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

size, threads, images = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def one(path):
    with Image.open(path) as im:
        return processor(images=im, return_tensors="np")["pixel_values"]


with ThreadPoolExecutor(threads) as pool:
    list(pool.map(one, images[:8]))  # warm-up
    start = time.perf_counter()
    list(pool.map(one, images))
    print(f"images_per_s {len(images) / (time.perf_counter() - start):.2f}")
