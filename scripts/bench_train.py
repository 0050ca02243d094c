"""Python reference for benches/train_throughput.rs: transformers' CLIPModel(return_loss=True)
and torch.optim.AdamW, per-micro-batch gradient accumulation (as the HF Trainer does), the same
model config, micro-batch, accumulation steps, thread count and number of steps, on the CPU.

Usage: .venv/bin/python scripts/bench_train.py CONFIG_JSON MICRO ACCUM STEPS THREADS
Prints `samples_per_s <float>` and `peak_rss_mb <float>`.
"""
import json
import resource
import sys
import time

import torch
from transformers import CLIPConfig, CLIPModel

cfg_path, micro, accum, steps, threads = sys.argv[1], *map(int, sys.argv[2:6])
torch.set_num_threads(threads)
torch.manual_seed(0)
model = CLIPModel(CLIPConfig(**json.load(open(cfg_path)))).train()
size = model.config.vision_config.image_size
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1)
pixels = torch.randn(accum, micro, 3, size, size)
ids = torch.randint(1, 49000, (accum, micro, 77))
ids[:, :, 20] = 49407
mask = torch.ones(accum, micro, 77, dtype=torch.long)


def step():
    opt.zero_grad()
    for k in range(accum):
        out = model(input_ids=ids[k], attention_mask=mask[k], pixel_values=pixels[k], return_loss=True)
        (out.loss / accum).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


step()  # warm-up
start = time.perf_counter()
for _ in range(steps):
    step()
print(f"samples_per_s {steps * accum * micro / (time.perf_counter() - start):.2f}")
print(f"peak_rss_mb {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}")
