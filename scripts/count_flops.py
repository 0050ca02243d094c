"""Forward FLOPs of transformers' CLIPModel per sample, counted by PyTorch's FlopCounterMode on
the meta device (nothing is computed): `get_image_features` of one image and
`get_text_features` of one text padded to the context length (or of TEXT_POSITIONS), eager attention (the counter
does not see the CPU's fused SDPA kernel). The reference for src/model/flops.rs.

Usage: .venv/bin/python scripts/count_flops.py CONFIG_JSON [TEXT_POSITIONS]
Prints {"image": FLOPS, "text": FLOPS}.
"""
import json
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPConfig, CLIPModel

with open(sys.argv[1]) as f:
    config = CLIPConfig(**json.load(f))
with torch.device("meta"):
    model = CLIPModel(config).eval()
model.set_attn_implementation("eager")
v, t = config.vision_config, config.text_config
positions = int(sys.argv[2]) if len(sys.argv) > 2 else t.max_position_embeddings


def count(run):
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


image = count(lambda: model.get_image_features(pixel_values=torch.zeros(1, v.num_channels, v.image_size, v.image_size, device="meta")))
text = count(lambda: model.get_text_features(input_ids=torch.zeros(1, positions, dtype=torch.long, device="meta")))
print(json.dumps({"image": image, "text": text}))
