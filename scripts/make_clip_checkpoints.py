"""Small random CLIP checkpoints in the layouts users download, made with the packages that define
them, for tests/convert.rs:

  openai/state.pt         `clip.model.CLIP` (PyPI `openai-clip`) state dict in float16, as OpenAI
                          released its weights, `torch.save`
  openai/wrapped.pt       the same as a training checkpoint: {"epoch", "state_dict" with
                          `module.` prefixes (DistributedDataParallel), "optimizer": AdamW's}
  openai/state.safetensors
  openai/jit.pt           a TorchScript archive, traced as OpenAI's `ViT-*.pt` downloads were
  open_clip/              `open_clip.model.CLIP` (PyPI `open-clip-torch`, GELU, 32-wide vision
                          heads) as the hub ships it: open_clip_pytorch_model.bin +
                          open_clip_config.json

`check_clip_packages.py` then compares streetclip's embeddings with these packages' own
`encode_image` / `encode_text`.

Usage: .venv/bin/python scripts/make_clip_checkpoints.py OUT_DIR
"""
import copy
import json
import os
import sys

import torch
from safetensors.torch import save_file

from clip_packages import open_clip, openai_clip, tokenize

out = sys.argv[1]
torch.manual_seed(0)

# OpenAI: `build_model` infers this architecture back from the shapes (heads = width // 64).
model = openai_clip.model.CLIP(
    embed_dim=48, image_resolution=56, vision_layers=2, vision_width=128, vision_patch_size=14,
    context_length=77, vocab_size=49408, transformer_width=128, transformer_heads=2, transformer_layers=2,
).eval()
# OpenAI's weights are float16 values, and `clip.model.build_model` (the package's loader,
# which check_clip_packages.py uses) rounds to float16: make ours float16 values too.
with torch.no_grad():
    for p in model.parameters():
        p.copy_(p.half().float())
state = model.state_dict()
os.makedirs(f"{out}/openai", exist_ok=True)
torch.save({k: v.half() for k, v in state.items()}, f"{out}/openai/state.pt")
save_file({k: v.contiguous() for k, v in state.items()}, f"{out}/openai/state.safetensors")
# A real AdamW state beside the weights (taken on a copy: the step must not move them).
trained = copy.deepcopy(model)
optimizer = torch.optim.AdamW(trained.parameters(), lr=1e-6)
trained(torch.randn(2, 3, 56, 56), torch.randint(0, 49408, (2, 77)))[0].sum().backward()
optimizer.step()
wrapped = {"epoch": 3, "name": "tiny", "state_dict": {f"module.{k}": v for k, v in state.items()},
           "optimizer": optimizer.state_dict()}
torch.save(wrapped, f"{out}/openai/wrapped.pt")
image = torch.randn(1, 3, 56, 56)
text = tokenize(["a street"])
traced = torch.jit.trace_module(model, {"forward": (image, text), "encode_image": image, "encode_text": text})
traced.save(f"{out}/openai/jit.pt")

# open_clip with settings that cannot be read from shapes: GELU and 32-wide vision heads.
model_cfg = {
    "embed_dim": 40,
    "quick_gelu": False,
    "vision_cfg": {"image_size": 56, "layers": 2, "width": 128, "head_width": 32, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
}
model = open_clip.model.CLIP(**model_cfg).eval()
os.makedirs(f"{out}/open_clip", exist_ok=True)
torch.save(model.state_dict(), f"{out}/open_clip/open_clip_pytorch_model.bin")
with open(f"{out}/open_clip/open_clip_config.json", "w") as f:
    json.dump({"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}, f, indent=2)
print("ok")
