"""Pickled checkpoints for tests/convert.rs, from a fixture model directory: the same weights as
older transformers versions wrote them (`torch.save` of the state dict as `pytorch_model.bin`,
and sharded with `pytorch_model.bin.index.json`; transformers 5 writes only safetensors), and a
torch.save file whose pickle calls os.system (which streetclip must refuse, not run).

Usage: .venv/bin/python scripts/make_pickles.py FIXTURE_DIR OUT_DIR MARKER_FILE
"""
import json
import os
import sys

import torch
from transformers import CLIPModel

fixture, out, marker = sys.argv[1:4]
model = CLIPModel.from_pretrained(fixture)
state = model.state_dict()
single, sharded = os.path.join(out, "bin"), os.path.join(out, "sharded")
for d in (single, sharded):
    model.config.save_pretrained(d)
torch.save(state, os.path.join(single, "pytorch_model.bin"))
names = list(state)
shards = [names[i : i + 40] for i in range(0, len(names), 40)]
weight_map = {}
for i, shard in enumerate(shards):
    file = f"pytorch_model-{i + 1:05d}-of-{len(shards):05d}.bin"
    torch.save({k: state[k] for k in shard}, os.path.join(sharded, file))
    weight_map.update({k: file for k in shard})
total = sum(t.numel() * t.element_size() for t in state.values())
with open(os.path.join(sharded, "pytorch_model.bin.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


class Payload:
    """Unpickling this runs `touch MARKER` in Python's pickle."""

    def __reduce__(self):
        return (os.system, (f"touch {marker}",))


torch.save({"weight": torch.zeros(2), "payload": Payload()}, os.path.join(out, "hostile.bin"))
print("ok")
