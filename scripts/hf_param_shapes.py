"""Prints, as JSON, the parameter names and shapes of transformers' CLIPModel for a config.json
(built on the meta device: no memory, no weights). Used to check streetclip's presets.

Usage: .venv/bin/python scripts/hf_param_shapes.py CONFIG_JSON
"""
import json
import sys

import torch
from transformers import CLIPConfig, CLIPModel

with torch.device("meta"):
    model = CLIPModel(CLIPConfig(**json.load(open(sys.argv[1]))))
print(json.dumps({n: list(p.shape) for n, p in model.named_parameters()}))
