"""The transformers peer of `streetclip bench train`: transformers' CLIPModel (SDPA attention)
with torch.optim.AdamW(fused=True), bf16 autocast over fp32 master weights, gradient clipping,
per-micro-batch gradient accumulation (as the Hugging Face Trainer does), inputs already on the
device, timed after warm-up steps; eager or under torch.compile. Same synthetic shapes as
streetclip's (random pixels, random tokens with an end-of-text at position 20).

Usage: python3 scripts/bench_train_gpu.py CONFIG_JSON --micro 64 --accum 1 [--steps 10]
       [--warmup 3] [--device cuda] [--precision bf16|fp32] [--compile]
CONFIG_JSON: a Hugging Face CLIPConfig (`streetclip bench train --json` prints its model's as
`model_config`). Prints one JSON object.
"""
import argparse
import contextlib
import json
import time

import torch
from transformers import CLIPConfig, CLIPModel

p = argparse.ArgumentParser()
p.add_argument("config")
p.add_argument("--micro", type=int, required=True)
p.add_argument("--accum", type=int, default=1)
p.add_argument("--steps", type=int, default=10)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--device", default="cuda")
p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
p.add_argument("--compile", action="store_true")
a = p.parse_args()

torch.manual_seed(0)
device = torch.device(a.device)
with open(a.config) as f:
    config = CLIPConfig(**json.load(f))
model = CLIPModel(config).to(device).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-6, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1, fused=True)
v, t = config.vision_config, config.text_config
pixels = torch.randn(a.accum, a.micro, 3, v.image_size, v.image_size, device=device)
ids = torch.randint(1, t.vocab_size - 1, (a.accum, a.micro, t.max_position_embeddings), device=device)
ids[:, :, 20] = t.vocab_size - 1
mask = torch.ones_like(ids)
forward = torch.compile(model) if a.compile else model


def autocast():
    if a.precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def step():
    for k in range(a.accum):
        with autocast():
            out = forward(input_ids=ids[k], attention_mask=mask[k], pixel_values=pixels[k], return_loss=True)
        (out.loss / a.accum).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return out.loss.detach()


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize(device)


for _ in range(a.warmup):
    step()
sync()
if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats(device)
start = time.perf_counter()
for _ in range(a.steps):
    loss = step()
sync()
seconds = time.perf_counter() - start
print(json.dumps({
    "peer": "transformers " + ("torch.compile" if a.compile else "eager"),
    "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    "samples_per_s": a.steps * a.accum * a.micro / seconds,
    "seconds": seconds,
    "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    "final_loss": loss.item(),
    "torch": torch.__version__,
}))
