"""Interop check: a directory written by streetclip loads in transformers with no missing,
unexpected or mismatched keys, and gives the outputs `streetclip embed` wrote.

Usage: .venv/bin/python scripts/check_hf_interop.py MODEL_DIR EMBED.safetensors [TEXT...]
Exits non-zero with the reason on any difference; prints the max differences otherwise.
"""
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import CLIPModel, CLIPProcessor

model_dir, embed_file, texts = sys.argv[1], sys.argv[2], sys.argv[3:]
with safe_open(f"{model_dir}/model.safetensors", "pt") as f:
    assert f.metadata() == {"format": "pt"}, f"metadata {f.metadata()}"
model, info = CLIPModel.from_pretrained(model_dir, output_loading_info=True)
problems = {k: v for k, v in info.items() if v}
assert not problems, f"loading info: {problems}"
model.eval()
ours = load_file(embed_file)
report = []


def check(name, theirs, tol=1e-4):
    d = (ours[name] - theirs).abs().max().item()
    report.append(f"{name} {d:.2e}")
    assert d <= tol, f"{name}: max abs diff {d} > {tol}"


with torch.no_grad():
    if "pixel_values" in ours:
        check("image_embeds", model.get_image_features(pixel_values=ours["pixel_values"]).pooler_output)
    if texts:
        processor = CLIPProcessor.from_pretrained(model_dir)
        enc = processor(text=texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        assert torch.equal(enc["input_ids"], ours["input_ids"]), "input_ids differ from CLIPProcessor's"
        assert torch.equal(enc["attention_mask"], ours["attention_mask"]), "attention_mask differs from CLIPProcessor's"
        check("text_embeds", model.get_text_features(input_ids=ours["input_ids"], attention_mask=ours["attention_mask"]).pooler_output)
    if "logits_per_image" in ours:
        out = model(input_ids=ours["input_ids"], attention_mask=ours["attention_mask"], pixel_values=ours["pixel_values"])
        check("logits_per_image", out.logits_per_image)
print("interop ok: " + ", ".join(report))
