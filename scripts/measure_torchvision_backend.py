"""How far transformers' torchvision backend (the default of `CLIPProcessor.from_pretrained` in
transformers 5 when torchvision is installed) is from the PIL path that OpenAI CLIP,
StreetCLIP and streetclip use. A measurement for the README, not a test: torchvision is not part
of the project's environment (install the wheel matching torch, e.g. into a --target folder, and
put it on PYTHONPATH).

Usage: PYTHONPATH=DIR .venv/bin/python scripts/measure_torchvision_backend.py MODEL_DIR LABELS IMAGE...
Prints pixel differences in 8-bit levels and zero-shot probability differences.
"""
import sys

import numpy as np
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

model_dir, labels, images = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]
model = CLIPModel.from_pretrained(model_dir).eval()
default = CLIPProcessor.from_pretrained(model_dir)
pil = CLIPProcessor.from_pretrained(model_dir, backend="pil")
assert default.image_processor.backend == "torchvision", default.image_processor.backend
assert pil.image_processor.backend == "pil", pil.image_processor.backend
std = torch.tensor(pil.image_processor.image_std).view(3, 1, 1)

level_max, level_means, prob_diffs = 0.0, [], []
with torch.no_grad():
    for path in images:
        a = pil(text=labels, images=Image.open(path), return_tensors="pt", padding=True)
        b = default(text=labels, images=Image.open(path), return_tensors="pt", padding=True)
        levels = ((a["pixel_values"][0] - b["pixel_values"][0]).abs() * std * 255)
        level_max = max(level_max, levels.max().item())
        level_means.append(levels.mean().item())
        pa = model(**a).logits_per_image.softmax(dim=1)
        pb = model(**b).logits_per_image.softmax(dim=1)
        prob_diffs.append((pa - pb).abs().max().item())
print(f"{len(images)} images: pixels differ by up to {level_max:.1f} levels, "
      f"mean {np.mean(level_means):.3f} levels (per-image means {min(level_means):.3f}-{max(level_means):.3f}); "
      f"probabilities differ by up to {max(prob_diffs):.2e} (median {np.median(prob_diffs):.2e})")
