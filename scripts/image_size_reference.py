"""The references of tests/image_size.rs.

  resize IN OUT GRID   open_clip's `resize_pos_embed` of IN's `pos` [1 + g*g, d] to a GRID x GRID
                       patch grid (its defaults: bicubic, antialias, class token kept) -> OUT `pos`
  load DIR PIXELS OUT  transformers' CLIPModel.from_pretrained(DIR) with its loading report and
                       every warning it logs, and get_image_features of PIXELS' `pixel_values`
                       -> OUT `image_embeds`; prints {"missing", "unexpected", "mismatched",
                       "warnings"} as JSON
"""
import json
import logging
import sys
import types

from safetensors.torch import load_file, save_file


def resize(src, dst, grid):
    from clip_packages import open_clip

    state = {"visual.positional_embedding": load_file(src)["pos"]}
    model = types.SimpleNamespace(visual=types.SimpleNamespace(grid_size=(grid, grid)))
    open_clip.model.resize_pos_embed(state, model)
    save_file({"pos": state["visual.positional_embedding"].contiguous()}, dst)


def load(directory, pixels, dst):
    import torch
    from transformers import CLIPModel
    from transformers.utils import logging as hf_logging

    warnings = []

    class Keep(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                warnings.append(record.getMessage())

    hf_logging.get_logger().addHandler(Keep())
    model, info = CLIPModel.from_pretrained(directory, output_loading_info=True)
    with torch.no_grad():
        out = model.get_image_features(pixel_values=load_file(pixels)["pixel_values"])
    embeds = getattr(out, "pooler_output", out)
    save_file({"image_embeds": embeds.contiguous()}, dst)
    keys = ("missing_keys", "unexpected_keys", "mismatched_keys")
    report = {k.split("_")[0]: [str(x) for x in info.get(k, [])] for k in keys}
    print(json.dumps({**report, "warnings": warnings}))


if __name__ == "__main__":
    what, *args = sys.argv[1:]
    if what == "resize":
        resize(args[0], args[1], int(args[2]))
    else:
        load(*args)
