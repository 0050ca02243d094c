"""Convert a Hugging Face CLIP directory's `pytorch_model.bin` (a torch pickle, which streetclip
cannot read) into `model.safetensors` beside it.

Usage: .venv/bin/python scripts/convert_bin_to_safetensors.py MODEL_DIR
"""
import os
import sys

import torch
from safetensors.torch import save_file

model_dir = sys.argv[1]
state = torch.load(os.path.join(model_dir, "pytorch_model.bin"), map_location="cpu", weights_only=True)
state = {k: v.contiguous() for k, v in state.items() if not k.endswith("position_ids")}
save_file(state, os.path.join(model_dir, "model.safetensors"), metadata={"format": "pt"})
print(f"wrote {os.path.join(model_dir, 'model.safetensors')} ({len(state)} tensors)")
