#!/usr/bin/env bash
# Installs libtorch (the PyPI torch wheel tch expects) and the Python packages the parity and
# interop scripts need into the git-ignored project-local environment `.venv/`.
# Idempotent: a stamp file records what was installed; a second run returns at once.
#
# TORCH_INDEX_URL picks another build of the same torch version, e.g. for a GPU whose driver is
# older than CUDA 13 needs (the default wheel is +cu130, driver >= 580):
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 make setup
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu make setup    # CPU only, much smaller
# Switching builds afterwards: rm -rf .venv target, then make setup again.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
REQ=scripts/requirements.txt
STAMP="$VENV/.streetclip-setup"
TORCH_INDEX="${TORCH_INDEX_URL:-}"
want="$( (cat "$REQ"; echo "torch index: $TORCH_INDEX") | sha256sum | cut -d' ' -f1)"

# Debian packages the build needs: Gloo's headers for the c10d shim (csrc/dist.cpp; the library
# itself is inside libtorch), and cmake + nasm, with which turbojpeg-sys builds libjpeg-turbo 3.1
# (the JPEG decoder Pillow's wheels use) from the crate's bundled source.
missing=()
[[ -f /usr/include/gloo/algorithm.h ]] || missing+=(libgloo-dev)
# The browser `tests/serve.rs` opens the map page in (headless).
command -v chromium >/dev/null || missing+=(chromium)
command -v cmake >/dev/null || missing+=(cmake)
command -v nasm >/dev/null || missing+=(nasm)
if (( ${#missing[@]} )); then
    echo "setup: installing Debian's ${missing[*]}"
    SUDO=""; [[ "$(id -u)" != 0 ]] && SUDO="sudo"
    $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null; } \
        || { echo "setup: cannot install ${missing[*]}; install them with your package manager (Debian/Ubuntu: apt-get install ${missing[*]})" >&2; exit 1; }
fi

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -e "$VENV/libtorch/lib" ]]; then
    exit 0
fi

PY="${PYTHON:-python3}"
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "setup: creating $VENV with $($PY --version)"
    "$PY" -m venv "$VENV"
fi
if [[ -n "$TORCH_INDEX" ]]; then
    # The same version from the other index; `-r` below then finds torch already satisfied
    # (`==2.13.0` matches a `2.13.0+cu128` local version).
    echo "setup: installing $(grep '^torch==' "$REQ") from $TORCH_INDEX"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --index-url "$TORCH_INDEX" "$(grep '^torch==' "$REQ")"
fi
echo "setup: installing $(grep -cv '^#' "$REQ") packages from $REQ into $VENV (torch is large: a minute or two)"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQ"
# open_clip ships the CLIP BPE vocabulary we derive tokenizer.json from; it and OpenAI's `clip`
# make the checkpoints tests/convert_openai.rs converts. Without their dependencies: torchvision
# would switch transformers' default image processor away from PIL, and timm is not needed
# (scripts/clip_packages.py imports their model code alone).
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps "open-clip-torch==3.3.0" "openai-clip==1.0.1"
# A stable path to libtorch inside the wheel, for .cargo/config.toml's LIBTORCH.
ln -sfn "$("$VENV/bin/python" -c 'import torch, os; print(os.path.relpath(os.path.dirname(torch.__file__), "'"$VENV"'"))')" "$VENV/libtorch"
echo "$want" > "$STAMP"
echo "setup: done ($VENV)"
