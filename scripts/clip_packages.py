"""OpenAI's `clip` (PyPI `openai-clip`) and `open_clip` (PyPI `open-clip-torch`) model code,
imported without torchvision.

Both packages' `__init__` import torchvision for their image transforms, and installing
torchvision would switch transformers' default image processor to its torchvision backend (see
docs/models.md, "Preprocessing"). Their model modules do not need it: they are imported here with
an empty parent package instead of the package's `__init__`, and `torchvision.ops.misc` is given
the one name open_clip's utils import (`FrozenBatchNorm2d`, used only to freeze ResNet towers).
"""
import importlib
import importlib.util
import sys
import types


def _bare_package(name):
    spec = importlib.util.find_spec(name)
    if spec is None:
        sys.exit(f"the Python package `{name}` is missing: run `make setup`")
    package = types.ModuleType(name)
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules[name] = package
    return package


class _NoFrozenBatchNorm:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("FrozenBatchNorm2d needs torchvision (ResNet towers only)")


openai_clip = _bare_package("clip")
importlib.import_module("clip.model")
open_clip = _bare_package("open_clip")
import transformers  # noqa: E402,F401  (open_clip imports it; it must see no torchvision stub)

_stubs = ("torchvision", "torchvision.ops", "torchvision.ops.misc")
for name in _stubs:
    sys.modules[name] = types.ModuleType(name)
sys.modules["torchvision.ops.misc"].FrozenBatchNorm2d = _NoFrozenBatchNorm
try:
    importlib.import_module("open_clip.model")
    importlib.import_module("open_clip.tokenizer")
finally:
    # transformers asks importlib whether torchvision exists; the stubs must not answer.
    for name in _stubs:
        del sys.modules[name]

# `clip.tokenize` lives in clip/clip.py beside the torchvision transforms; open_clip's
# `tokenize` is the same function over the same BPE (sot + tokens + eot, zero padded to 77).
tokenize = open_clip.tokenizer.tokenize
