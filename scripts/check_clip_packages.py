"""Parity of converted checkpoints with the packages that made them (tests/convert.rs).

For each case: the source checkpoint loaded by its own package (OpenAI's `clip.model.build_model`,
`torch.jit.load` for a TorchScript archive, `open_clip.model.CLIP` with its
open_clip_config.json) embeds the pixels and texts `streetclip embed` embedded, with its own
`encode_image` / `encode_text` and its own tokenizer; the normalised features must equal
streetclip's to 1e-5. The converted directory must load in transformers (`CLIPModel` and
`CLIPProcessor.from_pretrained`) with no missing, unexpected or mismatched keys and no warning,
and give the same features too.

Usage: .venv/bin/python scripts/check_clip_packages.py CASES.json
  CASES.json: {"texts": [...], "cases": [{"kind": "openai" | "jit" | "open_clip",
               "source": PATH, "converted": DIR, "embed": EMBED.safetensors}, ...]}
"""
import json
import logging
import os
import sys
import warnings

import torch
from safetensors.torch import load_file
from transformers import CLIPModel, CLIPProcessor
from transformers.utils import logging as hf_logging

from clip_packages import open_clip, openai_clip, tokenize

TOL = 1e-5


class Logged(logging.Handler):
    """transformers' warnings (it logs most of them rather than warning)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())


logged = Logged()
hf_logging.set_verbosity_warning()
hf_logging.get_logger().addHandler(logged)


def unwrap(state):
    state = state.get("state_dict", state)
    return {k.removeprefix("module."): v for k, v in state.items()}


def package_model(kind, source):
    if kind == "jit":
        return torch.jit.load(source, map_location="cpu").eval()
    if kind == "openai":
        if source.endswith(".safetensors"):
            state = load_file(source)
        else:
            state = unwrap(torch.load(source, map_location="cpu", weights_only=True))
        # build_model casts to fp16 for GPUs; OpenAI's clip.load calls .float() on CPU too.
        return openai_clip.model.build_model(state).float().eval()
    if kind == "open_clip":
        with open(os.path.join(source, "open_clip_config.json")) as f:
            model = open_clip.model.CLIP(**json.load(f)["model_cfg"])
        state = torch.load(os.path.join(source, "open_clip_pytorch_model.bin"), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        return model.eval()
    sys.exit(f"unknown kind {kind}")


def normalised(x):
    return x / x.norm(dim=-1, keepdim=True)


def compare(what, ours, theirs):
    d = (normalised(ours) - normalised(theirs)).abs().max().item()
    assert d <= TOL, f"{what}: max |diff| of normalised features {d:.3e} > {TOL}"
    return d


with open(sys.argv[1]) as f:
    spec = json.load(f)
texts = spec["texts"]
report = []
for case in spec["cases"]:
    ours = load_file(case["embed"])
    tokens = tokenize(texts)
    for row, (theirs, mine) in enumerate(zip(tokens, ours["input_ids"])):
        n = int((theirs != 0).sum())  # sot + text + eot; the packages pad with 0
        assert torch.equal(theirs[:n], mine[:n]), f"{case['kind']}: tokens of {texts[row]!r} differ"
    model = package_model(case["kind"], case["source"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hf, info = CLIPModel.from_pretrained(case["converted"], output_loading_info=True)
        CLIPProcessor.from_pretrained(case["converted"])
    problems = {k: v for k, v in info.items() if v}
    assert not problems, f"{case['converted']}: transformers loading info {problems}"
    said = [str(w.message) for w in caught] + logged.records
    assert not said, f"{case['converted']}: transformers warned: {said}"
    with torch.no_grad():
        image = model.encode_image(ours["pixel_values"])
        text = model.encode_text(tokens)
        hf_image = hf.get_image_features(pixel_values=ours["pixel_values"]).pooler_output
        hf_text = hf.get_text_features(input_ids=ours["input_ids"], attention_mask=ours["attention_mask"]).pooler_output
    diffs = [
        compare(f"{case['source']} image", ours["image_embeds"], image),
        compare(f"{case['source']} text", ours["text_embeds"], text),
        compare(f"{case['converted']} transformers image", hf_image, image),
        compare(f"{case['converted']} transformers text", hf_text, text),
    ]
    report.append(f"{case['kind']} {os.path.basename(case['source'])}: {max(diffs):.1e}")
print("packages ok: " + ", ".join(report))
