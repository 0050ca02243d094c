"""The reference of tests/train_parity.rs's parameter-group test.

  python param_groups_reference.py MODEL_DIR GRADS GROUPS STEPS OUT

transformers' CLIPModel.from_pretrained(MODEL_DIR) updated STEPS times by torch.optim.AdamW over
param groups built here from GROUPS (JSON: lr, betas, eps, weight_decay, layer_decay, groups
[{params, lr_scale, weight_decay}]), as BEiT builds layer-decay groups, a group with lr_scale 0
frozen (requires_grad False, left out of the optimizer). Step t's gradients are GRADS'
`grad{t}.NAME` (streetclip's, so only the optimizers are compared). Writes every weight after
the last step to OUT.
"""
import fnmatch
import json
import re
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPModel


def names(pattern, name):
    towers = {
        "vision": name.startswith("vision_model."),
        "text": name.startswith("text_model."),
        "projections": name.startswith(("visual_projection.", "text_projection.")),
        "logit_scale": name == "logit_scale",
    }
    if pattern in towers:
        return towers[pattern]
    return fnmatch.fnmatchcase(name, pattern)


def never_decayed(name):
    return (
        name.endswith(".bias")
        or "layer_norm" in name
        or "layernorm" in name
        or "pre_layrnorm" in name
        or name.endswith("class_embedding")
        or "position_embedding" in name
        or name == "logit_scale"
    )


def layer_scale(name, model, decay):
    """BEiT's get_layer_id_for_vit per tower: embeddings 0, block i -> i + 1, the rest depth + 1;
    the scale is decay ** (depth + 1 - layer id)."""
    if decay is None:
        return 1.0
    depths = {
        "vision_model": model.config.vision_config.num_hidden_layers,
        "text_model": model.config.text_config.num_hidden_layers,
    }
    tower = name.split(".")[0]
    if tower not in depths:
        return 1.0
    depth = depths[tower]
    block = re.match(r"[a-z_]+\.encoder\.layers\.(\d+)\.", name)
    if block:
        layer = int(block.group(1)) + 1
    elif ".embeddings." in name or ".pre_layrnorm." in name:
        layer = 0
    else:
        layer = depth + 1
    return decay ** (depth + 1 - layer)


def main(model_dir, grads_path, groups_json, steps, out):
    spec = json.loads(groups_json)
    model = CLIPModel.from_pretrained(model_dir)
    grads = load_file(grads_path)
    groups = {}
    for name, param in model.named_parameters():
        group = next((g for g in spec["groups"] if any(names(p, name) for p in g["params"])), None)
        scale = (group["lr_scale"] if group else 1.0) * layer_scale(name, model, spec["layer_decay"])
        if scale == 0:
            param.requires_grad_(False)
            continue
        wd = group.get("weight_decay") if group else None
        wd = 0.0 if never_decayed(name) else (spec["weight_decay"] if wd is None else wd)
        groups.setdefault((spec["lr"] * scale, wd), []).append(param)
    opt = torch.optim.AdamW(
        [{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()],
        lr=spec["lr"],
        betas=tuple(spec["betas"]),
        eps=spec["eps"],
    )
    for t in range(int(steps)):
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.grad = grads[f"grad{t}.{name}"]
        opt.step()
        opt.zero_grad(set_to_none=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
