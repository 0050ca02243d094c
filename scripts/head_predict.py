"""What a `streetclip finetune` export's classifier predicts, computed with transformers exactly as
its head.json documents it (logits = head.weight @ L2-normalised image_embeds + head.bias, then a
softmax), for tests/finetune.rs to compare with `streetclip predict --json`.

Usage: .venv/bin/python scripts/head_predict.py EXPORT_DIR IMAGE...
Prints one JSON list of {image, probabilities: {class: p}}.
"""
import json
import os
import sys

import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPModel, CLIPProcessor

export, images = sys.argv[1], sys.argv[2:]
model = CLIPModel.from_pretrained(export).eval()
processor = CLIPProcessor.from_pretrained(export)
assert processor.image_processor.backend == "pil", processor.image_processor.backend
head = load_file(os.path.join(export, "head.safetensors"))
weight, bias = head["classifier_head.weight"].float(), head["classifier_head.bias"].float()
with open(os.path.join(export, "head.json")) as f:
    classes = json.load(f)["classes"]

results = []
with torch.no_grad():
    for path in images:
        pixels = processor(images=Image.open(path), return_tensors="pt")["pixel_values"]
        embeds = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        embeds = embeds / embeds.norm(dim=-1, keepdim=True)
        probs = (embeds @ weight.T + bias).softmax(dim=-1)[0]
        results.append({"image": path, "probabilities": dict(zip(classes, probs.tolist()))})
print(json.dumps(results))
